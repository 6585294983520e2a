"""Gate training: `TrainArgs` (the knobs, validated) and `train(...)` (the loop), on Hugging Face Accelerate.

The default recipe (structured gates) has two phases:

1. **search** (the first 1 − final_fraction of the steps): loss = task loss + a Lagrangian term that holds the
   share of transformer-block *parameters* the compiler would remove at a target ramped from 0 (over 2/3 of
   the phase), each gate weighted by its real cost (fg_edge.train.sparsity); the multipliers are trained by gradient
   ascent, so no λ is tuned per task.
2. **frozen mask** (the last final_fraction): the gates are snapped so that exactly the target is removed (the
   open gates with the lowest μ close), frozen, their noise switched off — the model trains in exactly the form
   it will be compiled in — and only the kept parts train (adapters, biases, norms, head). The checkpoint is
   chosen in this phase.

`sparsity_control='penalty'` with `sparsity_unit='gates'` and `final_fraction=0` is fg-edge 0.1's recipe and
the paper's term: loss = task loss + λ_t · mean over gated layers of |mean P(open) − (1 − target)|, λ_t ramped.

The task loss is cross-entropy for classification — with a fine-tuned dense teacher (`teacher=`, CLI
`--teacher`), (1 − α)·CE + α·T²·KL(teacher ‖ student) at temperature T, the teacher's logits computed once per
training row before training (fg_edge.train.teacher.CachedTeacher) — and, for causal LMs, either the plain LM loss or,
with ``distill``, KL(teacher ‖ student) on the logits, so a decoder can be compressed without labels. The
default teacher of a causal LM is the dense model itself: with every gate open the gated model *is* the base
model, so its logits come from running the same modules with the gates taken out (`fg_edge.gates.inject.unwrapped`)
and the few trained base tensors (biases, norms) swapped back to their original values — exact, one extra
no-grad forward per step, no second copy of the weights.

Trained: the gate logits, the task head (+ pooler), the biases of the gated linears (GateConfig.train_biases),
optionally the norms (TrainArgs.train_norms), the adapters (on every block linear by default,
GateConfig.adapter_modules) and, with train_base, the blocks' weights; AdamW without weight decay at constant
learning rates in four groups: gate logits (`gate_lr`), task head (`head_lr`), block weights (`base_lr`) and the
rest (`lr`).

Checkpoint selection: after every dev evaluation the trainable tensors are kept in memory when the dev metric is
the best so far — in the frozen-mask phase when there is one (every checkpoint there has the final mask), else
among evaluations whose sparsity is within `sparsity_tolerance` of the target (falling back to the best overall);
the best one is restored at the end and recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fg_edge.data.tokenize import set_pad_token_id
from fg_edge.formats.gate_config import GateConfig
from fg_edge.errors import ConfigError, DataError
from fg_edge.gates.inject import (closed_gate_fraction, expected_sparsity, gated_modules, inject_gates, mark_trainable,
                     sparsity_loss, task_head_names, unwrapped)
from fg_edge.train.sparsity import LagrangianController, closed_probability, gate_costs, snap_to_target_
from fg_edge.train.teacher import CachedTeacher

log = logging.getLogger(__name__)

from fg_edge.formats.train_args import DEFAULT_EPOCHS, DEFAULT_WARMUP_FRACTION, TrainArgs  # noqa: F401  (re-exported)


# -- results -------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    task: str
    steps: int
    epochs: float
    wall_time_s: float
    train_loss: float                      # mean task loss over the last evaluation window
    train_loss_start: float                # mean task loss over the first evaluation window
    sparsity_term: float                   # sparsity_loss at the end (before λ)
    dev_metric_name: Optional[str]
    dev_metric: Optional[float]            # of the restored (best) checkpoint
    dev_metrics: dict                      # every dev figure of the restored checkpoint
    best_step: int
    best_at_target: bool                   # whether the restored checkpoint met the sparsity tolerance
    target_sparsity: float
    expected_sparsity: float               # of the restored checkpoint
    closed_gate_fraction: float            # gates with eval value exactly 0, over all gates
    closed_gates: dict                     # {"heads"|"ffn_channels"|"rows"|"cols": {"closed": c, "total": n}}
    trainable_params: int
    base_params: int
    trainable_percent: float               # trainable / base parameters × 100
    sparsity_unit: str = "gates"           # what target_sparsity counted (TrainArgs.sparsity_unit, resolved)
    sparsity_measured: float = 0.0         # that quantity at the end (params: hard share of block params removed)
    block_params_removed_share: Optional[float] = None   # closed gates' block parameters / all block parameters
    block_params: Optional[int] = None
    mask_frozen_at: Optional[int] = None   # step at which the mask was snapped and frozen
    snap: Optional[dict] = None            # what the snap did (fg_edge.train.sparsity.snap_to_target_)
    controller: Optional[dict] = None      # final Lagrange multipliers
    teacher_seconds: float = 0.0           # time spent computing cached teacher logits (not in wall_time_s)
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- model preparation ---------------------------------------------------------------------------------------
def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def prepare_model(model: nn.Module, gate_config: GateConfig, args: TrainArgs) -> int:
    """Inject gates and set requires_grad (gates, head, gated biases, adapters, + norms). Returns #trainable."""
    inject_gates(model, gate_config)
    mark_trainable(model, gate_config, train_head=True)
    if args.train_base:
        from fg_edge.arch import get_spec, layers_of

        for p in layers_of(model, get_spec(getattr(model.config, "model_type", None))).parameters():
            p.requires_grad_(True)
    if args.train_norms:
        for module in model.modules():
            if _is_norm(module):
                for p in module.parameters(recurse=False):
                    p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _gate_param_ids(model: nn.Module) -> set[int]:
    return {id(gate.logits) for g in gated_modules(model).values() for gate in g.gates()}


