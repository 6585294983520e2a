"""Dev-set evaluation during training: accuracy / perplexity / distillation KL, and which is the primary metric."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fg_edge.formats.train_args import TrainArgs
from fg_edge.train.losses import distill_kl, model_inputs


#: metric name → True when higher is better
METRIC_HIGHER_IS_BETTER = {"accuracy": True, "perplexity": False, "distill_kl": False}


def primary_metric(task: str, distilling: bool) -> str:
    if task == "classification":
        return "accuracy"
    return "distill_kl" if distilling else "perplexity"


@torch.no_grad()
def evaluate(model: nn.Module, loader, task: str, accelerator, args: TrainArgs,
             teacher: Optional[Callable] = None) -> dict[str, float]:
    """Dev figures with eval gates: accuracy + loss (classification); perplexity (+ distill_kl) for causal LM.
    `accelerator` gathers the figures of every process (None: one process)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    predicted: Optional[torch.Tensor] = None    # classification: dev rows predicted per class
    try:
        for batch in loader:
            inputs = model_inputs(batch)
            teacher_logits = teacher(batch) if teacher is not None else None
            logits = model(**inputs).logits
            if task == "classification":
                loss = F.cross_entropy(logits.float(), batch["labels"], reduction="none")
                correct = (logits.argmax(-1) == batch["labels"]).float()
                parts = {"loss": loss, "correct": correct, "count": torch.ones_like(loss),
                         "pred": logits.argmax(-1)}
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
            gathered = accelerator.gather_for_metrics(parts) if accelerator is not None else parts
            if "pred" in gathered:
                counts = torch.bincount(gathered.pop("pred").flatten().cpu(), minlength=logits.shape[-1])
                predicted = counts if predicted is None else predicted + counts
            for k, v in gathered.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
    finally:
        model.train(was_training)
    if task == "classification":
        out = {"accuracy": sums["correct"] / sums["count"], "loss": sums["loss"] / sums["count"],
               # share of dev rows given the most frequent predicted class (1.0: one class for every row)
               "majority_prediction_share": float(predicted.max()) / sums["count"]}
        if "distill_kl" in sums:
            out["distill_kl"] = sums["distill_kl"] / sums["count"]
        return out
    out = {"loss": sums["nll"] / max(sums["tokens"], 1.0)}
    out["perplexity"] = math.exp(min(out["loss"], 50.0))
    if "kl" in sums:
        out["distill_kl"] = sums["kl"] / max(sums["kl_tokens"], 1.0)
    return out
