"""bench.png: median latency and speed-up per configuration and variant (matplotlib, optional).

Drawn on a `matplotlib.figure.Figure` with the Agg canvas directly, never through pyplot, so the process's
matplotlib backend and pyplot's figure list are left as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


def _config(r: dict) -> tuple:
    return (r["provider_label"], r["threads"], r["batch"], r["seq"])


def _unique(values) -> list:
    out: list = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _value(rows: list[dict], config: tuple, variant: str, get, default):
    return next((get(r) for r in rows if _config(r) == config and r["variant"] == variant), default)


def write_chart(result: dict, path: str | Path) -> Optional[Path]:
    """PNG: median latency per configuration and variant, speed-ups annotated, ceiling drawn. None if no mpl."""
    try:
        import matplotlib  # noqa: F401  (the installed check: a stubbed-out matplotlib fails here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.info("matplotlib is not installed; skipping the bench chart (pip install matplotlib)")
        return None
    rows = result["rows"]
    configs, variants = _unique(_config(r) for r in rows), _unique(r["variant"] for r in rows)
    fig = Figure(figsize=(max(7, 1.3 * len(configs) + 3), 8))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1)
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(configs))
    for j, v in enumerate(variants):
        lat = [_value(rows, c, v, lambda r: r["latency_ms"]["median"], 0.0) for c in configs]
        ax1.bar(x + j * width - 0.4 + width / 2, lat, width, label=v)
        sp = [_value(rows, c, v, lambda r: r["speedup"], None) for c in configs]
        if not v.startswith("baseline"):
            ax2.bar(x + j * width - 0.4 + width / 2, [s or 0 for s in sp], width, label=v)
    labels = [f"{c[0].replace(' (', chr(10) + '(')}\nt{c[1]} b{c[2]} s{c[3]}" for c in configs]
    ax1.set_xticks(x, labels, fontsize=7)
    ax1.set_ylabel("median latency (ms)")
    ax1.set_title("latency")
    ax1.legend(fontsize=7)
    ax2.set_xticks(x, labels, fontsize=7)
    ax2.axhline(1.0, color="grey", lw=0.8)
    if result.get("flop_ratio"):
        ax2.axhline(result["flop_ratio"], color="red", ls="--", lw=1, label=f"FLOP ceiling {result['flop_ratio']:.2f}x")
    ax2.set_ylabel("speed-up vs dense baseline")
    ax2.set_title("speed-up")
    ax2.legend(fontsize=7)
    fig.suptitle(f"fg-edge bench: {result['model_type']} ({Path(result['compiled_dir']).name}), "
                 f"ORT {result['onnxruntime']['version']}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