def _adapter_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for g in gated_modules(model).values() for p in (g.lora_A, g.lora_B) if p is not None}


def param_groups(model: nn.Module, args: TrainArgs) -> list[dict]:
    """AdamW groups: gate logits (gate_lr), task head (head_lr), block weight matrices (base_lr, with
    train_base), everything else trainable — adapters, biases, norms — (lr)."""
    gate_ids = _gate_param_ids(model)
    head_ids = {id(model.get_parameter(n)) for n in task_head_names(model)}
    adapter_ids = _adapter_param_ids(model)
    groups = {"gates": [], "head": [], "base": [], "rest": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in gate_ids:
            key = "gates"
        elif id(p) in head_ids:
            key = "head"
        elif p.dim() >= 2 and id(p) not in adapter_ids:
            key = "base"
        else:
            key = "rest"
        groups[key].append(p)
    lrs = {"gates": args.gate_lr, "head": args.head_lr or args.lr, "base": args.base_lr, "rest": args.lr}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, base) parameter counts; base excludes fg-edge's gate logits and adapters."""
    extra = _gate_param_ids(model) | _adapter_param_ids(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for p in model.parameters() if id(p) not in extra)
    return trainable, base


@torch.no_grad()
def closed_gate_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """Closed (eval value exactly 0) / total gates by kind: heads, FFN channels, rows, columns."""
    counts: dict[str, dict[str, int]] = {}

    def add(kind: str, values: torch.Tensor) -> None:
        c = counts.setdefault(kind, {"closed": 0, "total": 0})
        c["closed"] += int((values == 0).sum())
        c["total"] += values.numel()

    for g in gated_modules(model).values():
        if g.group_gate is not None:
            add("heads" if g.group_size > 1 else "ffn_channels", g.group_gate.eval_values())
        if g.row_gate is not None:
            add("rows", g.row_gate.eval_values())
        if g.col_gate is not None:
            add("cols", g.col_gate.eval_values())
    return counts


