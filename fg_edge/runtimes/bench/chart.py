"""bench.png: median latency and speed-up per configuration and variant (matplotlib, optional).

Drawn on a `matplotlib.figure.Figure` with the Agg canvas directly, never through pyplot, so the process's
matplotlib backend and pyplot's figure list are left as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from fg_edge.formats.atomic import atomic_file
from fg_edge.runtimes.bench.machine import busy_note

log = logging.getLogger(__name__)

#: colour-blind-safe palette (Okabe-Ito), one colour per variant in both panels
COLOURS = ("#0072B2", "#999999", "#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#D55E00", "#F0E442")


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
    colours = {v: COLOURS[i % len(COLOURS)] for i, v in enumerate(variants)}   # one colour per variant, both panels
    fig = Figure(figsize=(max(7, 1.3 * len(configs) + 3), 8))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1)
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(configs))
    ceiling = result.get("flop_ratio")
    above = False
    for j, v in enumerate(variants):
        at = x + j * width - 0.4 + width / 2
        stats = [_value(rows, c, v, lambda r: r["latency_ms"], None) for c in configs]
        med = [s["median"] if s else 0.0 for s in stats]
        p90 = [s["p90"] - s["median"] if s else 0.0 for s in stats]
        ax1.bar(at, med, width, color=colours[v], label=v, yerr=[np.zeros(len(med)), p90], capsize=2,
                error_kw={"elinewidth": 0.8})
        ax1.plot(at, [s["p99"] if s else np.nan for s in stats], "_", color="black", ms=6)
        if not v.startswith("baseline"):
            sp = [_value(rows, c, v, lambda r: r["speedup"], None) or 0 for c in configs]
            ax2.bar(at, sp, width, color=colours[v], label=v)
            for xi, s in zip(at, sp):
                if ceiling and s > ceiling:
                    above = True
                    ax2.annotate("!", (xi, s), ha="center", va="bottom", color="red", fontsize=9)
    labels = [f"{c[0].replace(' (', chr(10) + '(')}\nt{c[1]} b{c[2]} s{c[3]}" for c in configs]
    ax1.set_xticks(x, labels, fontsize=7)
    ax1.set_ylabel("latency (ms)")
    ax1.set_title("median latency; whisker to p90, black tick at p99")
    ax1.legend(fontsize=7)
    ax2.set_xticks(x, labels, fontsize=7)
    ax2.axhline(1.0, color="grey", lw=0.8)
    if ceiling:
        ax2.axhline(ceiling, color="red", ls="--", lw=1, label=f"FLOP ceiling {ceiling:.2f}x")
    ax2.set_ylabel("speed-up vs dense baseline")
    ax2.set_title("speed-up" + ("  (! above the FLOP ceiling: timing noise, not a real gain)" if above else ""))
    ax2.legend(fontsize=7)
    busy = busy_note(result.get("machine", {}))
    fig.suptitle(f"fg-edge bench: {result['model_type']} ({Path(result['compiled_dir']).name}), "
                 f"ORT {result['onnxruntime']['version']}" + ("\nbusy machine: latencies inflated" if busy else ""),
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path
