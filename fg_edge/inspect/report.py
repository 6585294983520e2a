"""What a gated model has learned: per-layer gate sparsity, closed gates, and what the compiler will remove.

    report = inspect_model(fg_edge.load("runs/minilm"))
    print(report.format_table())
    json.dump(report.to_dict(), ...)
    plot_report(report, "gates.png")      # fg_edge.inspect.plot

Three different figures are reported, because they answer different questions (docs/DESIGN.md §6):

* **expected sparsity** — 1 − mean P(open) of a group of gates: what the sparsity term of the loss sees;
* **closed** — gates whose *eval* value is exactly 0: what folding zeroes;
* **removed** — attention heads, kv heads and FFN channels the compiler deletes from the exported graph. These
  come from the compiler's own planner (`fg_edge.compiler.plan_removal`, docs/DESIGN.md §3), so inspect and compile
  always agree; closed heads the planner keeps to even out GQA groups are reported as "zeroed, not removed".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from fg_edge.arch import ARCHITECTURES, ArchSpec, head_layout, layers_of, layers_prefix
from fg_edge.formats.gate_config import GateConfig
from fg_edge.errors import ConfigError, FgEdgeError
from fg_edge.gates.inject import gated_modules, task_head_names
from fg_edge.gates.stats import closed_gate_fraction, expected_sparsity
from fg_edge.gates.layer import GatedLinear, in_out_features

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
            "training": self.training,
        }
        if self.per_layer:
            removed = lambda value: value if self.has_plan else None  # noqa: E731
            data["heads"] = {"total": self.heads_total, "removed": removed(self.heads_removed),
                             "zeroed_not_removed": removed(self.heads_zeroed)}
            data["kv_heads"] = {"total": self.kv_heads_total, "removed": removed(self.kv_heads_removed)}
            data["ffn_channels"] = {"total": self.channels_total, "removed": removed(self.channels_removed)}
        return data

    def format_table(self, modules: bool = False) -> str:
        """Human-readable report: a header, one row per layer (or per gated module outside the table), the plan."""
        lines = self._header_lines()
        lines.append("")
        if self.per_layer:
            lines += _render_table(*self._layer_rows())
            plan = self._plan_lines()
            if plan:
                lines.append("")
                lines += plan
            others = [m for m in self.modules if m.layer is None]
            if others and not modules:
                lines.append("")
                lines.append(f"also gated outside the transformer blocks: {', '.join(m.name for m in others)}")
        if modules or not self.per_layer:
            if self.per_layer:
                lines.append("")
            else:
                lines.append(f"{self.model_type!r} is not in fg-edge's architecture table: per-module listing "
                             f"(no head / FFN-channel removal analysis)")
            lines += _render_table(*self._module_rows())
        return "\n".join(lines)

    def _header_lines(self) -> list[str]:
        rows = []
        if self.source:
            rows.append(("model_dir", self.source))
        model = f"{self.model_type} ({self.task})"
        if self.per_layer:
            first = self.layers[0]
            kv = f", {first.num_kv_heads} kv heads" if self.gqa else ""
            model += (f", {len(self.layers)} layers, {first.num_heads} heads{kv}, head dim {self.head_dim}, "
                      f"FFN {first.ffn_channels}")
        rows.append(("model", model))
        gates = f"{self.granularity} granularity, target sparsity {self.target_sparsity:g}"
        if self.scale_gates:
            gates += ", with row/col scale gates"
        if self.adapter_rank:
            gates += f", adapter rank {self.adapter_rank}"
        if self.target_modules:
            gates += f", target modules {','.join(self.target_modules)}"
        gates += f"; {len(self.modules)} gated linears, {self.gates_total:,} gates"
        rows.append(("gates", gates))
        rows.append(("sparsity", f"expected {_pct(self.expected_sparsity)} (1 - mean P(open), per gated layer), "
                                 f"closed {self.gates_closed:,}/{self.gates_total:,} gates "
                                 f"({_pct(self.closed_fraction)}), gated weight entries zeroed "
                                 f"{_pct(self.zeroed_weight_fraction)}"))
        if self.per_layer and self.has_plan:
            text = f"{self.heads_removed:,}/{self.heads_total:,} attention heads"
            if self.heads_zeroed:
                text += f" (+{self.heads_zeroed:,} closed but kept zeroed for even GQA groups)"
            if self.gqa:
                text += f", {self.kv_heads_removed:,}/{self.kv_heads_total:,} kv heads"
            text += f", {self.channels_removed:,}/{self.channels_total:,} FFN channels ({REMOVAL_SOURCE})"
            rows.append(("compiler removes", text))
        elif self.per_layer:
            rows.append(("compiler removes", f"unknown: the removal planner refused ({self.plan_error})"))
        rows.append(("trainable", f"{self.trainable_params:,} parameters ({_pct(self.trainable_fraction, 3)} of the "
                                  f"base model's {self.base_params:,}): {', '.join(self.trainable_parts)}"))
        if self.training:
            rows.append(("training", _format_training(self.training)))
        width = max(len(k) for k, _ in rows)
        return [f"{k.ljust(width)}  {v}" for k, v in rows]

    def _layer_rows(self) -> tuple[list[str], list[list[str]]]:
        kinds = [k for k in self.kinds_present() if any(k in layer.gates for layer in self.layers)]
        header = ["layer"]
        for kind in kinds:
            header += [f"{kind} E[sp]", f"{kind} closed"]
        show_zeroed = self.heads_zeroed > 0
        if self.has_plan:
            header += (["heads removed"] + (["heads zeroed"] if show_zeroed else [])
                       + (["kv heads removed"] if self.gqa else []) + ["FFN ch removed"])
        body = []
        for layer in self.layers:
            row = [str(layer.index)]
            for kind in kinds:
                s = layer.gates.get(kind)
                row += ["-", "-"] if s is None else [f"{s.expected_sparsity:.3f}", _count(s.closed, s.count)]
            if self.has_plan:
                row.append(_short_list(layer.heads_removed, layer.num_heads))
                if show_zeroed:
                    row.append(_short_list(layer.heads_zeroed, layer.num_heads))
                if self.gqa:
                    row.append(_short_list(layer.kv_heads_removed, layer.num_kv_heads))
                row.append(_count(len(layer.ffn_removed), layer.ffn_channels))
            body.append(row)
        return header, body

    def _module_rows(self) -> tuple[list[str], list[list[str]]]:
        kinds = self.kinds_present()
        header = ["module"]
        for kind in kinds:
            header += [f"{kind} E[sp]", f"{kind} closed"]
        header.append("weights zeroed")
        body = []
        for m in self.modules:
            row = [m.name]
            for kind in kinds:
                s = m.gates.get(kind)
                row += ["-", "-"] if s is None else [f"{s.expected_sparsity:.3f}", _count(s.closed, s.count)]
            row.append(_pct(m.zeroed_weight_fraction))
            body.append(row)
        return header, body

    def _plan_lines(self) -> list[str]:
        """The compiler's plan, layer by layer (indices as ranges; only layers that lose something)."""
        if not self.has_plan:
            return []
        lines = []
        for layer in self.layers:
            parts = []
            if layer.heads_removed:
                parts.append(f"{_plural(layer.heads_removed, 'head')} {_ranges(layer.heads_removed)}")
            if self.gqa and layer.kv_heads_removed:
                parts.append(f"kv {_plural(layer.kv_heads_removed, 'head')} {_ranges(layer.kv_heads_removed)}")
            if layer.ffn_removed:
                parts.append(f"{len(layer.ffn_removed)} FFN channels ({_ranges(layer.ffn_removed, limit=8)})")
            if layer.heads_zeroed:
                parts.append(f"{_plural(layer.heads_zeroed, 'head')} {_ranges(layer.heads_zeroed)} closed but kept "
                             f"(zeroed: the kv groups must keep equal query-head counts)")
            if parts:
                lines.append(f"  layer {layer.index}: " + "; ".join(parts))
        title = f"compile plan ({REMOVAL_SOURCE}):"
        return [title] + (lines or ["  nothing to remove"])


