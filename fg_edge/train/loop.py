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
with ``distill``, KL(teacher ‖ student) on the logits, so a decoder can be compressed without labels
(``distill_alpha`` < 1 mixes in the LM loss on the training text: (1 − α)·LM + α·KL). The
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

Several processes train data-parallel (fg_edge.train.distributed); with `TrainArgs.fsdp` the frozen base weights
are sharded over them (fg_edge.train.fsdp) and the loop is otherwise the same.
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
from torch import nn

from fg_edge.data.tokenize import set_pad_token_id
from fg_edge.errors import ConfigError
from fg_edge.formats.gate_config import GateConfig
from fg_edge.formats.train_args import TrainArgs
from fg_edge.gates.inject import gated_modules
from fg_edge.gates.stats import closed_gate_counts, closed_gate_fraction, count_params, expected_sparsity
from fg_edge.train.checkpoint import BestCheckpoint
from fg_edge.train.dev_eval import evaluate, primary_metric
from fg_edge.train.losses import DenseTeacher, task_loss
from fg_edge.train.result import TrainResult, learning_warnings
from fg_edge.train.distributed import (check_batch_size, check_same_on_every_rank, eval_batch_for, make_accelerator,
                                       quiet_other_ranks)
from fg_edge.train.fsdp import check_fsdp, shard_frozen_base, sync_replicated_grads
from fg_edge.train.setup import build_loaders, make_teacher, param_groups, prepare_model, total_steps
from fg_edge.train.sparsity import SparsityTerm, snap_to_target_

log = logging.getLogger(__name__)



# -- the loop ------------------------------------------------------------------------------------------------


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
    sparsity: SparsityTerm
    total: int
    freeze_at: Optional[int]                 # step at which the mask is frozen (None: never)
    eval_steps: set
    best: BestCheckpoint
    replicated: Optional[list] = None        # --fsdp: the trainable parameters whose gradients are all-reduced here
    fsdp: Optional[dict] = None              # --fsdp: what fg_edge.train.fsdp.shard_frozen_base did
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
    from accelerate.utils import set_seed

    args = args or TrainArgs()
    task = gate_config.task
    set_seed(args.seed)
    accelerator = _accelerator(args)
    loader_args = dataclasses.replace(args, eval_batch_size=eval_batch_for(args.eval_batch_size,
                                                                            accelerator.num_processes))
    train_loader, dev_loader = build_loaders(task, tokenizer, train_data, dev_data, loader_args)
    if task == "classification":
        set_pad_token_id(model, tokenizer)
    prepare_model(model, gate_config, args)
    trainable, base = count_params(model)
    if teacher is None and args.distill and task == "classification":
        raise ConfigError("distillation for classification needs a fine-tuned dense teacher model passed to "
                          "train(teacher=...) (CLI: --teacher DIR); the base model's classification head is "
                          "untrained")
    teacher_fn, dev_teacher = make_teacher(model, args, teacher, accelerator.device, task, train_loader,
                                            dev_loader)
    teacher_seconds = sum(getattr(t, "seconds", 0.0) for t in {id(t): t for t in (teacher_fn, dev_teacher)}.values())
    wrapped, inner, optimizer, train_loader, dev_loader, fsdp = _prepare(accelerator, model, args, train_loader,
                                                                         dev_loader)
    if isinstance(teacher_fn, DenseTeacher):
        teacher_fn = dev_teacher = DenseTeacher(inner)  # after prepare: the originals on the training device
    total, epochs = total_steps(args, len(train_loader))
    final = args.final_steps(total)
    freeze_at = total - final if final else None
    metric = primary_metric(task, teacher_fn is not None)
    run = _Run(wrapped=wrapped, inner=inner, optimizer=optimizer, accelerator=accelerator, task=task,
               gate_config=gate_config, args=args, teacher=teacher_fn, dev_teacher=dev_teacher, dev_loader=dev_loader,
               sparsity=SparsityTerm(inner, gate_config, args, freeze_at or total), total=total, freeze_at=freeze_at,
               eval_steps=_eval_schedule(total, freeze_at, args.eval_every),
               best=BestCheckpoint([p for p in inner.parameters() if p.requires_grad], metric,
                                   gate_config.target_sparsity, args.sparsity_tolerance),
               replicated=[p for p in model.parameters() if p.requires_grad] if fsdp else None, fsdp=fsdp)
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
    check_same_on_every_rank(accelerator, inner, chosen["step"] if chosen is not None else None)
    return _result(run, chosen, metric, total / len(train_loader), wall, trainable, base, teacher_seconds)


def _accelerator(args: TrainArgs):
    """The run's Accelerator, once the checks that need the process count have passed."""
    accelerator = make_accelerator(args.mixed_precision)
    quiet_other_ranks(accelerator)
    check_batch_size(args.batch_size, accelerator.num_processes)
    if args.fsdp:
        check_fsdp(accelerator.num_processes, args.train_base)
    return accelerator


def _prepare(accelerator, model: nn.Module, args: TrainArgs, train_loader, dev_loader):
    """(model to call, the model itself, optimiser, loaders, fsdp record or None) after accelerator.prepare.
    Without --fsdp the model is DDP-wrapped by prepare; with it, FSDP shards its frozen base first
    (fg_edge.train.fsdp) and it is not passed to prepare, which would wrap it in DDP."""
    fsdp = shard_frozen_base(model, accelerator) if args.fsdp else None
    optimizer = torch.optim.AdamW(param_groups(model, args), weight_decay=0.0)
    loaders = [train_loader] + ([dev_loader] if dev_loader is not None else [])
    if fsdp is not None:
        optimizer, *loaders = accelerator.prepare(optimizer, *loaders)
        wrapped = inner = model
    else:
        wrapped, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
        inner = accelerator.unwrap_model(wrapped)
    return wrapped, inner, optimizer, loaders[0], loaders[1] if dev_loader is not None else None, fsdp


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
    if run.replicated is not None:
        sync_replicated_grads(run.replicated, run.accelerator.num_processes)
    if run.args.max_grad_norm is not None:
        # --fsdp: the replicated parameters are the ones with gradients (the sharded ones are frozen)
        params = run.replicated if run.replicated is not None else run.wrapped.parameters()
        run.accelerator.clip_grad_norm_(params, run.args.max_grad_norm)
    if run.frozen:
        left = (run.total - step) / max(run.total - run.freeze_at, 1)
        for group, lr0 in zip(run.optimizer.param_groups, run.phase_lrs):
            group["lr"] = lr0 * left
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if not run.frozen:
        run.sparsity.after_step()
    loss_task = loss_task.detach()
    if run.accelerator.num_processes > 1:   # the loss of the global batch, not of this process's share
        loss_task = run.accelerator.reduce(loss_task, reduction="mean")
    return float(loss_task)


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
    train_loss = history[-1]["train_loss"] if history else float("nan")
    train_loss_start = history[0]["train_loss"] if history else float("nan")
    warnings = learning_warnings(run.task, train_loss_start, train_loss, chosen["metrics"] if chosen else {},
                                 getattr(inner.config, "num_labels", None))
    for text in warnings:
        log.warning("training may have learned nothing: %s", text)
    return TrainResult(
        task=run.task, steps=run.total, epochs=epochs, wall_time_s=wall,
        train_loss=train_loss, train_loss_start=train_loss_start, warnings=warnings,
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
        fsdp=run.fsdp,
        history=history)


__all__ = ["train", "TrainArgs", "TrainResult"]
