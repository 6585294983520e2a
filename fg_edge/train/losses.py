"""Task losses and teachers: cross-entropy / LM loss, distillation KL, and the two teacher kinds.

`DenseTeacher` gets the dense base model's logits from the gated model itself (gates taken out, the few trained
base tensors swapped back: exact, no second copy of the weights); `ModelTeacher` runs a separate frozen model.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fg_edge.formats.train_args import TrainArgs
from fg_edge.gates.inject import unwrapped
from fg_edge.gates.stats import adapter_param_ids, gate_param_ids


class DenseTeacher:
    """Logits of the dense base model computed by the gated model itself (see the module docstring).

    Build it after gates are injected and trainable tensors marked, before the first optimiser step, and on the
    device the model trains on (the original values of the trained base tensors are copied then)."""

    def __init__(self, model: nn.Module):
        self.model = model
        gate_and_adapter = gate_param_ids(model) | adapter_param_ids(model)
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
                return model(**model_inputs(batch)).logits
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
        return self.teacher(**model_inputs(batch)).logits


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


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def task_loss(model: nn.Module, batch: dict, task: str, args: TrainArgs,
              teacher: Optional[Callable]) -> torch.Tensor:
    """Forward the student and return its task loss (CE / LM loss / distillation, see the module docstring)."""
    if teacher is None:
        labels = batch["labels"] if task == "classification" else batch["input_ids"]
        return model(**model_inputs(batch), labels=labels).loss
    teacher_logits = teacher(batch)  # before the student forward: the dense teacher swaps tensors
    logits = model(**model_inputs(batch)).logits
    alpha = args.resolved_alpha(task)
    if task == "classification":
        ce = F.cross_entropy(logits, batch["labels"])
        kl = distill_kl(logits, teacher_logits, args.temperature)
        return (1 - alpha) * ce + alpha * kl
    kl = distill_kl(logits, teacher_logits, args.temperature, batch.get("attention_mask"))
    if alpha == 1.0:
        return kl
    return (1 - alpha) * lm_loss(logits, batch["input_ids"], batch.get("attention_mask")) + alpha * kl


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Next-token cross-entropy of (B, T, V) logits on their own input ids, padding (mask 0) not counted."""
    targets = input_ids[:, 1:]
    if mask is not None:
        targets = targets.masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100)
