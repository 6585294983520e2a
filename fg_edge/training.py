"""Gate training: `TrainArgs` (the knobs, validated) and `train(...)` (the loop), on Hugging Face Accelerate.

    loss = task loss + λ_t · sparsity_loss          λ_t = λ · min(1, step / sparsity_warmup_steps)

The task loss is cross-entropy for classification and, for causal LMs, either the plain LM loss or — with
``distill`` — KL(teacher ‖ student) on the logits at temperature T (× T², the usual scaling), so a decoder can be
compressed without labels. The default teacher of a causal LM is the dense model itself: with every gate open
the gated model *is* the base model, so its logits come from running the same modules with the gates taken out
(`fg_edge.inject.unwrapped`) and the few trained base tensors (biases, norms) swapped back to their original
values. That is exact and costs one extra no-grad forward per step and no second copy of the weights (a frozen
deep copy would cost the same forward and double the memory).

Only the gate logits, the task head (+ pooler), the biases of the gated linears (GateConfig.train_biases),
optionally the norms (TrainArgs.train_norms) and adapters are trained, with AdamW (no weight decay, constant
learning rates) in three groups: gate logits (`gate_lr`), task head (`head_lr`) and the rest (`lr`).

Checkpoint selection: after every dev evaluation the trainable tensors are kept in memory when the dev metric is
the best so far *among evaluations whose expected sparsity is within `sparsity_tolerance` of the target*
(falling back to the best metric overall when none is); the best one is restored at the end and recorded.
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

from .config import GateConfig
from .errors import ConfigError, DataError
from .inject import (closed_gate_fraction, expected_sparsity, gated_modules, inject_gates, mark_trainable,
                     sparsity_loss, task_head_names, unwrapped)

log = logging.getLogger(__name__)

from .train_args import DEFAULT_EPOCHS, DEFAULT_WARMUP_FRACTION, TrainArgs  # noqa: F401  (re-exported)


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
    """AdamW groups: gate logits (gate_lr), task head (head_lr), everything else trainable (lr)."""
    gate_ids = _gate_param_ids(model)
    head_ids = {id(model.get_parameter(n)) for n in task_head_names(model)}
    groups = {"gates": [], "head": [], "rest": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        key = "gates" if id(p) in gate_ids else "head" if id(p) in head_ids else "rest"
        groups[key].append(p)
    lrs = {"gates": args.gate_lr, "head": args.head_lr or args.lr, "rest": args.lr}
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
    """(train loader, dev loader or None) from ClassificationData / TextData (see fg_edge.data)."""
    from torch.utils.data import DataLoader

    from .data import ClassificationData, TextData, lm_blocks, pad_collate, tokenize_classification

    generator = torch.Generator().manual_seed(args.seed)
    if task == "classification":
        if not isinstance(train_data, ClassificationData):
            raise DataError("classification training needs ClassificationData (fg_edge.data.load_classification)")
        collate = pad_collate(tokenizer)
        train_rows = tokenize_classification(train_data, tokenizer, args.max_length)
        dev_rows = tokenize_classification(dev_data, tokenizer, args.max_length) if dev_data is not None else None
    else:
        if not isinstance(train_data, TextData):
            raise DataError("causal-LM training needs TextData (fg_edge.data.load_texts)")

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
def _make_teacher(model: nn.Module, args: TrainArgs, teacher: Optional[nn.Module], device):
    if teacher is not None:
        return ModelTeacher(teacher.to(device))
    return DenseTeacher(model) if args.distill else None


def train(model: nn.Module, tokenizer, gate_config: GateConfig, train_data, dev_data=None,
          args: Optional[TrainArgs] = None, teacher: Optional[nn.Module] = None) -> TrainResult:
    """Inject gates into `model` (in place) and train them; the best checkpoint is left in `model` (eval mode).

    train_data / dev_data: `fg_edge.data.ClassificationData` (task 'classification') or `TextData`
    ('causal-lm'). `teacher`: optional frozen model whose logits are distilled (otherwise, with args.distill,
    the dense base model for causal LMs).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    args = args or TrainArgs()
    task = gate_config.task
    set_seed(args.seed)
    accelerator = Accelerator()
    train_loader, dev_loader = build_loaders(task, tokenizer, train_data, dev_data, args)
    if task == "classification" and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    prepare_model(model, gate_config, args)
    trainable, base = count_params(model)
    if teacher is None and args.distill and task == "classification":
        raise ConfigError("distillation for classification needs a fine-tuned dense teacher model passed to "
                          "train(teacher=...); the base model's classification head is untrained")
    optimizer = torch.optim.AdamW(param_groups(model, args), weight_decay=0.0)
    prepared = accelerator.prepare(model, optimizer, train_loader, *([dev_loader] if dev_loader else []))
    wrapped, optimizer, train_loader = prepared[:3]
    dev_loader = prepared[3] if dev_loader else None
    inner = accelerator.unwrap_model(wrapped)
    teacher_fn = _make_teacher(inner, args, teacher, accelerator.device)  # after prepare: on the training device
    total, epochs = _total_steps(args, len(train_loader))
    eval_every = args.eval_every or max(1, math.ceil(total / 5))
    warmup = args.warmup_steps(total)
    metric = primary_metric(task, teacher_fn is not None)
    best = BestCheckpoint([p for p in inner.parameters() if p.requires_grad], metric,
                          gate_config.target_sparsity, args.sparsity_tolerance)
    log.info("training %s: %d steps (%.2f epochs, %d batches/epoch), λ ramp over %d steps, %d trainable "
             "parameters (%.3f%% of %d)", task, total, epochs, len(train_loader), warmup, trainable,
             100 * trainable / base, base)

    history: list[dict] = []
    window: list[float] = []
    sp_value = 0.0
    step = 0
    start = time.perf_counter()
    wrapped.train()
    bar = tqdm(total=total, desc="fg-edge train", disable=not (args.progress and accelerator.is_local_main_process),
               dynamic_ncols=True)
    # Route log records through tqdm.write while the bar is shown, so they do not tear it.
    with logging_redirect_tqdm() if not bar.disable else contextlib.nullcontext():
        while step < total:
            for batch in train_loader:
                lam = sparsity_lambda_at(step, gate_config, warmup)
                loss_task, sp_value = _train_step(wrapped, inner, optimizer, accelerator, batch, lam, task,
                                                  gate_config, args, teacher_fn)
                step += 1
                window.append(loss_task)
                bar.update(1)
                bar.set_postfix(loss=f"{window[-1]:.3f}", sp=f"{sp_value:.3f}",
                                sparsity=f"{expected_sparsity(inner):.3f}", refresh=False)
                if step % eval_every == 0 or step == total:
                    history.append(_eval_record(step, window, inner, wrapped, dev_loader, task, accelerator, args,
                                                teacher_fn, best))
                    window = []
                if step >= total:
                    break
    bar.close()
    wall = time.perf_counter() - start
    chosen = best.restore()
    inner.eval()
    return _result(inner, task, gate_config, args, history, chosen, metric, step, step / len(train_loader), wall,
                   sp_value, trainable, base)