# -- building the report -------------------------------------------------------------------------------------
@torch.no_grad()
def inspect_model(model: nn.Module, gate_config: Optional[GateConfig] = None, metadata: Optional[dict] = None,
                  source: Optional[str] = None) -> InspectionReport:
    """Summarise the gates of a gated model (from `fg_edge.load` or `inject_gates`). Does not modify it.

    `gate_config` defaults to the config `fg_edge.load` attaches to the model; `metadata` is the training.json
    of a model_dir (see `read_training_metadata`), summarised into `report.training`.
    """
    gate_config = gate_config if gate_config is not None else getattr(model, "fg_edge_config", None)
    if gate_config is None:
        raise ConfigError("inspect_model needs the gate config: pass gate_config=..., or load the model with "
                          "fg_edge.load(model_dir)")
    gated = gated_modules(model)
    if not gated:
        raise ConfigError("this model carries no fg-edge gates (inject_gates or fg_edge.load first)")
    model_type = getattr(model.config, "model_type", None) or gate_config.model_type
    spec = ARCHITECTURES.get(model_type)

    layer_of: dict[str, tuple[int, str]] = {}
    layers: list[LayerReport] = []
    head_dim = plan = plan_error = None
    if spec is not None:
        prefix = layers_prefix(model, spec)
        pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.+)$")
        for name in gated:
            match = pattern.match(name)
            if match:
                layer_of[name] = (int(match.group(1)), match.group(2))
        layout = head_layout(model.config, spec)
        head_dim = layout.head_dim
        layers = [_layer_report(i, block, spec, layout) for i, block in enumerate(layers_of(model, spec))]
        plan, plan_error = _apply_plan(model, spec, layers)

    modules = [_module_report(name, g, *layer_of.get(name, (None, None)), spec) for name, g in gated.items()]
    total_entries = sum(m.in_features * m.out_features for m in modules)
    zeroed = sum(m.zeroed_weight_fraction * m.in_features * m.out_features for m in modules)
    args = metadata.get("args") if isinstance(metadata, dict) else None        # training.json: TrainArgs
    train_norms = isinstance(args, dict) and bool(args.get("train_norms"))
    trainable, parts = count_trainable(model, gate_config, train_norms=train_norms)
    return InspectionReport(
        model_type=model_type, task=gate_config.task, granularity=gate_config.granularity,
        target_sparsity=gate_config.target_sparsity, scale_gates=gate_config.scale_gates,
        adapter_rank=gate_config.adapter_rank, train_biases=gate_config.train_biases,
        target_modules=gate_config.target_modules,
        expected_sparsity=expected_sparsity(model), closed_fraction=closed_gate_fraction(model),
        gates_total=sum(s.count for m in modules for s in m.gates.values()),
        gates_closed=sum(s.closed for m in modules for s in m.gates.values()),
        zeroed_weight_fraction=zeroed / total_entries if total_entries else 0.0,
        trainable_params=trainable, base_params=_base_params(model),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_parts=parts, layers=layers, modules=modules, head_dim=head_dim, plan=plan,
        plan_error=plan_error, training=summarize_training(metadata or {}), source=source,
    )