def sparsity_lambda_at(step: int, gate_config: GateConfig, warmup_steps: int) -> float:
    """λ at optimiser step `step` (0-based): linear warm-up over `warmup_steps`, then constant."""
    if warmup_steps <= 0:
        return gate_config.sparsity_lambda
    return gate_config.sparsity_lambda * min(1.0, (step + 1) / warmup_steps)


# -- teachers and losses -------------------------------------------------------------------------------------
class DenseTeacher:
    """Logits of the dense base model computed by the gated model itself (see the module docstring).

    Build it after gates are injected and trainable tensors marked, before the first optimiser step, and on the
    device the model trains on (the original values of the trained base tensors are copied then)."""

    def __init__(self, model: nn.Module):
        self.model = model
        gate_and_adapter = _gate_param_ids(model) | _adapter_param_ids(model)
        # Trained base tensors (biases, norms, head): keep their original values to swap in for the teacher pass.
        self.originals = [(p, p.detach().clone()) for p in model.parameters()
                          if p.requires_grad and id(p) not in gate_and_adapter]

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        model = self.model
        was_training = model.training
        current = [p.data for p, _ in self.originals]
        try:
            for p, orig in self.originals:
                p.data = orig
            with unwrapped(model):
                model.eval()
                return model(**_model_inputs(batch)).logits
        finally:
            for (p, _), data in zip(self.originals, current):
                p.data = data
            model.train(was_training)


class ModelTeacher:
    """Logits of a separate frozen model (e.g. a fine-tuned dense classifier)."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        return self.teacher(**_model_inputs(batch)).logits


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
               mask: Optional[torch.Tensor] = None, reduce: bool = True) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over positions (mask: 1 = counts)."""
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    s = F.log_softmax(student.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1) * temperature ** 2
    if not reduce:
        return kl
    if mask is None:
        return kl.mean()
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def task_loss(model: nn.Module, batch: dict, task: str, args: TrainArgs,
              teacher: Optional[Callable]) -> torch.Tensor:
    """Forward the student and return its task loss (CE / LM loss / distillation, see the module docstring)."""
    if teacher is None:
        labels = batch["labels"] if task == "classification" else batch["input_ids"]
        return model(**_model_inputs(batch), labels=labels).loss
    teacher_logits = teacher(batch)  # before the student forward: the dense teacher swaps tensors
    logits = model(**_model_inputs(batch)).logits
    if task == "classification":
        ce = F.cross_entropy(logits, batch["labels"])
        kl = distill_kl(logits, teacher_logits, args.temperature)
        return (1 - args.distill_alpha) * ce + args.distill_alpha * kl
    return distill_kl(logits, teacher_logits, args.temperature, batch.get("attention_mask"))


# -- evaluation ----------------------------------------------------------------------------------------------
#: metric name → True when higher is better
METRIC_HIGHER_IS_BETTER = {"accuracy": True, "perplexity": False, "distill_kl": False}


def primary_metric(task: str, distilling: bool) -> str:
    if task == "classification":
        return "accuracy"
    return "distill_kl" if distilling else "perplexity"


