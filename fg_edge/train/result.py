"""`TrainResult`: what `fg_edge.train.loop.train` returns and `training.json` records."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional


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
    fsdp: Optional[dict] = None            # --fsdp: processes, units, parameter bytes held per process (train.fsdp)
    history: list = field(default_factory=list)
    warnings: list = field(default_factory=list)   # signs that training learned nothing (learning_warnings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: a train loss that fell by less than this share of its start counts as "did not move"
LOSS_STALL_SHARE = 0.02


def learning_warnings(task: str, train_loss_start: float, train_loss: float, dev_metrics: dict,
                      num_labels: Optional[int] = None) -> list[str]:
    """Plain-language warnings when a run shows that it learned nothing (checked on every run; empty if fine)."""
    out = []
    if task != "classification":   # a decoder distilled from its dense self starts at KL 0 and rises by design
        return out
    if (math.isfinite(train_loss_start) and math.isfinite(train_loss) and train_loss_start > 0
            and train_loss > train_loss_start * (1 - LOSS_STALL_SHARE)):
        out.append(f"the training loss did not fall ({train_loss_start:.4f} at the start, {train_loss:.4f} at the "
                   f"end): try more steps (--steps / --epochs), a higher --lr / --head-lr, or check that the labels "
                   f"match the texts")
    share = dev_metrics.get("majority_prediction_share")
    if share is not None and share >= 1.0 and (num_labels or 2) > 1:
        out.append("every dev row is predicted as the same class: the classifier has not separated the classes; "
                   "try more steps, a dense teacher (--teacher), or check the labels and --label-column")
    return out
