"""Setting a run up: gates injected and the trainable parts marked, optimiser groups, data loaders, teachers."""

from __future__ import annotations

import logging
import math
from typing import Callable, Optional

import torch
from torch import nn

from fg_edge.errors import ConfigError, DataError
from fg_edge.formats.gate_config import GateConfig
from fg_edge.formats.train_args import DEFAULT_EPOCHS, TrainArgs
from fg_edge.gates.inject import inject_gates, task_head_names
from fg_edge.gates.stats import adapter_param_ids, gate_param_ids, mark_trainable_, numel
from fg_edge.train.losses import DenseTeacher, ModelTeacher
from fg_edge.train.teacher import CachedTeacher

log = logging.getLogger(__name__)


def prepare_model(model: nn.Module, gate_config: GateConfig, args: TrainArgs) -> int:
    """Inject gates and set requires_grad (gates, head, gated biases, adapters, + norms, + block weights).
    Returns #trainable."""
    inject_gates(model, gate_config)
    return numel(mark_trainable_(model, gate_config, train_head=True, train_norms=args.train_norms,
                                 train_base=args.train_base))


def param_groups(model: nn.Module, args: TrainArgs) -> list[dict]:
    """AdamW groups: gate logits (gate_lr), task head (head_lr), block weight matrices (base_lr, with
    train_base), everything else trainable — adapters, biases, norms — (lr)."""
    gate_ids = gate_param_ids(model)
    head_ids = {id(model.get_parameter(n)) for n in task_head_names(model)}
    adapter_ids = adapter_param_ids(model)
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


def build_loaders(task: str, tokenizer, train_data, dev_data, args: TrainArgs):
    """(train loader, dev loader or None) from ClassificationData / TextData (see fg_edge.data.readers).
    `args`: TrainArgs or FinetuneArgs (seed, max_length, batch_size, eval_batch_size)."""
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


def total_steps(args: TrainArgs, batches_per_epoch: int) -> tuple[int, float]:
    if args.steps is not None:
        return args.steps, args.steps / batches_per_epoch
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS
    return max(1, math.ceil(epochs * batches_per_epoch)), epochs


def make_teacher(model: nn.Module, args: TrainArgs, teacher: Optional[nn.Module], device, task: str,
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


def fit_max_length(model: nn.Module, max_length: int, explicit: bool, source: str) -> int:
    """The --max-length to train with: refused above the model's position limit when the user gave it, lowered to
    the limit (with a note) when it is the default. `source` names the model in the message."""
    from fg_edge.formats.positions import position_limit

    limit = position_limit(model.config.to_dict())
    if limit is None or max_length <= limit:
        return max_length
    if explicit:
        raise ConfigError(f"--max-length {max_length} is more than {source}'s position limit of {limit} tokens "
                          f"(config.json); use --max-length {limit} or less")
    log.info("--max-length lowered from the default %d to %s's position limit of %d tokens", max_length, source,
             limit)
    return limit