@torch.no_grad()
def evaluate(model: nn.Module, loader, task: str, accelerator, args: TrainArgs,
             teacher: Optional[Callable] = None) -> dict[str, float]:
    """Dev figures with eval gates: accuracy + loss (classification); perplexity (+ distill_kl) for causal LM."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    try:
        for batch in loader:
            inputs = _model_inputs(batch)
            teacher_logits = teacher(batch) if teacher is not None else None
            logits = model(**inputs).logits
            if task == "classification":
                loss = F.cross_entropy(logits.float(), batch["labels"], reduction="none")
                correct = (logits.argmax(-1) == batch["labels"]).float()
                parts = {"loss": loss, "correct": correct, "count": torch.ones_like(loss)}
                if teacher_logits is not None:
                    parts["distill_kl"] = distill_kl(logits, teacher_logits, args.temperature, reduce=False)
            else:
                shift_logits, shift_labels = logits[:, :-1].float(), batch["input_ids"][:, 1:]
                mask = batch["attention_mask"][:, 1:].float()
                nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, reduction="none")
                parts = {"nll": (nll * mask).sum(1), "tokens": mask.sum(1)}
                if teacher_logits is not None:
                    kl = distill_kl(logits, teacher_logits, args.temperature, reduce=False)
                    parts["kl"] = (kl * batch["attention_mask"]).sum(1)
                    parts["kl_tokens"] = batch["attention_mask"].float().sum(1)
            gathered = accelerator.gather_for_metrics(parts)
            for k, v in gathered.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
    finally:
        model.train(was_training)
    if task == "classification":
        out = {"accuracy": sums["correct"] / sums["count"], "loss": sums["loss"] / sums["count"]}
        if "distill_kl" in sums:
            out["distill_kl"] = sums["distill_kl"] / sums["count"]
        return out
    out = {"loss": sums["nll"] / max(sums["tokens"], 1.0)}
    out["perplexity"] = math.exp(min(out["loss"], 50.0))
    if "kl" in sums:
        out["distill_kl"] = sums["kl"] / max(sums["kl_tokens"], 1.0)
    return out


# -- checkpoint selection ------------------------------------------------------------------------------------
class BestCheckpoint:
    """Keeps in memory the trainable tensors of the best evaluation (see the module docstring)."""

    def __init__(self, params: list[nn.Parameter], metric: str, target: float, tolerance: float):
        self.params = params
        self.metric = metric
        self.higher = METRIC_HIGHER_IS_BETTER[metric]
        self.target, self.tolerance = target, tolerance
        self.at_target: Optional[dict] = None   # {"step", "metrics", "expected_sparsity", "state"}
        self.any: Optional[dict] = None

    def _better(self, new: float, old: Optional[dict]) -> bool:
        if old is None:
            return True
        return new > old["metrics"][self.metric] if self.higher else new < old["metrics"][self.metric]

    def update(self, step: int, metrics: dict, sparsity: float) -> None:
        value = metrics[self.metric]
        within = abs(sparsity - self.target) <= self.tolerance + 1e-9
        for slot, eligible in (("at_target", within), ("any", True)):
            if eligible and self._better(value, getattr(self, slot)):
                setattr(self, slot, {"step": step, "metrics": dict(metrics), "expected_sparsity": sparsity,
                                     "state": [p.detach().clone() for p in self.params]})

    @property
    def best(self) -> Optional[dict]:
        return self.at_target or self.any

    @torch.no_grad()
    def restore(self) -> Optional[dict]:
        best = self.best
        if best is not None:
            for p, saved in zip(self.params, best["state"]):
                p.copy_(saved)
        return best


# -- data loaders --------------------------------------------------------------------------------------------
def build_loaders(task: str, tokenizer, train_data, dev_data, args: TrainArgs):
    """(train loader, dev loader or None) from ClassificationData / TextData (see fg_edge.data.readers)."""
    from torch.utils.data import DataLoader

    from fg_edge.data.readers import ClassificationData, TextData
    from fg_edge.data.tokenize import lm_blocks, pad_collate, tokenize_classification

    generator = torch.Generator().manual_seed(args.seed)
    if task == "classification":
        if not isinstance(train_data, ClassificationData):
            raise DataError("classification training needs ClassificationData (fg_edge.data.readers.load_classification)")
        collate = pad_collate(tokenizer)
        train_rows = [dict(row, index=i) for i, row in
                      enumerate(tokenize_classification(train_data, tokenizer, args.max_length))]
        dev_rows = None if dev_data is None else [
            dict(row, index=i) for i, row in enumerate(tokenize_classification(dev_data, tokenizer, args.max_length))]
    else:
        if not isinstance(train_data, TextData):
            raise DataError("causal-LM training needs TextData (fg_edge.data.readers.load_texts)")

        def collate(blocks):
            ids = torch.stack(blocks)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        train_rows = list(lm_blocks(train_data, tokenizer, args.max_length))
        dev_rows = list(lm_blocks(dev_data, tokenizer, args.max_length)) if dev_data is not None else None
    train_loader = DataLoader(train_rows, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                              generator=generator, drop_last=len(train_rows) > args.batch_size)
    dev_loader = None
    if dev_rows:
        dev_loader = DataLoader(dev_rows, batch_size=args.eval_batch_size, shuffle=False, collate_fn=collate)
    return train_loader, dev_loader


def _total_steps(args: TrainArgs, batches_per_epoch: int) -> tuple[int, float]:
    if args.steps is not None:
        return args.steps, args.steps / batches_per_epoch
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS
    return max(1, math.ceil(epochs * batches_per_epoch)), epochs


# -- the loop ------------------------------------------------------------------------------------------------
def _make_teacher(model: nn.Module, args: TrainArgs, teacher: Optional[nn.Module], device, task: str,
                  train_loader, dev_loader) -> tuple[Optional[Callable], Optional[Callable]]:
    """(teacher for the training batches, teacher for the dev batches)."""
    if teacher is not None:
        if task == "classification":
            cached = [CachedTeacher.build(teacher, loader.dataset, loader.collate_fn, args.eval_batch_size, device)
                      if loader is not None else None for loader in (train_loader, dev_loader)]
            return cached[0], cached[1]
        fn = ModelTeacher(teacher.to(device))
        return fn, fn
    fn = DenseTeacher(model) if args.distill else None
    return fn, fn


class _Sparsity:
    """The sparsity term of a run: unit (params / gates), control (Lagrangian / penalty), ramped target."""

    def __init__(self, model: nn.Module, gate_config: GateConfig, args: TrainArgs, total: int):
        self.model, self.gate_config, self.args = model, gate_config, args
        self.unit = args.resolved_unit(gate_config.granularity)
        self.costs = gate_costs(model) if self.unit == "params" else None
        self.controller = LagrangianController(args.controller_lr) if args.sparsity_control == "lagrangian" else None
        self.target = gate_config.target_sparsity
        self.ramp = args.warmup_steps(total)

    def target_at(self, step: int) -> float:
        """The ramped target (Lagrangian) at 0-based step `step`."""
        if self.ramp <= 0:
            return self.target
        return self.target * min(1.0, (step + 1) / self.ramp)

    def soft_share(self) -> torch.Tensor:
        """Differentiable share (the surrogate the gradient flows through)."""
        if self.costs is not None:
            if self.args.sparsity_pressure == "uniform":
                return self.costs.soft_gate_share()
            return self.costs.soft_share()
        gates = [gate for g in gated_modules(self.model).values() for gate in g.gates()]
        return torch.cat([closed_probability(gate.mu) for gate in gates]).mean()

    @torch.no_grad()
    def scale_share(self) -> float:
        """The share the controller sees (1 − eval gate value, weighted; see fg_edge.train.sparsity)."""
        if self.costs is not None:
            return self.costs.scale_share()
        gates = [gate for g in gated_modules(self.model).values() for gate in g.gates()]
        return float(torch.cat([1 - gate.eval_values() for gate in gates]).mean())

    def term(self, step: int) -> tuple[torch.Tensor, float]:
        """(loss term, the controlled error or the penalty value) for this step."""
        if self.controller is not None:
            target = self.target_at(step)
            measured = self.scale_share()
            self._last = (measured, target)
            return self.controller.term(self.soft_share(), measured, target), measured - target
        lam = sparsity_lambda_at(step, self.gate_config, self.ramp)
        if self.unit == "params":
            sp = torch.abs(self.soft_share() - self.target)
        else:
            sp = sparsity_loss(self.model, self.gate_config)
        return lam * sp, float(sp.detach())

    def after_step(self) -> None:
        if self.controller is not None:
            _, target = self._last   # the step's target; the share is read again after the optimiser step
            self.controller.update(self.scale_share(), target, met=self.measured() >= target)

    def measured(self) -> float:
        """The controlled quantity now: share of block parameters removed (params) or expected gate sparsity."""
        return self.costs.hard_share() if self.costs is not None else expected_sparsity(self.model)


@dataclass
class _Run:
    """State of one training run shared by the loop's helpers (instead of a dozen positional arguments)."""

    wrapped: nn.Module
    inner: nn.Module
    optimizer: torch.optim.Optimizer
    accelerator: object
    task: str
    gate_config: GateConfig
    args: TrainArgs
    teacher: Optional[Callable]
    dev_teacher: Optional[Callable]
    dev_loader: object
    sparsity: _Sparsity
    total: int
    freeze_at: Optional[int]                 # step at which the mask is frozen (None: never)
    eval_steps: set
    best: BestCheckpoint
    history: list = field(default_factory=list)
    window: list = field(default_factory=list)
    term: float = 0.0
    snap: Optional[dict] = None
    phase_lrs: list = field(default_factory=list)   # learning rates when the mask froze (annealed from there)

    @property
    def frozen(self) -> bool:
        return self.snap is not None


