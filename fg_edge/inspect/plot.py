"""`fg-edge inspect --plot`: what the gates learned, as a PNG (matplotlib, Agg canvas, no pyplot).

For a per-layer (architecture-table) model the top row answers "what does the compiler keep?" at a glance: kept
and removed heads and FFN channels per layer as bars, and a histogram of the eval gate values. Below, heatmaps
of the gate values (layers down, gates across; closed gates red); a pooled FFN panel shows each layer's channels
sorted by value, since a channel's index means nothing and unsorted pooling reads as a barcode. Open gates start
at a visible blue (the colour scale begins at 20 % of the map), so a small but open gate is not mistaken for white.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from fg_edge.errors import ConfigError
from fg_edge.formats.atomic import atomic_file
from fg_edge.inspect.render import pct
from fg_edge.inspect.report import InspectionReport

#: Panels wider than this are pooled into this many bins (one bin = several neighbouring gates).
PLOT_MAX_WIDTH = {"heads": 128, "channels": 256, "module": 128, "fallback": 64}
CLOSED_COLOR = (0.84, 0.15, 0.16)          # red
KEPT_COLOR = "#0072B2"
#: the colour map is used from this fraction on: eval value 0+ is already a visible blue
CMAP_FLOOR = 0.2
MISSING_COLOR = (0.87, 0.87, 0.87)         # grey: no gate there


def _pool(values: list[float], width: int):
    """Pool (or repeat) a vector into `width` bins -> (mean of the open gates, fraction of closed gates) per bin.

    Keeping the closed fraction apart means a bin with some closed gates still shows them (as a red tint), where
    a plain mean would wash them out.
    """
    import numpy as np

    v = np.asarray(values, dtype=float)
    n = len(v)
    mean, closed = np.full(width, np.nan), np.empty(width)
    for b in range(width):
        lo = (b * n) // width
        chunk = v[lo:max(((b + 1) * n) // width, lo + 1)]
        is_closed = chunk == 0
        closed[b] = is_closed.mean()
        if not is_closed.all():
            mean[b] = chunk[~is_closed].mean()
    return mean, closed


def _panel(rows: list[Optional[list[float]]], max_width: int, **info) -> dict:
    """A panel: per-row pooled (mean, closed fraction) matrices; NaN rows where a layer has no such gates."""
    import numpy as np

    n = max((len(r) for r in rows if r is not None), default=0)
    width = min(n, max_width)
    mean, closed = np.full((len(rows), width), np.nan), np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        if r is not None:
            mean[i], closed[i] = _pool(r, width)
    total = sum(len(r) for r in rows if r is not None)
    n_closed = sum(int(sum(1 for v in r if v == 0)) for r in rows if r is not None)
    return dict(mean=mean, closed=closed, per_bin=n / width if width else 1.0, total=total, n_closed=n_closed,
                **info)


def _plot_panels(report: InspectionReport) -> list[dict]:
    panels = []
    if not report.per_layer:
        names = [m.name for m in report.modules]
        for attr, what in (("row_values", "row gates (outputs)"), ("col_values", "column gates (inputs)")):
            rows = [getattr(m, attr) for m in report.modules]
            if all(r is None for r in rows):
                continue
            panel = _panel(rows, PLOT_MAX_WIDTH["fallback"], ylabels=names, ylabel="module", pooled_label=False)
            width = panel["mean"].shape[1]
            panel["xlabel"] = f"position (each module's gates pooled / stretched to {width} bins)"
            panel["title"] = f"{what}: {panel['n_closed']:,}/{panel['total']:,} closed"
            panels.append(panel)
        return panels

    labels = [str(layer.index) for layer in report.layers]
    if any(layer.head_values is not None for layer in report.layers):
        panel = _panel([layer.head_values for layer in report.layers], PLOT_MAX_WIDTH["heads"], xlabel="head",
                       ylabels=labels, ylabel="layer")
        if report.has_plan:                                    # mark what the compiler does with each head
            panel["markers"] = {
                "removed": [(i, h) for i, layer in enumerate(report.layers) for h in layer.heads_removed],
                "zeroed": [(i, h) for i, layer in enumerate(report.layers) for h in layer.heads_zeroed]}
        panel["title"] = (f"attention head gates: {panel['n_closed']:,}/{panel['total']:,} closed; "
                          f"{_removed(report.heads_removed, report)}/{report.heads_total:,} heads removed")
        panels.append(panel)
    if any(layer.channel_values is not None for layer in report.layers):
        panels.append(_ffn_panel(report, labels))
    # the spec the planner used (table entry or derived), as recorded in the plan
    spec = (report.plan or {}).get("spec") or {}
    roles: list[str] = []
    for m in report.modules:
        if m.role is not None and m.role not in roles and (m.row_values is not None or m.col_values is not None):
            roles.append(m.role)
    for role in roles:
        by_layer = {m.layer: m for m in report.modules if m.role == role}
        for attr, what, axis in (("row_values", "rows (outputs)", "row"), ("col_values", "cols (inputs)", "column")):
            rows = [getattr(by_layer[layer.index], attr) if layer.index in by_layer else None
                    for layer in report.layers]
            if all(r is None for r in rows):
                continue
            heads_axis = bool(spec) and (
                (attr == "row_values" and role in (spec["q"], spec["k"], spec["v"], spec["qkv"])) or
                (attr == "col_values" and role == spec["o"]))
            panel = _panel(rows, PLOT_MAX_WIDTH["module"], ylabels=labels, ylabel="layer",
                           xlabel=axis + (" (orange lines: head boundaries)" if heads_axis else ""),
                           group=report.head_dim if heads_axis else None)
            panel["title"] = f"{role} {what}: {panel['n_closed']:,}/{panel['total']:,} closed"
            panels.append(panel)
    return panels


def _ffn_panel(report: InspectionReport, labels: list[str]) -> dict:
    """The FFN channel heatmap; pooled rows are sorted by value (see the module docstring)."""
    values = [layer.channel_values for layer in report.layers]
    width = max((len(v) for v in values if v is not None), default=0)
    sort = width > PLOT_MAX_WIDTH["channels"]              # pooled: sort each layer's channels by value
    if sort:
        values = [sorted(v, reverse=True) if v is not None else None for v in values]
    panel = _panel(values, PLOT_MAX_WIDTH["channels"], ylabels=labels, ylabel="layer",
                   xlabel="FFN channels of the layer, sorted by gate value" if sort else "FFN channel")
    if report.has_plan and not sort:
        removed = [(i, j) for i, layer in enumerate(report.layers) for j in layer.ffn_removed]
        panel["markers"] = {"removed": removed, "zeroed": []}
    panel["title"] = (f"FFN channel gates: {panel['n_closed']:,}/{panel['total']:,} closed; "
                      f"{_removed(report.channels_removed, report)}/{report.channels_total:,} removed")
    return panel


def _removed(n: int, report: InspectionReport) -> str:
    return f"{n:,}" if report.has_plan else "?"


def _rgb(panel: dict, cmap):
    """Blue by the mean open gate value, blended towards red by the fraction of closed gates in the bin."""
    import numpy as np

    mean, closed = panel["mean"], panel["closed"]
    blue = cmap(CMAP_FLOOR + (1 - CMAP_FLOOR) * np.nan_to_num(mean, nan=0.0))[..., :3]
    f = np.nan_to_num(closed, nan=0.0)[..., None]
    rgb = (1 - f) * blue + f * np.asarray(CLOSED_COLOR)
    rgb[np.isnan(closed)] = MISSING_COLOR
    return rgb


def plot_report(report: InspectionReport, path: str | Path, dpi: int = 110) -> Path:
    """Heatmap PNG of the eval gate values: layers down, gates across; closed gates (exactly 0) in red.

    Draws on a `matplotlib.figure.Figure` with its own Agg canvas: no pyplot, the process-wide backend is untouched.
    """
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure

    panels = _plot_panels(report)
    if not panels:
        raise ConfigError("nothing to plot: the model has no gate values")
    n_rows = max(len(p["ylabels"]) for p in panels)
    summary = report.per_layer and report.has_plan and any(      # the summary row needs structured gates
        lr.head_values is not None or lr.channel_values is not None for lr in report.layers)
    ncols = 2 if len(panels) > 1 or summary else 1
    nrows = math.ceil(len(panels) / ncols) + (1 if summary else 0)
    label_width = max(len(s) for p in panels for s in p["ylabels"])
    panel_h = 1.5 + 0.14 * min(n_rows, 48)
    fig_w = 6.2 * ncols + (0.07 * label_width if not report.per_layer else 0)
    fig = Figure(figsize=(fig_w, panel_h * nrows + 1.2), layout="constrained")   # Agg canvas, no pyplot state
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    base = matplotlib.colormaps["Blues"]
    cmap = ListedColormap(base(np.linspace(CMAP_FLOOR, 1.0, 256)))
    heat_axes = list(axes.flat)
    if summary:
        _draw_kept_bars(heat_axes[0], report)
        _draw_histogram(heat_axes[1], report)
        heat_axes = heat_axes[2:]
    pooled = False
    marker_kinds: set[str] = set()
    for ax, panel in zip(heat_axes, panels):
        pooled |= _draw_panel(ax, panel, base, marker_kinds)
    for ax in heat_axes[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap), ax=heat_axes[:len(panels)], shrink=0.8,
                 label="eval gate value (1 = open)")
    handles = _legend_handles(panels, pooled, marker_kinds)
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(_title(report), fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return path


def _draw_kept_bars(ax, report: InspectionReport) -> None:
    """Per layer: the share of heads and of FFN channels the compiler keeps (solid) and removes (red)."""
    import numpy as np

    y = np.arange(len(report.layers))
    for offset, what, total, removed in (
            (-0.2, "heads", [lr.num_heads for lr in report.layers], [len(lr.heads_removed or []) for lr in report.layers]),
            (0.2, "FFN channels", [lr.ffn_channels for lr in report.layers],
             [len(lr.ffn_removed or []) for lr in report.layers])):
        kept = [100.0 * (t - r) / t if t else 0.0 for t, r in zip(total, removed)]
        ax.barh(y + offset, kept, 0.38, color=KEPT_COLOR, alpha=1.0 if what == "heads" else 0.55,
                label=f"{what} kept")
        ax.barh(y + offset, [100.0 - k for k in kept], 0.38, left=kept, color=CLOSED_COLOR,
                alpha=1.0 if what == "heads" else 0.55, label=f"{what} removed")
    ax.set_yticks(y, [str(lr.index) for lr in report.layers], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the layer (upper bar: heads, lower bar: FFN channels)", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    ax.set_title(f"what the compiler keeps: {report.heads_total - report.heads_removed:,}/{report.heads_total:,} "
                 f"heads, {report.channels_total - report.channels_removed:,}/{report.channels_total:,} channels",
                 fontsize=9)
    ax.legend(fontsize=7, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)


def _draw_histogram(ax, report: InspectionReport) -> None:
    """Eval gate values of head and FFN-channel gates; exactly-closed gates counted in the first bar."""
    import numpy as np

    bins = np.linspace(0.0, 1.0, 21)
    for what, values, colour in (
            ("head gates", [v for lr in report.layers for v in (lr.head_values or [])], KEPT_COLOR),
            ("FFN channel gates", [v for lr in report.layers for v in (lr.channel_values or [])], "#E69F00")):
        if values:
            closed = sum(1 for v in values if v == 0)
            ax.hist(values, bins=bins, histtype="step", linewidth=1.4, color=colour,
                    label=f"{what} ({closed:,}/{len(values):,} exactly 0)")
    ax.set_yscale("log")
    ax.set_xlabel("eval gate value (0 = closed, removable; 1 = fully open)", fontsize=8)
    ax.set_ylabel("gates", fontsize=8)
    ax.set_title("distribution of the gate values", fontsize=9)
    ax.legend(fontsize=7)


def _draw_panel(ax, panel: dict, cmap, marker_kinds: set[str]) -> bool:
    """One heatmap panel on `ax` (cell borders, head boundaries, removed / zeroed markers); True when pooled.
    Adds the marker kinds drawn to `marker_kinds`."""
    import numpy as np

    rgb = _rgb(panel, cmap)
    height, width = rgb.shape[:2]
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    ax.set_title(panel["title"], fontsize=9)
    xlabel = panel["xlabel"]
    pooled = False
    if panel["per_bin"] > 1 and panel.get("pooled_label", True):
        xlabel += f" (pooled, {panel['per_bin']:.3g} per bin)"
        pooled = True
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(panel["ylabel"], fontsize=8)
    ylabels = panel["ylabels"]
    step = max(1, math.ceil(len(ylabels) / 24))
    ax.set_yticks(range(0, len(ylabels), step))
    ax.set_yticklabels(ylabels[::step], fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    if width <= 16:
        ax.set_xticks(range(width))
    if 1 < width <= 32 and height <= 48:                   # cell borders so single gates stand apart
        ax.vlines(np.arange(0.5, width - 1), -0.5, height - 0.5, colors="white", linewidth=0.6)
        ax.hlines(np.arange(0.5, height - 1), -0.5, width - 0.5, colors="white", linewidth=0.6)
    group = panel.get("group")                             # head boundaries on q/k/v rows and o columns
    if group and width > 1:
        step_x = group / panel["per_bin"]
        if step_x >= 2 and width / step_x <= 64:
            ax.vlines(np.arange(step_x, width - 1e-9, step_x) - 0.5, -0.5, height - 0.5, colors="#ff9f1c",
                      linewidth=0.9)
    markers = panel.get("markers")
    if markers and panel["per_bin"] == 1 and height * width <= 2500:
        for key, symbol in (("removed", "x"), ("zeroed", "o")):
            if markers[key]:
                ys, xs = zip(*markers[key])
                size = 28 if width <= 32 else 12
                ax.scatter(xs, ys, marker=symbol, s=size, linewidths=1.0, color="white",
                           facecolors="none" if symbol == "o" else None)
                marker_kinds.add(key)
    return pooled


def _legend_handles(panels: list[dict], pooled: bool, marker_kinds: set[str]) -> list:
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    closed_label = "closed gate (eval value exactly 0)"
    if pooled:
        closed_label += "; pooled bins are tinted red by their share of closed gates"
    handles = [Patch(color=CLOSED_COLOR, label=closed_label)]
    if any(np.isnan(p["closed"]).any() for p in panels):
        handles.append(Patch(color=MISSING_COLOR, label="not gated"))
    if "removed" in marker_kinds:
        handles.append(Line2D([], [], marker="x", linestyle="none", color="black", label="removed by the compiler"))
    if "zeroed" in marker_kinds:
        handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="none", color="black",
                              label="closed head kept zeroed (even GQA groups)"))
    return handles


def _title(report: InspectionReport) -> str:
    title = (f"{report.model_type} - {report.granularity} gates - expected sparsity "
             f"{pct(report.expected_sparsity)}, closed {pct(report.closed_fraction)} of gates")
    if report.per_layer:
        title += (f"\ncompiler removes {_removed(report.heads_removed, report)}/{report.heads_total:,} heads and "
                  f"{_removed(report.channels_removed, report)}/{report.channels_total:,} FFN channels")
    return title
