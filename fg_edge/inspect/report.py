"""What a gated model has learned, as data: `InspectionReport` (per-layer gate statistics, what the compiler
removes) and its JSON form (`to_dict`). Torch-free; the report is built by `fg_edge.inspect.build`, rendered as
text by `fg_edge.inspect.render` and plotted by `fg_edge.inspect.plot`.

    from fg_edge.inspect import format_table, inspect_model, plot_report
    report = inspect_model(fg_edge.load("runs/minilm"), gate_config)
    print(format_table(report))
    json.dump(report.to_dict(), ...)
    plot_report(report, "gates.png")

Three different figures are reported, because they answer different questions (docs/DESIGN.md §6):

* **expected sparsity** — 1 − mean P(open) of a group of gates: what the sparsity term of the loss sees;
* **closed** — gates whose *eval* value is exactly 0: what folding zeroes;
* **removed** — attention heads, kv heads and FFN channels the compiler deletes from the exported graph. These
  come from the compiler's own planner (`fg_edge.compiler.plan_removal`, docs/DESIGN.md §3), so inspect and compile
  always agree; closed heads the planner keeps to even out GQA groups are reported as "zeroed, not removed".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

#: Gate kinds in report order. rows/cols: the paper's row and column gates (any targeted linear); heads: the
#: structured gates on the attention output projection; channels: the structured gates on the FFN output
#: projection; groups: structured gates anywhere else (not produced by fg-edge's own injection).
GATE_KINDS = ("heads", "channels", "rows", "cols", "groups")

REMOVAL_SOURCE = "fg_edge.compiler.plan_removal"


# -- report data ---------------------------------------------------------------------------------------------
@dataclass
class GateStats:
    """Summary of one group of gates (e.g. every head gate of one layer)."""

    count: int = 0
    closed: int = 0
    open_probability_sum: float = 0.0

    def add(self, open_probability: torch.Tensor, eval_values: torch.Tensor) -> None:
        self.count += eval_values.numel()
        self.closed += int((eval_values == 0).sum())
        self.open_probability_sum += float(open_probability.double().sum())

    def merge(self, other: "GateStats") -> None:
        self.count += other.count
        self.closed += other.closed
        self.open_probability_sum += other.open_probability_sum

    @property
    def expected_sparsity(self) -> float:
        """1 − mean P(open)."""
        return 1.0 - self.open_probability_sum / self.count if self.count else 0.0

    @property
    def closed_fraction(self) -> float:
        return self.closed / self.count if self.count else 0.0

    def to_dict(self) -> dict:
        return {"count": self.count, "closed": self.closed, "closed_fraction": self.closed_fraction,
                "expected_sparsity": self.expected_sparsity}


@dataclass
class ModuleReport:
    """One gated linear."""

    name: str                                   # dotted name in the plain HF model
    layer: Optional[int]                        # transformer block index, when known
    role: Optional[str]                         # path inside the block (e.g. 'self_attn.o_proj'), when known
    in_features: int
    out_features: int
    gates: dict[str, GateStats]
    zeroed_weight_fraction: float               # weight entries whose row or column gate is closed
    # eval gate values (for plots; not in to_dict)
    row_values: Optional[list[float]] = field(default=None, repr=False)
    col_values: Optional[list[float]] = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "layer": self.layer, "role": self.role, "in_features": self.in_features,
                "out_features": self.out_features, "zeroed_weight_fraction": self.zeroed_weight_fraction,
                "gates": {k: v.to_dict() for k, v in self.gates.items()}}


@dataclass
class LayerReport:
    """One transformer block of an architecture in the table. Removal lists are None without a plan."""

    index: int
    gates: dict[str, GateStats]
    num_heads: int
    num_kv_heads: int
    ffn_channels: int
    heads_removed: Optional[list[int]] = None
    heads_zeroed: Optional[list[int]] = None    # closed, but kept (zeroed) so GQA groups stay even
    kv_heads_removed: Optional[list[int]] = None
    ffn_removed: Optional[list[int]] = None
    head_values: Optional[list[float]] = None   # eval value of each head gate (structured granularity)
    channel_values: Optional[list[float]] = field(default=None, repr=False)

    def to_dict(self) -> dict:
        n = lambda xs: None if xs is None else len(xs)  # noqa: E731
        return {
            "index": self.index,
            "gates": {k: v.to_dict() for k, v in self.gates.items()},
            "heads": {"total": self.num_heads, "removed": self.heads_removed, "removed_count": n(self.heads_removed),
                      "zeroed_not_removed": self.heads_zeroed, "gate_values": self.head_values},
            "kv_heads": {"total": self.num_kv_heads, "removed": self.kv_heads_removed,
                         "removed_count": n(self.kv_heads_removed)},
            "ffn_channels": {"total": self.ffn_channels, "removed": self.ffn_removed,
                             "removed_count": n(self.ffn_removed)},
        }


@dataclass
class InspectionReport:
    model_type: Optional[str]
    task: str
    granularity: str
    target_sparsity: float
    scale_gates: bool
    adapter_rank: int
    train_biases: bool
    target_modules: Optional[list[str]]
    expected_sparsity: float                    # as the sparsity term counts it (mean over gated layers)
    closed_fraction: float                      # closed gates / all gates
    gates_total: int
    gates_closed: int
    zeroed_weight_fraction: float               # of the weight entries of gated linears
    trainable_params: int
    base_params: int                            # parameters of the model without gate logits and adapters
    total_params: int                           # everything, gates and adapters included
    trainable_parts: list[str]
    layers: list[LayerReport]                   # empty when the architecture is outside the table
    modules: list[ModuleReport]
    head_dim: Optional[int] = None
    plan: Optional[dict] = None                 # the compiler's removal plan (CompilePlan.to_dict())
    plan_error: Optional[str] = None            # why there is no plan, when the planner refused
    training: dict = field(default_factory=dict)
    source: Optional[str] = None                # the model_dir, when loaded from one
    architecture: Optional[str] = None          # the spec used (ArchSpec.describe: table entry or derived)
    architecture_error: Optional[str] = None    # why no spec fits (compile then folds, removing nothing)

    # -- derived -------------------------------------------------------------------------------------------
    @property
    def per_layer(self) -> bool:
        return bool(self.layers)

    @property
    def has_plan(self) -> bool:
        return self.plan is not None

    @property
    def gqa(self) -> bool:
        return any(layer.num_kv_heads != layer.num_heads for layer in self.layers)

    @property
    def trainable_fraction(self) -> float:
        """trainable / base-model parameters (the figure `fg-edge train` records)."""
        return self.trainable_params / self.base_params if self.base_params else 0.0

    def _sum(self, attr: str) -> int:
        return sum(len(getattr(layer, attr) or ()) for layer in self.layers)

    heads_total = property(lambda self: sum(layer.num_heads for layer in self.layers))
    kv_heads_total = property(lambda self: sum(layer.num_kv_heads for layer in self.layers))
    channels_total = property(lambda self: sum(layer.ffn_channels for layer in self.layers))
    heads_removed = property(lambda self: self._sum("heads_removed"))
    heads_zeroed = property(lambda self: self._sum("heads_zeroed"))
    kv_heads_removed = property(lambda self: self._sum("kv_heads_removed"))
    channels_removed = property(lambda self: self._sum("ffn_removed"))

    def kinds_present(self) -> list[str]:
        present = {k for m in self.modules for k, s in m.gates.items() if s.count}
        return [k for k in GATE_KINDS if k in present]

    def totals_by_kind(self) -> dict[str, GateStats]:
        out: dict[str, GateStats] = {}
        for m in self.modules:
            for kind, stats in m.gates.items():
                out.setdefault(kind, GateStats()).merge(stats)
        return {k: out[k] for k in GATE_KINDS if k in out}

    # -- output --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {
            "model_type": self.model_type, "task": self.task, "source": self.source,
            "gate_config": {"granularity": self.granularity, "target_sparsity": self.target_sparsity,
                            "scale_gates": self.scale_gates, "adapter_rank": self.adapter_rank,
                            "train_biases": self.train_biases, "target_modules": self.target_modules},
            "expected_sparsity": self.expected_sparsity,
            "closed_fraction": self.closed_fraction,
            "gates_total": self.gates_total, "gates_closed": self.gates_closed,
            "zeroed_weight_fraction": self.zeroed_weight_fraction,
            "gates_by_kind": {k: v.to_dict() for k, v in self.totals_by_kind().items()},
            "trainable_params": self.trainable_params, "base_params": self.base_params,
            "total_params": self.total_params,
            "trainable_fraction": self.trainable_fraction, "trainable_parts": self.trainable_parts,
            "per_layer": self.per_layer,
            "head_dim": self.head_dim,
            "layers": [layer.to_dict() for layer in self.layers],
            "modules": [m.to_dict() for m in self.modules],
            "removal_source": REMOVAL_SOURCE if self.has_plan else None,
            "plan": self.plan,
            "plan_error": self.plan_error,
            "architecture": self.architecture, "architecture_error": self.architecture_error,
            "training": self.training,
        }
        if self.per_layer:
            removed = lambda value: value if self.has_plan else None  # noqa: E731
            data["heads"] = {"total": self.heads_total, "removed": removed(self.heads_removed),
                             "zeroed_not_removed": removed(self.heads_zeroed)}
            data["kv_heads"] = {"total": self.kv_heads_total, "removed": removed(self.kv_heads_removed)}
            data["ffn_channels"] = {"total": self.channels_total, "removed": removed(self.channels_removed)}
        return data