def _eval_schedule(total: int, freeze_at: Optional[int], eval_every: Optional[int]) -> set:
    """Steps (1-based) after which to evaluate: every eval_every, else 3 times before the mask freezes and 4
    times after it (the checkpoint is chosen there), always at the end."""
    if eval_every:
        return set(range(eval_every, total + 1, eval_every)) | {total}
    if freeze_at is None:
        every = max(1, math.ceil(total / 5))
        return set(range(every, total + 1, every)) | {total}
    first = max(1, math.ceil(freeze_at / 3))
    steps = set(range(first, freeze_at + 1, first))
    span = total - freeze_at
    steps |= {freeze_at + max(1, round(span * k / 4)) for k in range(1, 5)}
    return {s for s in steps if 1 <= s <= total} | {total}


def train(model: nn.Module, tokenizer, gate_config: GateConfig, train_data, dev_data=None,
          args: Optional[TrainArgs] = None, teacher: Optional[nn.Module] = None) -> TrainResult:
    """Inject gates into `model` (in place) and train them; the best checkpoint is left in `model` (eval mode).

    train_data / dev_data: `fg_edge.data.readers.ClassificationData` (task 'classification') or `TextData`
    ('causal-lm'). `teacher`: optional frozen model whose logits are distilled (classification: a fine-tuned
    classifier, see fg_edge.train.teacher; otherwise, with args.distill, the dense base model for causal LMs).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    args = args or TrainArgs()
    task = gate_config.task
    set_seed(args.seed)
    accelerator = Accelerator()
    train_loader, dev_loader = build_loaders(task, tokenizer, train_data, dev_data, args)
    if task == "classification":
        set_pad_token_id(model, tokenizer)
    prepare_model(model, gate_config, args)
    trainable, base = count_params(model)
    if teacher is None and args.distill and task == "classification":
        raise ConfigError("distillation for classification needs a fine-tuned dense teacher model passed to "
                          "train(teacher=...) (CLI: --teacher DIR); the base model's classification head is "
                          "untrained")
    teacher_fn, dev_teacher = _make_teacher(model, args, teacher, accelerator.device, task, train_loader,
                                            dev_loader)
    teacher_seconds = sum(getattr(t, "seconds", 0.0) for t in {id(t): t for t in (teacher_fn, dev_teacher)}.values())
    optimizer = torch.optim.AdamW(param_groups(model, args), weight_decay=0.0)
    prepared = accelerator.prepare(model, optimizer, train_loader, *([dev_loader] if dev_loader else []))
    wrapped, optimizer, train_loader = prepared[:3]
    dev_loader = prepared[3] if dev_loader else None
    inner = accelerator.unwrap_model(wrapped)
    if isinstance(teacher_fn, DenseTeacher):
        teacher_fn = dev_teacher = DenseTeacher(inner)  # after prepare: the originals on the training device
    total, epochs = _total_steps(args, len(train_loader))
    final = args.final_steps(total)
    freeze_at = total - final if final else None
    metric = primary_metric(task, teacher_fn is not None)
    run = _Run(wrapped=wrapped, inner=inner, optimizer=optimizer, accelerator=accelerator, task=task,
               gate_config=gate_config, args=args, teacher=teacher_fn, dev_teacher=dev_teacher, dev_loader=dev_loader,
               sparsity=_Sparsity(inner, gate_config, args, freeze_at or total), total=total, freeze_at=freeze_at,
               eval_steps=_eval_schedule(total, freeze_at, args.eval_every),
               best=BestCheckpoint([p for p in inner.parameters() if p.requires_grad], metric,
                                   gate_config.target_sparsity, args.sparsity_tolerance))
    log.info("training %s: %d steps (%.2f epochs, %d batches/epoch); sparsity in %s, %s control, ramp over %d "
             "steps%s; %d trainable parameters (%.3f%% of %d)", task, total, epochs, len(train_loader),
             run.sparsity.unit, args.sparsity_control, run.sparsity.ramp,
             f", mask frozen for the last {final} steps" if final else "", trainable, 100 * trainable / base, base)
    start = time.perf_counter()
    try:
        _loop(run, train_loader)
    finally:
        _set_gate_noise(inner, gate_config.noise_std)
    wall = time.perf_counter() - start
    chosen = run.best.restore()
    inner.eval()
    return _result(run, chosen, metric, total / len(train_loader), wall, trainable, base, teacher_seconds)


def _loop(run: _Run, train_loader) -> None:
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    step = 0
    run.wrapped.train()
    bar = tqdm(total=run.total, desc="fg-edge train", dynamic_ncols=True,
               disable=not (run.args.progress and run.accelerator.is_local_main_process))
    # Route log records through tqdm.write while the bar is shown, so they do not tear it.
    with logging_redirect_tqdm() if not bar.disable else contextlib.nullcontext():
        while step < run.total:
            for batch in train_loader:
                if run.freeze_at is not None and step == run.freeze_at and not run.frozen:
                    _freeze_mask(run)
                loss_task = _train_step(run, batch, step)
                step += 1
                run.window.append(loss_task)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_task:.3f}", removed=f"{run.sparsity.measured():.3f}", refresh=False)
                if step in run.eval_steps:
                    _eval_record(run, step)
                if step >= run.total:
                    break
    bar.close()


def _set_gate_noise(model: nn.Module, noise_std: float) -> None:
    """Gate noise off (0: eval gate values while training) for the frozen-mask phase, and back to the gate
    config's σ (which every gate was built with) afterwards."""
    for g in gated_modules(model).values():
        for gate in g.gates():
            gate.noise_std = float(noise_std)