def _apply_plan(model: nn.Module, spec: ArchSpec, layers: list[LayerReport]) -> tuple[Optional[dict], Optional[str]]:
    """Fill the removal fields of `layers` from the compiler's planner; (plan dict, None) or (None, why not)."""
    from fg_edge.compiler.plan import plan_removal

    try:
        plan = plan_removal(model, spec)
    except FgEdgeError as exc:
        return None, str(exc)
    for layer, lp in zip(layers, plan.layers):
        layer.heads_removed = list(lp.heads_removed)
        layer.heads_zeroed = list(lp.heads_zeroed)
        layer.kv_heads_removed = list(lp.kv_heads_removed)
        layer.ffn_removed = list(lp.ffn_removed)
    return plan.to_dict(), None


def count_trainable(model: nn.Module, gate_config: GateConfig, train_head: bool = True,
                    train_norms: bool = False) -> tuple[int, list[str]]:
    """What `fg_edge.gates.inject.mark_trainable` would train (+ the norms when training used --train-norms), counted
    without touching `requires_grad`. Returns (count, names of the parts)."""
    params: dict[int, nn.Parameter] = {}
    parts: list[str] = []

    def add(part: str, tensors) -> None:
        n_before = len(params)
        for p in tensors:
            params[id(p)] = p
        if len(params) > n_before and part not in parts:
            parts.append(part)

    for g in gated_modules(model).values():
        add("gates", [gate.logits for gate in g.gates()])
        if g.lora_A is not None:
            add("adapters", [g.lora_A, g.lora_B])
        if gate_config.train_biases and g.base_layer.bias is not None:
            add("gated biases", [g.base_layer.bias])
    if train_head and gate_config.task == "classification":
        add("task head", [model.get_parameter(n) for n in task_head_names(model)])
    if train_norms:
        add("norms", [p for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)])
    return sum(p.numel() for p in params.values()), parts


