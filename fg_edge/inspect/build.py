"""Building an `InspectionReport` from a gated model (`inject_gates` / `fg_edge.load`); the model is not modified.

The trainable-parameter count is `fg_edge.gates.stats.trainable_parts`, the same rule training applies
(`mark_trainable_`), counted without touching `requires_grad`.
"""

from __future__ import annotations

import math
import re
from typing import Optional

import torch
from torch import nn

from fg_edge.arch import ArchSpec, find_spec, head_layout, layers_of, layers_prefix
from fg_edge.errors import ConfigError, FgEdgeError
from fg_edge.formats.gate_config import GateConfig
from fg_edge.gates.inject import gated_modules
from fg_edge.gates.stats import base_params, closed_gate_fraction, expected_sparsity, numel, trainable_parts
from fg_edge.gates.layer import GatedLinear, in_out_features
from fg_edge.inspect.report import GATE_KINDS, GateStats, InspectionReport, LayerReport, ModuleReport


@torch.no_grad()
def inspect_model(model: nn.Module, gate_config: Optional[GateConfig] = None, metadata: Optional[dict] = None,
                  source: Optional[str] = None) -> InspectionReport:
    """Summarise the gates of a gated model (from `fg_edge.load` or `inject_gates`). Does not modify it.

    `gate_config`: the config the gates were injected with (for a model_dir: `fg_edge.model_dir.read_gate_config`);
    `metadata` is the training.json of a model_dir (see `read_training_metadata`), summarised into `report.training`.
    """
    if gate_config is None:
        raise ConfigError("inspect_model needs the gate config: pass gate_config=... (for a model_dir: "
                          "fg_edge.model_dir.read_gate_config(model_dir))")
    gated = gated_modules(model)
    if not gated:
        raise ConfigError("this model carries no fg-edge gates (inject_gates or fg_edge.load first)")
    model_type = getattr(model.config, "model_type", None) or gate_config.model_type
    spec, spec_error = find_spec(model)

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
    trained = trainable_parts(model, gate_config, train_norms=isinstance(args, dict) and bool(args.get("train_norms")),
                              train_base=isinstance(args, dict) and bool(args.get("train_base")))
    trainable, parts = numel(trained), list(trained)
    return InspectionReport(
        model_type=model_type, task=gate_config.task, granularity=gate_config.granularity,
        target_sparsity=gate_config.target_sparsity, scale_gates=gate_config.scale_gates,
        adapter_rank=gate_config.adapter_rank, train_biases=gate_config.train_biases,
        target_modules=gate_config.target_modules,
        expected_sparsity=expected_sparsity(model), closed_fraction=closed_gate_fraction(model),
        gates_total=sum(s.count for m in modules for s in m.gates.values()),
        gates_closed=sum(s.closed for m in modules for s in m.gates.values()),
        zeroed_weight_fraction=zeroed / total_entries if total_entries else 0.0,
        trainable_params=trainable, base_params=base_params(model),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_parts=parts, layers=layers, modules=modules, head_dim=head_dim, plan=plan,
        plan_error=plan_error, training=summarize_training(metadata or {}), source=source,
        architecture=spec.describe() if spec is not None else None, architecture_error=spec_error,
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
