"""Checkpoint selection in memory: keep the trainable tensors of the best dev evaluation, restore it at the end."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from fg_edge.train.dev_eval import METRIC_HIGHER_IS_BETTER


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
