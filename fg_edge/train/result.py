"""`TrainResult`: what `fg_edge.train.loop.train` returns and `training.json` records."""

from __future__ import annotations

import dataclasses
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
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