def _base_params(model: nn.Module) -> int:
    """Parameters without fg-edge's gate logits and adapters."""
    extra = set()
    for g in gated_modules(model).values():
        extra |= {id(gate.logits) for gate in g.gates()}
        if g.lora_A is not None:
            extra |= {id(g.lora_A), id(g.lora_B)}
    return sum(p.numel() for p in model.parameters() if id(p) not in extra)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def _gate_kind_for_group(role: Optional[str], spec: Optional[ArchSpec]) -> str:
    if spec is not None and role == spec.o:
        return "heads"
    if spec is not None and role == spec.ffn_out:
        return "channels"
    return "groups"


def _add_gates(stats: dict[str, GateStats], g: GatedLinear, group_kind: str) -> None:
    for kind, gate in (("rows", g.row_gate), ("cols", g.col_gate), (group_kind, g.group_gate)):
        if gate is not None:
            stats.setdefault(kind, GateStats()).add(gate.open_probability(), gate.eval_values())


def _module_report(name: str, g: GatedLinear, layer: Optional[int], role: Optional[str],
                   spec: Optional[ArchSpec]) -> ModuleReport:
    gates: dict[str, GateStats] = {}
    _add_gates(gates, g, _gate_kind_for_group(role, spec))
    kept = int((g.eval_row_scale() != 0).sum()) * int((g.eval_column_scale() != 0).sum())
    return ModuleReport(
        name=name, layer=layer, role=role, in_features=g.in_features, out_features=g.out_features,
        gates={k: gates[k] for k in GATE_KINDS if k in gates},
        zeroed_weight_fraction=1.0 - kept / (g.in_features * g.out_features),
        row_values=g.row_gate.eval_values().tolist() if g.row_gate is not None else None,
        col_values=g.col_gate.eval_values().tolist() if g.col_gate is not None else None,
    )


def _layer_report(index: int, block: nn.Module, spec: ArchSpec, layout) -> LayerReport:
    """Gate statistics of one block (every gated linear inside it); the removal fields come from the plan."""
    gates: dict[str, GateStats] = {}
    for rel, g in block.named_modules():
        if isinstance(g, GatedLinear):
            _add_gates(gates, g, _gate_kind_for_group(rel, spec))
    o, ffn_out = block.get_submodule(spec.o), block.get_submodule(spec.ffn_out)
    group_values = lambda m: (m.group_gate.eval_values().tolist()  # noqa: E731
                              if isinstance(m, GatedLinear) and m.group_gate is not None else None)
    plain_ffn_out = ffn_out.base_layer if isinstance(ffn_out, GatedLinear) else ffn_out
    return LayerReport(
        index=index, gates={k: gates[k] for k in GATE_KINDS if k in gates},
        num_heads=layout.num_heads, num_kv_heads=layout.num_kv_heads,
        ffn_channels=in_out_features(plain_ffn_out)[0],
        head_values=group_values(o), channel_values=group_values(ffn_out),
    )


