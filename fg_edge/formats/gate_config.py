"""The gate config: a versioned dataclass saved as JSON (sorted keys) next to the gate tensors."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fg_edge.errors import ConfigError
from fg_edge.formats.names import TASKS

#: Bump when the meaning of a field or of a gate tensor name changes; `load` refuses newer versions.
#: 2: `adapter_modules` (configs of version 1 had adapters on the gated linears only, i.e. "gated").
FORMAT_VERSION = 2
GRANULARITIES = ("paper", "structured")
ADAPTER_MODULES = ("all", "gated")


@dataclass(frozen=True)
class GateConfig:
    """Frozen: derive a changed copy with `dataclasses.replace`."""

    granularity: str = field(default="structured", metadata={
        "help": "'paper': a row and a column gate on every targeted linear (docs/DESIGN.md §1). 'structured': one gate "
                "per attention head and per FFN channel, which the compiler can always remove."})
    target_sparsity: float = field(default=0.4, metadata={"help": "Fraction of gates the sparsity term pushes closed, in [0, 1)."})
    sparsity_lambda: float = field(default=50.0, metadata={"help": "λ: weight of the sparsity term in the loss."})
    init_mean: float = field(default=1.0, metadata={"help": "Mean of the gate logit initialisation (paper: 1)."})
    init_std: float = field(default=0.1, metadata={"help": "Std of the gate logit initialisation (paper: 0.1)."})
    noise_std: float = field(default=0.1, metadata={"help": "σ of the training noise ε (paper: 0.1)."})
    scale_gates: bool = field(default=False, metadata={
        "help": "structured only: also put paper row/column gates on every targeted linear (fine-grained scales)."})
    adapter_rank: int = field(default=0, metadata={"help": "Rank of a low-rank adapter W + (α/r)·B·A inside the gates; 0 = none."})
    adapter_alpha: float = field(default=8.0, metadata={"help": "α of the adapter scale α/r."})
    adapter_modules: str = field(default="all", metadata={
        "help": "Where adapters sit: 'all' = every linear of every block (q, k, v, o, FFN; the ones without gates "
                "are wrapped for the adapter only), 'gated' = only the linears that carry gates. Either way they "
                "merge into the weights before the compiler removes anything."})
    train_biases: bool = field(default=True, metadata={"help": "Train the biases of the gated linears (paper: yes)."})
    target_modules: Optional[list[str]] = field(default=None, metadata={
        "help": "paper granularity only: module-name suffixes to gate instead of the architecture spec's (for "
                "layouts fg-edge can neither find in its table nor derive; compile folds these gates exactly and "
                "removes rows / columns only where a spec shows them removable)."})
    model_type: Optional[str] = field(default=None, metadata={"help": "The HF model_type gated; written with the model_dir."})
    task: str = field(default="classification", metadata={"help": "'classification' or 'causal-lm'."})
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity must be one of {', '.join(GRANULARITIES)}; got {self.granularity!r}")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if not (isinstance(self.target_sparsity, (int, float)) and 0.0 <= self.target_sparsity < 1.0):
            raise ConfigError(f"target_sparsity must be in [0, 1); got {self.target_sparsity!r}")
        for name in ("sparsity_lambda", "init_std", "noise_std", "adapter_alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0; got {value!r}")
        if not math.isfinite(self.init_mean):
            raise ConfigError(f"init_mean must be finite; got {self.init_mean!r}")
        if self.adapter_modules not in ADAPTER_MODULES:
            raise ConfigError(f"adapter_modules must be one of {', '.join(ADAPTER_MODULES)}; "
                              f"got {self.adapter_modules!r}")
        if not (isinstance(self.adapter_rank, int) and self.adapter_rank >= 0):
            raise ConfigError(f"adapter_rank must be an integer >= 0; got {self.adapter_rank!r}")
        if self.target_modules is not None:
            if self.granularity != "paper":
                raise ConfigError("target_modules only works with granularity='paper': structured gates need the "
                                  "architecture spec (table entry or derived) to know where heads and FFN channels are")
            if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
                raise ConfigError(f"target_modules must be a non-empty list of module-name suffixes; got {self.target_modules!r}")
        if self.format_version > FORMAT_VERSION:
            raise ConfigError(f"gate config format_version {self.format_version} is newer than this fg-edge "
                              f"understands ({FORMAT_VERSION}); upgrade fg-edge")

    # -- (de)serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "gate config") -> "GateConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}")
        data = dict(data)
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(f"{source}: format_version must be a positive integer; got {version!r}")
        if version < 2:
            data.setdefault("adapter_modules", "gated")  # what version 1 meant
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except ConfigError as exc:      # name the file the bad value came from
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "GateConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: gate config not found") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=str(path))
