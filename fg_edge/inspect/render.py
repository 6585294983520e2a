"""`InspectionReport` as text: the `fg-edge inspect` table (header, one row per layer or gated module, the plan)."""

from __future__ import annotations

from typing import Optional

from fg_edge.inspect.report import REMOVAL_SOURCE, InspectionReport


def format_table(report: InspectionReport, modules: bool = False) -> str:
    """Human-readable `report`: a header, one row per layer (or per gated module outside the table), the plan."""
    lines = _header_lines(report)
    lines.append("")
    if report.per_layer:
        lines += _render_table(*_layer_rows(report))
        plan = _plan_lines(report)
        if plan:
            lines.append("")
            lines += plan
        others = [m for m in report.modules if m.layer is None]
        if others and not modules:
            lines.append("")
            lines.append(f"also gated outside the transformer blocks: {', '.join(m.name for m in others)}")
    if modules or not report.per_layer:
        if report.per_layer:
            lines.append("")
        else:
            lines.append(f"no architecture spec fits this {report.model_type!r} model: per-module listing (no head "
                         f"/ FFN-channel removal analysis; compile folds the gates and removes nothing)")
        lines += _render_table(*_module_rows(report))
    return "\n".join(lines)


def _header_lines(report: InspectionReport) -> list[str]:
    rows = []
    if report.source:
        rows.append(("model_dir", report.source))
    model = f"{report.model_type} ({report.task})"
    if report.per_layer:
        first = report.layers[0]
        kv = f", {first.num_kv_heads} kv heads" if report.gqa else ""
        model += (f", {len(report.layers)} layers, {first.num_heads} heads{kv}, head dim {report.head_dim}, "
                  f"FFN {first.ffn_channels}")
    rows.append(("model", model))
    rows.append(("architecture", report.architecture or f"no spec fits ({report.architecture_error})"))
    gates = f"{report.granularity} granularity, target sparsity {report.target_sparsity:g}"
    if report.scale_gates:
        gates += ", with row/col scale gates"
    if report.adapter_rank:
        gates += f", adapter rank {report.adapter_rank}"
    if report.target_modules:
        gates += f", target modules {','.join(report.target_modules)}"
    gates += f"; {len(report.modules)} gated linears, {report.gates_total:,} gates"
    rows.append(("gates", gates))
    rows.append(("sparsity", f"expected {pct(report.expected_sparsity)} (1 - mean P(open), per gated layer), "
                             f"closed {report.gates_closed:,}/{report.gates_total:,} gates "
                             f"({pct(report.closed_fraction)}), gated weight entries zeroed "
                             f"{pct(report.zeroed_weight_fraction)}"))
    if report.per_layer and report.has_plan:
        text = f"{report.heads_removed:,}/{report.heads_total:,} attention heads"
        if report.heads_zeroed:
            text += f" (+{report.heads_zeroed:,} closed but kept zeroed for even GQA groups)"
        if report.gqa:
            text += f", {report.kv_heads_removed:,}/{report.kv_heads_total:,} kv heads"
        text += f", {report.channels_removed:,}/{report.channels_total:,} FFN channels ({REMOVAL_SOURCE})"
        if report.architecture and "derived from the module tree" in report.architecture:
            text += ("; with a derived spec compile confirms this by parity, else keeps the heads (then folds "
                     "only) and says so")
        rows.append(("compiler removes", text))
    elif report.per_layer:
        rows.append(("compiler removes", f"unknown: the removal planner refused ({report.plan_error})"))
    rows.append(("trainable", f"{report.trainable_params:,} parameters ({pct(report.trainable_fraction, 3)} of the "
                              f"base model's {report.base_params:,}): {', '.join(report.trainable_parts)}"))
    if report.training:
        rows.append(("training", _format_training(report.training)))
    width = max(len(k) for k, _ in rows)
    return [f"{k.ljust(width)}  {v}" for k, v in rows]


def _layer_rows(report: InspectionReport) -> tuple[list[str], list[list[str]]]:
    kinds = [k for k in report.kinds_present() if any(k in layer.gates for layer in report.layers)]
    header = ["layer"]
    for kind in kinds:
        header += [f"{kind} E[sp]", f"{kind} closed"]
    show_zeroed = report.heads_zeroed > 0
    if report.has_plan:
        header += (["heads removed"] + (["heads zeroed"] if show_zeroed else [])
                   + (["kv heads removed"] if report.gqa else []) + ["FFN ch removed"])
    body = []
    for layer in report.layers:
        row = [str(layer.index)]
        for kind in kinds:
            s = layer.gates.get(kind)
            row += ["-", "-"] if s is None else [f"{s.expected_sparsity:.3f}", _count(s.closed, s.count)]
        if report.has_plan:
            row.append(_short_list(layer.heads_removed, layer.num_heads))
            if show_zeroed:
                row.append(_short_list(layer.heads_zeroed, layer.num_heads))
            if report.gqa:
                row.append(_short_list(layer.kv_heads_removed, layer.num_kv_heads))
            row.append(_count(len(layer.ffn_removed), layer.ffn_channels))
        body.append(row)
    return header, body


def _module_rows(report: InspectionReport) -> tuple[list[str], list[list[str]]]:
    kinds = report.kinds_present()
    header = ["module"]
    for kind in kinds:
        header += [f"{kind} E[sp]", f"{kind} closed"]
    header.append("weights zeroed")
    body = []
    for m in report.modules:
        row = [m.name]
        for kind in kinds:
            s = m.gates.get(kind)
            row += ["-", "-"] if s is None else [f"{s.expected_sparsity:.3f}", _count(s.closed, s.count)]
        row.append(pct(m.zeroed_weight_fraction))
        body.append(row)
    return header, body


def _plan_lines(report: InspectionReport) -> list[str]:
    """The compiler's plan, layer by layer (indices as ranges; only layers that lose something)."""
    if not report.has_plan:
        return []
    lines = []
    for layer in report.layers:
        parts = []
        if layer.heads_removed:
            parts.append(f"{_plural(layer.heads_removed, 'head')} {_ranges(layer.heads_removed)}")
        if report.gqa and layer.kv_heads_removed:
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
def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def _count(n: int, total: int) -> str:
    return f"{n}/{total} ({pct(n / total) if total else '-'})"


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