def _freeze_mask(run: _Run) -> None:
    """Snap the gates onto the target, freeze them, turn their noise off; choose the checkpoint from here on."""
    inner = run.inner
    if run.sparsity.costs is not None:
        run.snap = snap_to_target_(run.sparsity.costs, run.gate_config.target_sparsity)
    else:
        run.snap = {"target": run.gate_config.target_sparsity, "gates_closed_by_snap": 0}
    for g in gated_modules(inner).values():
        for gate in g.gates():
            gate.logits.requires_grad_(False)
            gate.logits.grad = None
    _set_gate_noise(inner, 0.0)
    # The learning rates anneal linearly to 0 over the phase (as dense finetuning's schedule does at its end).
    run.phase_lrs = [group["lr"] for group in run.optimizer.param_groups]
    # Only checkpoints with the final mask are eligible; the tolerance no longer matters.
    run.best = BestCheckpoint([p for p in inner.parameters() if p.requires_grad], run.best.metric,
                              run.gate_config.target_sparsity, float("inf"))


def _train_step(run: _Run, batch, step: int) -> float:
    """One optimiser step on task loss (+ the sparsity term until the mask is frozen); returns the task loss."""
    loss_task = task_loss(run.wrapped, batch, run.task, run.args, run.teacher)
    loss = loss_task
    if not run.frozen:
        term, run.term = run.sparsity.term(step)
        loss = loss + term
    run.accelerator.backward(loss)
    if run.args.max_grad_norm is not None:
        run.accelerator.clip_grad_norm_(run.wrapped.parameters(), run.args.max_grad_norm)
    if run.frozen:
        left = (run.total - step) / max(run.total - run.freeze_at, 1)
        for group, lr0 in zip(run.optimizer.param_groups, run.phase_lrs):
            group["lr"] = lr0 * left
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if not run.frozen:
        run.sparsity.after_step()
    return float(loss_task.detach())