def _train_step(wrapped, inner, optimizer, accelerator, batch, lam, task, gate_config, args,
                teacher_fn) -> tuple[float, float]:
    """One optimiser step on task loss + lam · sparsity term; returns (task loss, sparsity term)."""
    loss_task = task_loss(wrapped, batch, task, args, teacher_fn)
    sp = sparsity_loss(inner, gate_config)
    accelerator.backward(loss_task + lam * sp)
    if args.max_grad_norm is not None:
        accelerator.clip_grad_norm_(wrapped.parameters(), args.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss_task.detach()), float(sp.detach())


def _eval_record(step, window, inner, wrapped, dev_loader, task, accelerator, args, teacher_fn, best) -> dict:
    record = {"step": step, "train_loss": sum(window) / max(len(window), 1),
              "expected_sparsity": expected_sparsity(inner), "closed_gate_fraction": closed_gate_fraction(inner)}
    if dev_loader is not None:
        metrics = evaluate(wrapped, dev_loader, task, accelerator, args, teacher_fn)
        record["dev"] = metrics
        best.update(step, metrics, record["expected_sparsity"])
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    else:
        shown = "no dev data"
    log.info("step %d: train loss %.4f, %s, expected sparsity %.3f, gates closed %.1f%%", step,
             record["train_loss"], shown, record["expected_sparsity"], 100 * record["closed_gate_fraction"])
    return record


def _result(inner, task, gate_config, args, history, chosen, metric, steps, epochs, wall, sp_value, trainable,
            base) -> TrainResult:
    at_target = chosen is not None and \
        abs(chosen["expected_sparsity"] - gate_config.target_sparsity) <= args.sparsity_tolerance + 1e-9
    if chosen is not None:
        log.info("restored the checkpoint of step %d (%s %.4f, expected sparsity %.3f%s)", chosen["step"], metric,
                 chosen["metrics"][metric], chosen["expected_sparsity"],
                 "" if at_target else "; no evaluation met the target sparsity")
    return TrainResult(
        task=task, steps=steps, epochs=epochs, wall_time_s=wall,
        train_loss=history[-1]["train_loss"] if history else float("nan"),
        train_loss_start=history[0]["train_loss"] if history else float("nan"),
        sparsity_term=sp_value,
        dev_metric_name=metric if chosen is not None else None,
        dev_metric=chosen["metrics"][metric] if chosen is not None else None,
        dev_metrics=chosen["metrics"] if chosen is not None else {},
        best_step=chosen["step"] if chosen is not None else steps,
        best_at_target=bool(at_target),
        target_sparsity=gate_config.target_sparsity,
        expected_sparsity=expected_sparsity(inner),
        closed_gate_fraction=closed_gate_fraction(inner),
        closed_gates=closed_gate_counts(inner),
        trainable_params=trainable, base_params=base, trainable_percent=100.0 * trainable / base,
        history=history)


__all__ = ["TrainArgs", "TrainResult", "train", "prepare_model", "param_groups", "evaluate", "distill_kl",
           "DenseTeacher", "ModelTeacher", "BestCheckpoint", "closed_gate_counts", "sparsity_lambda_at",
           "build_loaders", "DEFAULT_EPOCHS", "DEFAULT_WARMUP_FRACTION"]
