"""bench.json rows: one per provider x threads x shape x variant, with the speed-ups against the dense baseline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from fg_edge.formats.compiled_dir import BASELINE_OF, ModelFile
from fg_edge.runtimes.bench.machine import latency_stats
from fg_edge.runtimes.providers import ResolvedProvider


@dataclass
class VariantRun:
    """One model variant in its session, and what was measured on it for the current shape."""

    file: ModelFile
    model: Any                                  # fg_edge.runtimes.runner.OnnxModel
    create_s: float
    rss_delta_mb: Optional[float] = None
    lat: list = field(default_factory=list)     # seconds per timed run
    ttft: list = field(default_factory=list)    # seconds to first token per generation run
    tps: list = field(default_factory=list)     # decode tokens/s per generation run

    def reset(self) -> None:
        self.lat, self.ttft, self.tps = [], [], []


def baseline_for(f: ModelFile, names: set[str], no_baseline: bool) -> Optional[str]:
    """The variant `f`'s speed-up is measured against: itself when dense, else the dense variant of the same
    precision family (falling back to the fp32 baseline); None with --no-baseline."""
    if f.dense:
        return f.variant
    if no_baseline:
        return None
    want = BASELINE_OF.get(f.variant)
    return want if want in names else ("baseline" if "baseline" in names else None)


def _median(seconds: list) -> float:
    return float(np.median(seconds))


def shape_rows(rp: ResolvedProvider, nthreads: int, batch: int, seq: int, runs: list[VariantRun],
               flop_ratio: Optional[float], n_gen: int, no_baseline: bool) -> list[dict[str, Any]]:
    """The rows of one provider x threads x batch x seq configuration, one per variant."""
    by_variant = {v.file.variant: v for v in runs}
    return [_row(rp, nthreads, batch, seq, v, by_variant, flop_ratio, n_gen, no_baseline) for v in runs]


def _row(rp: ResolvedProvider, nthreads: int, batch: int, seq: int, v: VariantRun, by_variant: dict,
         flop_ratio: Optional[float], n_gen: int, no_baseline: bool) -> dict[str, Any]:
    f = v.file
    stats = latency_stats(v.lat)
    med_s = stats["median"] / 1e3
    base_name = baseline_for(f, set(by_variant), no_baseline)
    speedup = None
    if base_name is not None and base_name in by_variant:
        speedup = _median(by_variant[base_name].lat) / _median(v.lat)
    rss = v.rss_delta_mb
    return {
        "provider": rp.name, "provider_label": rp.label, "ep": rp.ep,
        "variant": f.variant, "file": f.path.name, "format": f.path.suffix.lstrip("."),
        "precision": f.precision, "dense": f.dense, "file_size_bytes": f.size_bytes,
        "threads": nthreads, "batch": batch, "seq": seq,
        "latency_ms": stats,
        "throughput_seq_per_s": batch / med_s if med_s > 0 else None,
        "throughput_tokens_per_s": batch * seq / med_s if med_s > 0 else None,
        "session_create_s": v.create_s,
        "rss_delta_mb": None if rss is None or rss != rss else float(rss),        # NaN: no probe
        "baseline_variant": base_name,
        "speedup": speedup,
        "flop_ratio": flop_ratio,
        "ceiling_fraction": speedup / flop_ratio if speedup is not None and flop_ratio and not f.dense else None,
        "speedup_vs_dense_fp32": (_median(by_variant["baseline"].lat) / _median(v.lat)
                                  if "baseline" in by_variant else None),
        "ttft_ms": _median(v.ttft) * 1e3 if v.ttft else None,
        "decode_tokens_per_s": _median(v.tps) if v.tps else None,
        "gen_tokens": n_gen if v.ttft else None,
    }
