"""Training arguments (`TrainArgs`), kept free of torch so the CLI can build its help from them instantly."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from fg_edge.errors import ConfigError

#: Epochs when neither `epochs` nor `steps` is given.
DEFAULT_EPOCHS = 3.0
#: Share of the run over which the sparsity target (Lagrangian control) or λ (penalty) ramps up when
#: `sparsity_warmup_steps` is not given.
DEFAULT_WARMUP_FRACTION = 0.25
#: Lagrangian control: the target ramps from 0 over this share of the search phase (the steps before the mask
#: freezes). Gates need ~80 steps at gate_lr 2e-2 to travel from their init to closed; a target that outruns
#: them makes the multipliers wind up and the run overshoot (measured: a ramp over 47 of 188 search steps
#: reached 62% removed for a 40% target at step 126).
TARGET_RAMP_FRACTION = 2 / 3
SPARSITY_UNITS = ("auto", "params", "gates")
SPARSITY_CONTROLS = ("lagrangian", "penalty")
MIXED_PRECISIONS = ("no", "bf16", "fp16")


# -- arguments -----------------------------------------------------------------------------------------------
@dataclass
class TrainArgs:
    # Learning rates. docs/DESIGN.md §6: with the paper's lr (1e-3) a gate logit needs > 1,500 Adam steps to travel from
    # its init (θ≈1) to closed (θ < atanh(−0.5) ≈ −0.55), far beyond a short run. Defaults measured on
    # all-MiniLM-L6-v2 / SST-2 (4,000 rows, 3 epochs = 750 steps, target 0.4):
    #   gate lr 5e-2, no λ ramp, adapters off, norms frozen  → 79.5% dev, 54% of heads/channels closed
    #   gate lr 2e-2, λ ramp 200 steps, rank-8 adapters, norms trained → 80.3% dev, 48% closed
    #   the shipped defaults (as above, λ ramp = a quarter of the run = 188 steps) → 80.4% dev (best of 5 dev
    #   evaluations; 78.6% at the last step), 47.5% closed, 6.5 min on 2 shared CPU cores
    # With 5e-2 every gate reaches the clamp within ~40 steps, before the head has learnt anything, and a gate
    # below the clamp gets no task gradient any more — so which gates close is decided by noise. 2e-2 (≈80 steps
    # of travel) under a ramping λ leaves time for the task gradient to sort the gates first and still reaches the
    # target within a third of the run. The fresh head needs a faster lr than the paper's; the pretrained biases,
    # norms and the adapters keep the paper's 1e-3 so the frozen features are not disturbed.
    lr: float = field(default=1e-3, metadata={
        "help": "AdamW lr of the trained base tensors (gated biases, norms) and adapters (paper: 1e-3)."})
    gate_lr: float = field(default=2e-2, metadata={
        "help": "AdamW lr of the gate logits. Faster than the paper's 1e-3 on purpose: a logit must move by ~1.6 "
                "to close a gate, ~80 Adam steps at 2e-2, so a run of a few hundred steps reaches its target."})
    head_lr: Optional[float] = field(default=5e-3, metadata={
        "help": "AdamW lr of the task head (classifier, pooler); None = lr."})
    epochs: Optional[float] = field(default=None, metadata={
        "help": f"Passes over the training data (default {DEFAULT_EPOCHS:g} when steps is not given)."})
    steps: Optional[int] = field(default=None, metadata={"help": "Optimiser steps (instead of epochs)."})
    batch_size: int = field(default=16, metadata={
        "help": "Training batch size (paper: 16): the global batch, split evenly over the processes of a "
                "multi-process run, so N processes train what one would."})
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size of dev evaluation."})
    max_length: int = field(default=128, metadata={
        "help": "Classification: truncate inputs to this many tokens. Causal LM: block length of the chunked "
                "token stream."})
    eval_every: Optional[int] = field(default=None, metadata={
        "help": "Evaluate on the dev data every N steps (and at the end); default: 5 evaluations per run."})
    # The ramp lets the (fresh) head learn before gates close: a gate whose logit sinks below the clamp gets no
    # task gradient any more, so gates closed while the head is still random are chosen by noise for good.
    sparsity_warmup_steps: Optional[int] = field(default=None, metadata={
        "help": "Ramp the sparsity pressure over the first N steps: the target (Lagrangian control; default "
                f"{TARGET_RAMP_FRACTION:.0%} of the steps before the mask freezes) or λ (penalty; default "
                f"{DEFAULT_WARMUP_FRACTION:.0%} of the run). 0 = full from the start."})
    sparsity_tolerance: float = field(default=0.05, metadata={
        "help": "A checkpoint counts as 'at target' when |expected sparsity − target| is at most this."})
    train_norms: bool = field(default=True, metadata={
        "help": "Also train the LayerNorm / RMSNorm weights and biases (with lr; a few thousand parameters)."})
    # -- sparsity control (fg_edge.train.sparsity) ----------------------------------------------------------------
    sparsity_unit: str = field(default="auto", metadata={
        "help": "What target_sparsity counts: 'params' = share of transformer-block parameters the compiler "
                "removes (each gate weighted by its real cost: a MiniLM head = 64 FFN channels), 'gates' = "
                "share of gates (the paper's term). 'auto': params for structured gates, gates for paper ones."})
    sparsity_control: str = field(default="lagrangian", metadata={
        "help": "'lagrangian': λ1·(s−t)+λ2·(s−t)² with multipliers trained by gradient ascent, so the run lands "
                "on the target (CoFi); 'penalty': the paper's fixed λ·|s−t| (GateConfig.sparsity_lambda)."})
    # Measured on MiniLM / SST-2 (40% target, teacher, train_base, 250 steps, seed 0; test = GLUE dev):
    #   'params'  → 62/72 heads and 1,632 channels closed, 79.0% test (85.2% on the validation rows)
    #   'uniform' → 0 heads and 5,837 channels closed,   82.6% test (85.6% on the validation rows)
    # Weighting the push by cost makes a head (64 channels' worth) lose the race against its own task gradient
    # far sooner; SST-2's training phrases barely need attention, its test sentences do.
    sparsity_pressure: str = field(default="uniform", metadata={
        "help": "How the sparsity gradient is spread over gates (unit params): 'uniform' = every gate alike, so "
                "the task gradient ranks gates per gate; 'params' = by each gate's parameter cost (a MiniLM head "
                "is pushed 64x harder than an FFN channel). The target and what is measured stay in parameters."})
    controller_lr: float = field(default=1.0, metadata={
        "help": "Ascent step of the Lagrange multipliers per unit of sparsity error and step."})
    final_fraction: float = field(default=0.25, metadata={
        "help": "Share of the steps at the end trained with the mask frozen: gates are snapped so exactly the "
                "target is removed, noise off, only the kept parts (adapters, biases, norms, head) train and "
                "their learning rates anneal linearly to 0; the checkpoint is chosen in this phase. 0 = off."})
    train_base: bool = field(default=False, metadata={
        "help": "Also train the transformer blocks' own weights (with base_lr), as dense finetuning does; "
                "makes every block parameter trainable."})
    base_lr: float = field(default=5e-5, metadata={"help": "AdamW lr of the block weights with train_base."})
    distill: bool = field(default=False, metadata={
        "help": "Causal LM: loss = KL(dense model ‖ gated model) on the logits instead of the LM loss (no labels "
                "needed). Classification: needs an explicit fine-tuned teacher passed to train()."})
    temperature: float = field(default=2.0, metadata={"help": "Distillation temperature T."})
    distill_alpha: Optional[float] = field(default=None, metadata={
        "help": "Weight α of the KL term when distilling: loss = (1−α)·task loss + α·KL, the task loss being CE "
                "(classification with a teacher) or the LM loss on the training text (causal LM with distill). "
                "Default: 0.5 for classification, 1 (KL only) for causal LMs."})
    max_grad_norm: Optional[float] = field(default=None, metadata={"help": "Clip gradients to this norm; None = off."})
    seed: int = field(default=0, metadata={"help": "Seed of torch, numpy, random and the data order."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})
    mixed_precision: str = field(default="no", metadata={
        "help": "Autocast of the training forward: no, bf16 (CPUs and recent GPUs) or fp16 (GPUs); gates and "
                "saved weights stay float32."})
    fsdp: bool = field(default=False, metadata={
        "help": "Shard the frozen base weights over the training processes (FSDP2; 2 or more processes, e.g. "
                "torchrun): each process holds 1/N of them between forwards; the trained parts (gates, "
                "adapters, biases, norms, head) stay whole on every process. Not with train_base."})

    def __post_init__(self) -> None:
        def number(name: str, value: Any, *, minimum: float = 0.0, strict: bool = True, optional: bool = False):
            if value is None and optional:
                return
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > minimum if strict else value >= minimum)
            if not ok:
                raise ConfigError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}; "
                                  f"got {value!r}")

        def integer(name: str, value: Any, *, minimum: int, optional: bool = False):
            if value is None and optional:
                return
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
                raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")

        number("lr", self.lr)
        number("gate_lr", self.gate_lr)
        number("head_lr", self.head_lr, optional=True)
        number("epochs", self.epochs, optional=True)
        integer("steps", self.steps, minimum=1, optional=True)
        if self.epochs is not None and self.steps is not None:
            raise ConfigError(f"give epochs or steps, not both (got epochs={self.epochs}, steps={self.steps})")
        integer("batch_size", self.batch_size, minimum=1)
        integer("eval_batch_size", self.eval_batch_size, minimum=1)
        integer("max_length", self.max_length, minimum=2)
        integer("eval_every", self.eval_every, minimum=1, optional=True)
        integer("sparsity_warmup_steps", self.sparsity_warmup_steps, minimum=0, optional=True)
        number("sparsity_tolerance", self.sparsity_tolerance, strict=False)
        number("temperature", self.temperature)
        number("distill_alpha", self.distill_alpha, strict=False, optional=True)
        if self.distill_alpha is not None and self.distill_alpha > 1:
            raise ConfigError(f"distill_alpha must be in [0, 1]; got {self.distill_alpha!r}")
        number("max_grad_norm", self.max_grad_norm, optional=True)
        for name, value, allowed in (("sparsity_unit", self.sparsity_unit, SPARSITY_UNITS),
                                     ("sparsity_control", self.sparsity_control, SPARSITY_CONTROLS)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        number("controller_lr", self.controller_lr)
        if self.sparsity_pressure not in ("params", "uniform"):
            raise ConfigError(f"sparsity_pressure must be 'params' or 'uniform'; got {self.sparsity_pressure!r}")
        number("base_lr", self.base_lr)
        number("final_fraction", self.final_fraction, strict=False)
        if self.final_fraction >= 1:
            raise ConfigError(f"final_fraction must be in [0, 1); got {self.final_fraction!r}")
        integer("seed", self.seed, minimum=0)
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}; got "
                              f"{self.mixed_precision!r}")

    def warmup_steps(self, total_steps: int) -> int:
        """sparsity_warmup_steps, or its default share of `total_steps` (penalty: of the run; Lagrangian: of the
        search phase, which is what the caller passes)."""
        if self.sparsity_warmup_steps is not None:
            return self.sparsity_warmup_steps
        fraction = TARGET_RAMP_FRACTION if self.sparsity_control == "lagrangian" else DEFAULT_WARMUP_FRACTION
        return round(fraction * total_steps)

    def final_steps(self, total_steps: int) -> int:
        """Steps of the frozen-mask phase at the end of a run of `total_steps` (at least 1 when enabled)."""
        if self.final_fraction <= 0 or total_steps < 2:
            return 0
        return min(total_steps - 1, max(1, round(self.final_fraction * total_steps)))

    def resolved_alpha(self, task: str) -> float:
        """The KL weight when distilling: distill_alpha, or its default for the task (see the field's help)."""
        if self.distill_alpha is not None:
            return self.distill_alpha
        return 0.5 if task == "classification" else 1.0

    def resolved_unit(self, granularity: str) -> str:
        if self.sparsity_unit != "auto":
            return self.sparsity_unit
        return "params" if granularity == "structured" else "gates"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