# -- training metadata ---------------------------------------------------------------------------------------
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(data) -> dict:
    return {k: v for k, v in data.items() if _is_number(v)} if isinstance(data, dict) else {}


def summarize_training(metadata: dict) -> dict:
    """Headline numbers of a model_dir's training.json (as `fg-edge train` writes it; other layouts: best effort).

    Keys: steps, epochs, wall_time_s, dev_metric + dev_value (the checkpoint kept) or dev (every dev figure),
    best_step, train_rows, trainable_params (as recorded at training time).
    """
    if not isinstance(metadata, dict) or not metadata:
        return {}
    summary: dict[str, object] = {k: metadata[k] for k in ("steps", "epochs", "wall_time_s")
                                  if _is_number(metadata.get(k))}
    metrics = metadata.get("metrics") if isinstance(metadata.get("metrics"), dict) else {}
    dev = _numbers(metrics.get("dev")) or _numbers(metadata.get("dev")) or \
        {k: v for k, v in _numbers(metadata).items() if k.startswith(("dev_", "eval_"))}
    name = metrics.get("dev_metric")
    if isinstance(name, str) and name in dev:
        summary["dev_metric"], summary["dev_value"] = name, dev[name]
    elif dev:
        summary["dev"] = dict(list(dev.items())[:6])
    if _is_number(metrics.get("best_step")):
        summary["best_step"] = metrics["best_step"]
    train = metadata.get("data", {}).get("train") if isinstance(metadata.get("data"), dict) else None
    if isinstance(train, dict) and _is_number(train.get("rows_used")):
        summary["train_rows"] = train["rows_used"]
    recorded = metadata.get("trainable_params")
    if isinstance(recorded, dict) and _is_number(recorded.get("count")):
        summary["trainable_params"] = recorded["count"]
    return summary


def _metric(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) and abs(value) < 10 else f"{value:.4g}"


def _format_training(summary: dict) -> str:
    parts = []
    if "steps" in summary:
        text = f"{summary['steps']:,} steps"
        if "epochs" in summary:
            text += f" ({summary['epochs']:.3g} epochs)"
        if "train_rows" in summary:
            text += f" on {summary['train_rows']:,} rows"
        parts.append(text)
    elif "epochs" in summary:
        parts.append(f"{summary['epochs']:.3g} epochs")
    if "dev_metric" in summary:
        text = f"dev {summary['dev_metric']} {_metric(summary['dev_value'])}"
        if "best_step" in summary:
            text += f" (checkpoint of step {summary['best_step']:,})"
        parts.append(text)
    for key, value in summary.get("dev", {}).items():
        parts.append(f"dev {key} {_metric(value)}")
    if "wall_time_s" in summary:
        parts.append(f"{summary['wall_time_s']:.0f} s")
    return "; ".join(parts) if parts else "(training.json has no steps or dev metrics)"


# -- text helpers --------------------------------------------------------------------------------------------
def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def _count(n: int, total: int) -> str:
    return f"{n}/{total} ({_pct(n / total) if total else '-'})"


def _plural(items: list, word: str) -> str:
    return word if len(items) == 1 else word + "s"


def _short_list(indices: list[int], total: int) -> str:
    """'2/4 [1,2]' (indices shown when few)."""
    text = f"{len(indices)}/{total}"
    if indices and len(indices) <= 6:
        text += " [" + ",".join(map(str, indices)) + "]"
    return text


def _ranges(indices: list[int], limit: Optional[int] = None) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'; with `limit`, at most that many ranges and '... +N more'."""
    out, start, prev = [], None, None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    if limit is not None and len(out) > limit:
        out = out[:limit] + [f"... ({len(out) - limit} more)"]
    return ", ".join(out)


def _render_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def plot_report(report: InspectionReport, path: str | Path, dpi: int = 110) -> Path:
    """Write the gate heatmap PNG (see fg_edge.inspect.plot)."""
    from fg_edge.inspect.plot import plot_report as _plot

    return _plot(report, path, dpi=dpi)