def _eval_record(run: _Run, step: int) -> None:
    inner = run.inner
    record = {"step": step, "train_loss": sum(run.window) / max(len(run.window), 1),
              "sparsity_measured": run.sparsity.measured(), "expected_sparsity": expected_sparsity(inner),
              "closed_gate_fraction": closed_gate_fraction(inner), "mask_frozen": run.frozen}
    if run.sparsity.controller is not None:
        record["controller"] = run.sparsity.controller.state()
    run.window = []
    if run.dev_loader is not None:
        metrics = evaluate(run.wrapped, run.dev_loader, run.task, run.accelerator, run.args, run.dev_teacher)
        record["dev"] = metrics
        run.best.update(step, metrics, record["sparsity_measured"])
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    else:
        shown = "no dev data"
    run.history.append(record)
    unit = "block params removed" if run.sparsity.unit == "params" else "expected gate sparsity"
    log.info("step %d: train loss %.4f, %s, %s %.3f, gates closed %.1f%%%s", step, record["train_loss"], shown,
             unit, record["sparsity_measured"], 100 * record["closed_gate_fraction"],
             " (mask frozen)" if run.frozen else "")


def _result(run: _Run, chosen, metric, epochs, wall, trainable, base, teacher_seconds) -> TrainResult:
    inner, gate_config, args, history = run.inner, run.gate_config, run.args, run.history
    measured = run.sparsity.measured()
    at_target = chosen is not None and (run.frozen or abs(chosen["expected_sparsity"] - gate_config.target_sparsity)
                                        <= args.sparsity_tolerance + 1e-9)
    if chosen is not None:
        log.info("restored the checkpoint of step %d (%s %.4f, sparsity %.3f%s)", chosen["step"], metric,
                 chosen["metrics"][metric], chosen["expected_sparsity"],
                 "" if at_target else "; no evaluation met the target sparsity")
    costs = run.sparsity.costs
    return TrainResult(
        task=run.task, steps=run.total, epochs=epochs, wall_time_s=wall,
        train_loss=history[-1]["train_loss"] if history else float("nan"),
        train_loss_start=history[0]["train_loss"] if history else float("nan"),
        sparsity_term=run.term,
        dev_metric_name=metric if chosen is not None else None,
        dev_metric=chosen["metrics"][metric] if chosen is not None else None,
        dev_metrics=chosen["metrics"] if chosen is not None else {},
        best_step=chosen["step"] if chosen is not None else run.total,
        best_at_target=bool(at_target),
        target_sparsity=gate_config.target_sparsity,
        expected_sparsity=expected_sparsity(inner),
        closed_gate_fraction=closed_gate_fraction(inner),
        closed_gates=closed_gate_counts(inner),
        trainable_params=trainable, base_params=base, trainable_percent=100.0 * trainable / base,
        sparsity_unit=run.sparsity.unit,
        sparsity_measured=measured,
        block_params_removed_share=costs.hard_share() if costs is not None else None,
        block_params=costs.block_params if costs is not None else None,
        mask_frozen_at=run.freeze_at if run.frozen else None,
        snap=run.snap,
        controller=run.sparsity.controller.state() if run.sparsity.controller is not None else None,
        teacher_seconds=teacher_seconds,
        history=history)


__all__ = ["TrainArgs", "TrainResult", "train", "prepare_model", "param_groups", "evaluate", "distill_kl",
           "DenseTeacher", "ModelTeacher", "BestCheckpoint", "closed_gate_counts", "sparsity_lambda_at",
           "build_loaders", "DEFAULT_EPOCHS", "DEFAULT_WARMUP_FRACTION"]
