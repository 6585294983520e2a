"""Dense (or LoRA) finetuning of a classifier: the teacher for distillation and the reference a gated model is
compared with.

`finetune(model, tokenizer, train_data, dev_data, args)` trains every parameter (or, with `lora_rank`, PEFT LoRA
adapters on the attention query/value projections plus the head) with AdamW, linear warm-up and decay — the
usual Hugging Face recipe — and keeps the checkpoint with the best dev accuracy. `save_finetuned` writes a plain
Hugging Face sequence-classification folder (LoRA merged into the weights), which `fg-edge train --teacher`
reads and any HF tool loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from fg_edge.errors import ConfigError
from fg_edge.formats.finetune_args import FinetuneArgs

log = logging.getLogger(__name__)

FINETUNE_FILE = "finetune.json"
#: LoRA target modules per model family (PEFT names); the LoRA paper's choice: query and value projections.
LORA_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "distilbert": ["q_lin", "v_lin"]}


@dataclass
class FinetuneResult:
    steps: int
    wall_time_s: float
    dev_accuracy: Optional[float]
    best_step: int
    trainable_params: int
    base_params: int
    history: list

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _add_lora(model: nn.Module, args: FinetuneArgs) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("LoRA finetuning needs PEFT: pip install 'fg-edge[bench]' (or pip install peft)") from None
    model_type = getattr(model.config, "model_type", None)
    targets = LORA_TARGETS.get(model_type)
    if targets is None:
        raise ConfigError(f"no LoRA target modules known for model_type {model_type!r} "
                          f"(known: {', '.join(sorted(LORA_TARGETS))})")
    config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.1, target_modules=targets,
                        task_type="SEQ_CLS")
    return get_peft_model(model, config)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _record(model: nn.Module, dev_loader, args: FinetuneArgs, step: int, losses: list[float], history: list,
            best: Optional[dict]) -> Optional[dict]:
    """Append this evaluation to `history`; return the best checkpoint so far (state kept in memory)."""
    from fg_edge.train.dev_eval import evaluate

    record = {"step": step, "train_loss": sum(losses) / len(losses)}
    if dev_loader is not None:
        record["dev_accuracy"] = evaluate(model, dev_loader, "classification", None, args)["accuracy"]
        if best is None or record["dev_accuracy"] > best["dev_accuracy"]:
            best = {"step": step, "dev_accuracy": record["dev_accuracy"],
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    history.append(record)
    log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step"))
    return best


def finetune(model: nn.Module, tokenizer, train_data, dev_data=None,
             args: Optional[FinetuneArgs] = None) -> tuple[nn.Module, FinetuneResult]:
    """Finetune `model` (see the module docstring); returns (model with the best checkpoint, result).

    With LoRA the returned model has the adapters merged (a plain HF model)."""
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from fg_edge.data.tokenize import set_pad_token_id
    from fg_edge.train.losses import model_inputs
    from fg_edge.train.setup import build_loaders

    args = args or FinetuneArgs()
    torch.manual_seed(args.seed)
    set_pad_token_id(model, tokenizer)
    base_params = sum(p.numel() for p in model.parameters())
    if args.lora_rank:
        model = _add_lora(model, args)
    loader, dev_loader = build_loaders("classification", tokenizer, train_data, dev_data, args)
    total = args.steps or max(1, math.ceil(args.epochs * len(loader)))
    optimizer = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr)
    schedule = get_linear_schedule_with_warmup(optimizer, round(args.warmup_fraction * total), total)
    every = max(1, math.ceil(total / args.evaluations))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("finetuning (%s): %d steps, %d trainable parameters (%.2f%% of %d)",
             f"LoRA r={args.lora_rank}" if args.lora_rank else "dense", total, trainable,
             100 * trainable / base_params, base_params)
    best: Optional[dict] = None
    history, step, start = [], 0, time.perf_counter()
    model.train()
    bar = tqdm(total=total, desc="fg-edge finetune", disable=not args.progress, dynamic_ncols=True)
    losses: list[float] = []
    while step < total:
        for batch in loader:
            loss = model(**model_inputs(batch), labels=batch["labels"]).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % every == 0 or step == total:
                best = _record(model, dev_loader, args, step, losses, history, best)
                losses = []
            if step >= total:
                break
    bar.close()
    wall = time.perf_counter() - start
    if best is not None:
        model.load_state_dict(best["state"])
    if args.lora_rank:
        model = model.merge_and_unload()
    model.eval()
    return model, FinetuneResult(steps=total, wall_time_s=wall, dev_accuracy=best["dev_accuracy"] if best else None,
                                 best_step=best["step"] if best else total, trainable_params=trainable,
                                 base_params=base_params, history=history)


def save_finetuned(model: nn.Module, tokenizer, path: str | Path, metadata: dict, overwrite: bool = False) -> Path:
    """Atomically write a plain HF classifier folder (+ finetune.json)."""
    from fg_edge.formats.atomic import atomic_output_dir

    with atomic_output_dir(path, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / FINETUNE_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


__all__ = ["FinetuneArgs", "FinetuneResult", "finetune", "save_finetuned", "LORA_TARGETS"]
