"""`FinetuneArgs`: the knobs of `fg-edge finetune`, kept free of torch so the CLI builds its help instantly
(and the torch-free device install can show `fg-edge --help`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from fg_edge.errors import ConfigError


@dataclass
class FinetuneArgs:
    lr: float = field(default=5e-5, metadata={"help": "Peak AdamW lr (dense: 5e-5; LoRA: use ~5e-4)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases / norms)."})
    warmup_fraction: float = field(default=0.06, metadata={"help": "Share of steps of linear lr warm-up."})
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training data."})
    steps: Optional[int] = field(default=None, metadata={"help": "Optimiser steps (instead of epochs)."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    eval_batch_size: int = field(default=64, metadata={"help": "Dev batch size."})
    max_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})
    evaluations: int = field(default=5, metadata={"help": "Dev evaluations per run (the best is kept)."})
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank (PEFT) instead of dense finetuning; 0 = dense."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA α."})
    seed: int = field(default=0, metadata={"help": "Seed of the initialisation and data order."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self) -> None:
        for name in ("lr", "epochs", "lora_alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0; got {value!r}")
        for name in ("weight_decay", "warmup_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0; got {value!r}")
        for name, minimum in (("batch_size", 1), ("eval_batch_size", 1), ("max_length", 2), ("evaluations", 1),
                              ("lora_rank", 0), ("seed", 0)):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= minimum):
                raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")
        if self.steps is not None and not (isinstance(self.steps, int) and self.steps >= 1):
            raise ConfigError(f"steps must be an integer >= 1; got {self.steps!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
