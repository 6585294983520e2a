"""`fg-edge bench`: compiled vs dense baseline (vs int8 variants) on ONNX Runtime, measured in one run.

Method (docs/DESIGN.md §4): for each provider x threads the sessions of every variant are created (creation time and
RSS delta recorded), then for each batch x seq shape every variant is warmed up and the timed runs alternate
between the variants round-robin (the order rotates every repeat, so no variant always runs first). Latency
is reported as median / p90 / p99; speed-up = baseline median / variant median, against the dense baseline of the
same precision family on the same provider, threads and shape. The FLOP ratio from compile_report.json is the
ceiling; `ceiling_fraction` = speed-up / FLOP ratio. Decoders also report time to first token (prompt of `seq`
tokens, empty cache) and tokens/s of cached generation (`gen_tokens` new tokens, no EOS stop).

bench.json schema (BENCH_SCHEMA_VERSION = 1), every key always present (null where it does not apply):

    schema_version        int, BENCH_SCHEMA_VERSION
    created               ISO-8601 UTC time of the run
    compiled_dir          path benchmarked
    model_type            config.json model_type
    kind                  'classification' | 'embedding' | 'causal-lm'
    flop_ratio            FLOPs before / after from compile_report.json (speed-up ceiling), or null
    machine               {platform, system, machine, processor, cpu_count, python}
    onnxruntime           {version, available_providers}
    settings              {providers, batches, seqs, threads, repeats, warmup, gen_tokens, graph_optimization,
                           alternation, memory_method, no_baseline}
    layers                config.json fg_edge_layers (per-layer heads / kv heads / head_dim / ffn_size)
    rows                  list of rows, one per provider x threads x batch x seq x variant:
      provider            short name ('cpu', 'mobile', 'cuda', ...)
      provider_label      how reports show it ('mobile (emulated on CPU EP)' for the mobile profile)
      ep                  ONNX Runtime execution provider name
      variant             'compiled' | 'baseline' | 'int8' | 'baseline-int8'
      file                model file name;  format: 'onnx' | 'ort';  precision: 'fp32' | 'int8';  dense: bool
      file_size_bytes     model file (+ external data) size
      threads, batch, seq the configuration (threads = intra-op threads actually used)
      latency_ms          {median, p90, p99, mean, min, max, n}
      throughput_seq_per_s, throughput_tokens_per_s   batch / median, batch*seq / median
      session_create_s    InferenceSession creation time
      rss_delta_mb        RSS growth from before session creation to after its first run (see memory_method)
      baseline_variant    the variant the speed-up is measured against (null with --no-baseline)
      speedup             baseline median / this median (1.0 for the baseline itself)
      flop_ratio          the ceiling (same for every row; null when compile_report.json lacks it)
      ceiling_fraction    speedup / flop_ratio (null for the dense baseline rows themselves)
      speedup_vs_dense_fp32  dense fp32 baseline median / this median (same provider, threads, shape); null when
                          the fp32 baseline is not in the run (e.g. the mobile profile, which runs int8 only)
      ttft_ms             decoders: median time to first token (prefill of seq tokens + first pick)
      decode_tokens_per_s decoders: median generated tokens/s of the cached decode steps (all batch rows)
      gen_tokens          decoders: new tokens per generation run
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fg_edge.errors import ConfigError
from fg_edge.formats.compiled_dir import BASELINE_OF, CompiledDir, ModelFile
from fg_edge.runtimes.providers import ResolvedProvider, parse_provider_list, resolve_provider
from fg_edge.runtimes.runner import OnnxModel
from fg_edge.runtimes.session import SessionSettings, create_session

log = logging.getLogger(__name__)

BENCH_SCHEMA_VERSION = 1
ROW_KEYS = ("provider", "provider_label", "ep", "variant", "file", "format", "precision", "dense", "file_size_bytes",
            "threads", "batch", "seq", "latency_ms", "throughput_seq_per_s", "throughput_tokens_per_s",
            "session_create_s", "rss_delta_mb", "baseline_variant", "speedup", "flop_ratio", "ceiling_fraction",
            "speedup_vs_dense_fp32", "ttft_ms", "decode_tokens_per_s", "gen_tokens")
TOP_KEYS = ("schema_version", "created", "compiled_dir", "model_type", "kind", "flop_ratio", "machine", "onnxruntime",
            "settings", "layers", "rows")


# -- memory ------------------------------------------------------------------------------------------------------
def _memory_probe() -> tuple[str, Callable[[], float]]:
    """(method, fn returning MB): psutil current RSS if installed, else resource peak RSS."""
    try:
        import psutil

        proc = psutil.Process()
        return "psutil current RSS delta", lambda: proc.memory_info().rss / 2**20
    except ImportError:
        pass
    try:
        import resource

        scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024       # bytes on macOS, KiB on Linux
        return "resource.getrusage peak RSS delta", lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    except ImportError:  # pragma: no cover - Windows without psutil
        return "unavailable", lambda: float("nan")


def machine_info() -> dict[str, Any]:
    return {"platform": platform.platform(), "system": platform.system(), "machine": platform.machine(),
            "processor": platform.processor() or _cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _stats(seconds: Sequence[float]) -> dict[str, Any]:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
            "mean": float(ms.mean()), "min": float(ms.min()), "max": float(ms.max()), "n": int(ms.size)}


def parse_int_list(text: str | Sequence[int], what: str) -> list[int]:
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            value = int(str(item).strip())
        except ValueError:
            raise ConfigError(f"--{what} {text!r}: expected comma-separated integers such as 1,8") from None
        if value <= 0:
            raise ConfigError(f"--{what}: {value} must be >= 1")
        if value not in out:
            out.append(value)
    if not out:
        raise ConfigError(f"--{what}: give at least one value")
    return out


@dataclass
class _Loaded:
    file: ModelFile
    model: OnnxModel
    create_s: float
    rss_delta_mb: Optional[float] = None
    lat: list = field(default_factory=list)
    ttft: list = field(default_factory=list)
    tps: list = field(default_factory=list)


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.done, self.total = 0, total
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc="bench", unit="run", file=sys.stderr, leave=False)
            except ImportError:
                pass

    def step(self, desc: str, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.set_description(desc, refresh=False)
            self.bar.update(n)
        elif self.enabled and (self.done == self.total or self.done % max(1, self.total // 10) < n):
            print(f"bench: {self.done}/{self.total} runs ({desc})", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _variants_for(cdir: CompiledDir, spec, no_baseline: bool) -> list[ModelFile]:
    prefer_ort = spec.prefer_ort_format
    if spec.prefer_int8 and cdir.find("int8") is not None:
        names = ["int8"] + ([] if no_baseline else ["baseline-int8" if cdir.find("baseline-int8") else "baseline"])
    else:
        names = ["compiled"] + ([] if no_baseline else ["baseline"])
        if not spec.prefer_int8:
            names += [v for v in ("int8", "baseline-int8") if cdir.find(v) is not None and
                      not (no_baseline and v == "baseline-int8")]
    files = []
    for name in names:
        files.append(cdir.require(name, prefer_ort=prefer_ort))
    return files


def _inputs(model: OnnxModel, batch: int, seq: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(4, vocab - 1), vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    if model.kind == "causal-lm":
        pos = np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy()
        return model.decoder_feeds(ids, mask, pos, model.empty_past(batch) if model.has_cache else None)
    return model.encoder_feeds(ids, mask)


def run_bench(compiled_dir: str | Path, providers: Sequence[str] | str = ("cpu",), batches: Sequence[int] = (1,),
              seqs: Sequence[int] = (128,), threads: Sequence[int] = (1,), repeats: int = 20, warmup: int = 3,
              gen_tokens: int = 16, no_baseline: bool = False, graph_optimization: str = "all",
              progress: bool = True, seed: int = 0) -> dict[str, Any]:
    """Benchmark a compiled_dir; returns the bench.json dict (see the module docstring for its schema)."""
    import onnxruntime as ort

    from fg_edge.runtimes.generate import generate

    if repeats < 1 or warmup < 0:
        raise ConfigError(f"--repeats must be >= 1 and --warmup >= 0 (got {repeats}, {warmup})")
    cdir = CompiledDir(compiled_dir)
    provider_names = parse_provider_list(providers)
    resolved: list[ResolvedProvider] = [resolve_provider(p) for p in provider_names]     # fail before any work
    batches, seqs, threads = (parse_int_list(batches, "batch"), parse_int_list(seqs, "seq"),
                              parse_int_list(threads, "threads"))
    plan = [(rp, _variants_for(cdir, rp.spec, no_baseline)) for rp in resolved]          # missing baseline -> error
    limit = cdir.max_positions()
    for seq in seqs:
        if limit and seq > limit:
            raise ConfigError(f"--seq {seq} exceeds the model's {limit} positions "
                              f"(max_position_embeddings in {cdir.path / 'config.json'})")
    vocab = cdir.vocab_size() or 100
    flop_ratio = cdir.flop_ratio()
    mem_method, rss = _memory_probe()

    def thread_list(rp):
        if rp.spec.max_threads:
            return sorted({min(t, rp.spec.max_threads) for t in threads})
        return threads

    n_runs = sum(len(files) * len(thread_list(rp)) * len(batches) * len(seqs) * (warmup + repeats)
                 for rp, files in plan)
    bar = _Progress(n_runs, progress)
    rows: list[dict[str, Any]] = []
    kind = None
    try:
        for rp, files in plan:
            for nthreads in thread_list(rp):
                settings = SessionSettings(intra_op_threads=nthreads, inter_op_threads=1,
                                           graph_optimization=graph_optimization)
                loaded: list[_Loaded] = []
                for f in files:
                    before = rss()
                    t0 = time.perf_counter()
                    sess = create_session(f.path, rp, settings)
                    create_s = time.perf_counter() - t0
                    model = OnnxModel(f.path, session=sess, cdir=cdir)
                    kind = kind or model.kind
                    model.run(_inputs(model, batches[0], min(seqs), vocab, seed))      # first run: arenas
                    loaded.append(_Loaded(f, model, create_s, rss() - before))
                for batch in batches:
                    for seq in seqs:
                        desc = f"{rp.name} t{nthreads} b{batch} s{seq}"
                        feeds = {id(lv): _inputs(lv.model, batch, seq, vocab, seed) for lv in loaded}
                        for lv in loaded:
                            lv.lat, lv.ttft, lv.tps = [], [], []
                        for _ in range(warmup):
                            for lv in loaded:
                                lv.model.session.run(None, feeds[id(lv)])
                                bar.step(desc)
                        for r in range(repeats):
                            order = loaded[r % len(loaded):] + loaded[: r % len(loaded)]
                            for lv in order:
                                t0 = time.perf_counter()
                                lv.model.session.run(None, feeds[id(lv)])
                                lv.lat.append(time.perf_counter() - t0)
                                bar.step(desc)
                        n_gen = 0
                        if kind == "causal-lm" and gen_tokens > 0:
                            n_gen = gen_tokens if not limit else max(0, min(gen_tokens, limit - seq))
                            gen_rounds = max(1, min(repeats, 5))
                            for r in range(gen_rounds if n_gen else 0):
                                order = loaded[r % len(loaded):] + loaded[: r % len(loaded)]
                                for lv in order:
                                    fd = feeds[id(lv)]
                                    out = generate(lv.model, fd["input_ids"], fd["attention_mask"],
                                                   max_new_tokens=n_gen, stop_at_eos=False)
                                    lv.ttft.append(out.prefill_s)
                                    if out.tokens_per_s:
                                        lv.tps.append(out.tokens_per_s)
                        rows.extend(_rows(rp, nthreads, batch, seq, loaded, flop_ratio, n_gen, no_baseline))
                del loaded
    finally:
        bar.close()
    return {
        "schema_version": BENCH_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "compiled_dir": str(cdir.path),
        "model_type": cdir.model_type,
        "kind": kind,
        "flop_ratio": flop_ratio,
        "machine": machine_info(),
        "onnxruntime": {"version": ort.__version__, "available_providers": list(ort.get_available_providers())},
        "settings": {"providers": provider_names, "batches": batches, "seqs": seqs, "threads": threads,
                     "repeats": repeats, "warmup": warmup, "gen_tokens": gen_tokens,
                     "graph_optimization": graph_optimization,
                     "alternation": "round-robin over variants, order rotated every repeat",
                     "memory_method": mem_method, "no_baseline": no_baseline},
        "layers": cdir.layers,
        "rows": rows,
    }


def _rows(rp: ResolvedProvider, nthreads: int, batch: int, seq: int, loaded: list[_Loaded],
          flop_ratio: Optional[float], n_gen: int, no_baseline: bool) -> list[dict[str, Any]]:
    by_variant = {lv.file.variant: lv for lv in loaded}
    out = []
    for lv in loaded:
        f = lv.file
        stats = _stats(lv.lat)
        med_s = stats["median"] / 1e3
        base_name = None
        if f.dense:
            base_name = f.variant
        elif not no_baseline:
            want = BASELINE_OF.get(f.variant)
            base_name = want if want in by_variant else ("baseline" if "baseline" in by_variant else None)
        speedup = None
        if base_name is not None and base_name in by_variant:
            speedup = float(np.median(by_variant[base_name].lat)) / float(np.median(lv.lat))
        out.append({
            "provider": rp.name, "provider_label": rp.label, "ep": rp.ep,
            "variant": f.variant, "file": f.path.name, "format": f.path.suffix.lstrip("."),
            "precision": f.precision, "dense": f.dense, "file_size_bytes": f.size_bytes,
            "threads": nthreads, "batch": batch, "seq": seq,
            "latency_ms": stats,
            "throughput_seq_per_s": batch / med_s if med_s > 0 else None,
            "throughput_tokens_per_s": batch * seq / med_s if med_s > 0 else None,
            "session_create_s": lv.create_s,
            "rss_delta_mb": None if lv.rss_delta_mb is None or lv.rss_delta_mb != lv.rss_delta_mb
            else float(lv.rss_delta_mb),
            "baseline_variant": base_name,
            "speedup": speedup,
            "flop_ratio": flop_ratio,
            "ceiling_fraction": (speedup / flop_ratio if speedup is not None and flop_ratio and not f.dense
                                 else None),
            "speedup_vs_dense_fp32": (float(np.median(by_variant["baseline"].lat)) / float(np.median(lv.lat))
                                      if "baseline" in by_variant else None),
            "ttft_ms": float(np.median(lv.ttft)) * 1e3 if lv.ttft else None,
            "decode_tokens_per_s": float(np.median(lv.tps)) if lv.tps else None,
            "gen_tokens": n_gen if lv.ttft else None,
        })
    return out


# -- reports -----------------------------------------------------------------------------------------------------
def _fmt(v, spec: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    decoder = result.get("kind") == "causal-lm"
    head = ["provider", "thr", "batch", "seq", "variant", "median ms", "p90 ms", "p99 ms", "seq/s", "speed-up",
            "ceiling", "% ceil", "vs fp32", "create s", "RSS MB", "size MB"]
    if decoder:
        head += ["TTFT ms", "tok/s"]
    body = []
    for r in result["rows"]:
        lat = r["latency_ms"]
        line = [r["provider_label"], str(r["threads"]), str(r["batch"]), str(r["seq"]),
                f"{r['variant']} ({r['format']})", _fmt(lat["median"], ".3f"), _fmt(lat["p90"], ".3f"),
                _fmt(lat["p99"], ".3f"), _fmt(r["throughput_seq_per_s"], ".1f"),
                _fmt(r["speedup"], ".3f") + ("x" if r["speedup"] is not None else ""),
                _fmt(r["flop_ratio"], ".3f") + ("x" if r["flop_ratio"] is not None else ""),
                _fmt(None if r["ceiling_fraction"] is None else 100 * r["ceiling_fraction"], ".0f"),
                _fmt(r["speedup_vs_dense_fp32"], ".3f") + ("x" if r["speedup_vs_dense_fp32"] is not None else ""),
                _fmt(r["session_create_s"], ".3f"), _fmt(r["rss_delta_mb"], ".1f"),
                _fmt(r["file_size_bytes"] / 2**20, ".2f")]
        if decoder:
            line += [_fmt(r["ttft_ms"], ".3f"), _fmt(r["decode_tokens_per_s"], ".1f")]
        body.append(line)
    return head, body


def format_table(result: dict) -> str:
    """The terminal table (plain text, aligned columns) with a header naming machine / ORT / ceiling."""
    head, body = _table_rows(result)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = [_header(result), "",
             "  ".join(h.rjust(w) if i >= 5 else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append("  ".join(c.rjust(w) if i >= 5 else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))))
    lines.append("")
    lines.append("speed-up = dense baseline median / variant median (same provider, threads, shape, precision "
                 "family); ceiling = FLOP ratio from compile_report.json; % ceil = speed-up / ceiling; "
                 "vs fp32 = dense fp32 baseline median / variant median.")
    return "\n".join(lines)


def _header(result: dict) -> str:
    m, o = result["machine"], result["onnxruntime"]
    ceiling = result["flop_ratio"]
    return (f"fg-edge bench: {result['compiled_dir']} ({result['model_type']}, {result['kind']}); "
            f"onnxruntime {o['version']}; {m['platform']}, {m['cpu_count']} CPUs, {m['processor'] or '?'}; "
            f"FLOP-ratio ceiling {'%.3fx' % ceiling if ceiling else 'unknown'}; "
            f"{result['settings']['repeats']} repeats after {result['settings']['warmup']} warm-up, A/B alternated")


def format_markdown(result: dict) -> str:
    head, body = _table_rows(result)
    s = result["settings"]
    lines = ["# fg-edge bench", "",
             f"- compiled_dir: `{result['compiled_dir']}` ({result['model_type']}, {result['kind']})",
             f"- machine: {result['machine']['platform']}, {result['machine']['cpu_count']} CPUs, "
             f"{result['machine']['processor'] or 'unknown processor'}",
             f"- onnxruntime {result['onnxruntime']['version']}; providers {', '.join(s['providers'])}; "
             f"threads {s['threads']}; batches {s['batches']}; seqs {s['seqs']}",
             f"- {s['repeats']} timed repeats after {s['warmup']} warm-up runs; {s['alternation']}; "
             f"graph optimisation {s['graph_optimization']}; memory: {s['memory_method']}",
             f"- FLOP-ratio ceiling (compile_report.json): "
             f"{'%.3fx' % result['flop_ratio'] if result['flop_ratio'] else 'unknown'}",
             "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    if any(r["provider"] == "mobile" for r in result["rows"]):
        lines += ["", "The mobile rows are emulated on the CPU EP (1-2 threads, .ort / int8 models when present); "
                      "they are not measurements on a phone."]
    lines += ["", "speed-up = dense baseline median / variant median (same provider, threads, shape and precision "
                  "family); % ceil = speed-up / FLOP ratio.", ""]
    return "\n".join(lines)


def write_chart(result: dict, path: str | Path) -> Optional[Path]:
    """PNG: median latency per configuration and variant, speed-ups annotated, ceiling drawn. None if no mpl."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed; skipping the bench chart (pip install matplotlib)")
        return None
    rows = result["rows"]
    configs: list[tuple] = []
    for r in rows:
        key = (r["provider_label"], r["threads"], r["batch"], r["seq"])
        if key not in configs:
            configs.append(key)
    variants = []
    for r in rows:
        if r["variant"] not in variants:
            variants.append(r["variant"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(7, 1.3 * len(configs) + 3), 8))
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(configs))
    for j, v in enumerate(variants):
        lat = [next((r["latency_ms"]["median"] for r in rows
                     if (r["provider_label"], r["threads"], r["batch"], r["seq"]) == c and r["variant"] == v), 0.0)
               for c in configs]
        ax1.bar(x + j * width - 0.4 + width / 2, lat, width, label=v)
        sp = [next((r["speedup"] for r in rows
                    if (r["provider_label"], r["threads"], r["batch"], r["seq"]) == c and r["variant"] == v), None)
              for c in configs]
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
    plt.close(fig)
    return path


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Optional[Path]]:
    """bench.json, bench.md and bench.png into out_dir (created); returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Optional[Path]] = {"json": out / "bench.json", "md": out / "bench.md"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["md"].write_text(format_markdown(result))
    paths["png"] = write_chart(result, out / "bench.png")
    return paths


def validate_result(result: dict) -> None:
    """Raise ValueError when a bench.json dict lacks a documented key (used by tests and readers)."""
    missing = [k for k in TOP_KEYS if k not in result]
    for i, row in enumerate(result.get("rows", [])):
        missing += [f"rows[{i}].{k}" for k in ROW_KEYS if k not in row]
    if missing:
        raise ValueError(f"bench.json lacks {', '.join(missing)}")
    if result["schema_version"] != BENCH_SCHEMA_VERSION:
        raise ValueError(f"bench.json schema_version {result['schema_version']} != {BENCH_SCHEMA_VERSION}")
