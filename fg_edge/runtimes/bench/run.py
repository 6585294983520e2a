"""Measuring: plan the (provider, threads, variant) cases of a compiled_dir, time them, return the bench.json dict.

For each provider x threads the sessions of every variant are created (creation time and RSS delta recorded),
then for each batch x seq shape every variant is warmed up and the timed runs alternate between the variants
round-robin (the order rotates every repeat, so no variant always runs first). Decoders then time `gen_tokens`
of cached generation (no EOS stop) from a prompt of `seq` tokens.
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fg_edge.errors import ConfigError
from fg_edge.formats.compiled_dir import CompiledDir, ModelFile
from fg_edge.formats.names import BASELINE_OF, QUANTIZE_MODES, VARIANTS
from fg_edge.runtimes.bench.machine import load_average, machine_info, memory_probe
from fg_edge.runtimes.bench.rows import VariantRun, shape_rows
from fg_edge.runtimes.bench.schema import BENCH_SCHEMA_VERSION
from fg_edge.runtimes.providers import ProviderSpec, ResolvedProvider, parse_provider_list, resolve_provider
from fg_edge.runtimes.runner import OnnxModel
from fg_edge.runtimes.session import SessionSettings, create_session

log = logging.getLogger(__name__)

ALTERNATION = "round-robin over variants, order rotated every repeat"


def parse_int_list(text: str | Sequence[int], what: str) -> list[int]:
    """'1,8' (or [1, 8]) -> [1, 8]: positive, duplicates dropped; ConfigError naming --`what` otherwise."""
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


class _Progress:
    """A tqdm bar on stderr when tqdm is installed, else a log line every tenth of the runs."""

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
            log.info("bench: %d/%d runs (%s)", self.done, self.total, desc)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _chosen_variants(models: Sequence[str], no_baseline: bool) -> list[str]:
    """--models: the variants named, each followed by its dense partner (names.BASELINE_OF) unless --no-baseline."""
    names: list[str] = []
    for m in models:
        if m not in VARIANTS:
            raise ConfigError(f"--models {m!r}: unknown variant; expected some of {', '.join(VARIANTS)}")
        partner = None if no_baseline or VARIANTS[m][2] else BASELINE_OF.get(m)
        names += [v for v in (m, partner) if v is not None and v not in names]
    return names


def _variants_for(cdir: CompiledDir, spec: ProviderSpec, no_baseline: bool,
                  models: Optional[Sequence[str]] = None) -> list[ModelFile]:
    """The model files a provider benchmarks: `models` (--models) with their dense partners when given; else, for
    a profile that prefers a quantized variant (mobile: int8, int4, int8-wo), the first one present; else compiled,
    then every quantized variant present (int8, qdq, int4, int8-wo); each with its dense baseline unless
    --no-baseline; a missing file raises ModelDirError."""
    preferred = spec.preferred_variant(cdir)
    if models:
        names = _chosen_variants(models, no_baseline)
    elif preferred:
        dense = BASELINE_OF[preferred]
        names = [preferred] + ([] if no_baseline else [dense if cdir.find(dense) else "baseline"])
    else:
        names = ["compiled"] + ([] if no_baseline else ["baseline"])
        if not spec.prefer_quantized:
            for mode in QUANTIZE_MODES:
                names += [v for v in (mode, BASELINE_OF[mode]) if cdir.find(v) is not None and
                          not (no_baseline and v == BASELINE_OF[mode])]
    return [cdir.require(name, prefer_ort=spec.prefer_ort_format) for name in names]


@dataclass
class BenchPlan:
    """What a run measures, checked before any session is created."""

    cdir: CompiledDir
    provider_names: list[str]
    cases: list[tuple[ResolvedProvider, list[ModelFile]]]      # per provider: the variants it runs
    batches: list[int]
    seqs: list[int]
    threads: list[int]
    limit: Optional[int]                                        # the model's max positions (None: unknown)
    vocab: int
    flop_ratio: Optional[float]
    models: Optional[list[str]] = None                          # --models as given (None: each provider's default)

    def threads_for(self, rp: ResolvedProvider) -> list[int]:
        """The thread counts a provider runs (capped by a profile's max_threads, e.g. mobile's 2)."""
        if rp.spec.max_threads:
            return sorted({min(t, rp.spec.max_threads) for t in self.threads})
        return self.threads


def plan_bench(compiled_dir: str | Path, providers: Sequence[str] | str, batches: Sequence[int] | str,
               seqs: Sequence[int] | str, threads: Sequence[int] | str, no_baseline: bool,
               models: Optional[Sequence[str] | str] = None) -> BenchPlan:
    """Check every option and file up front (unknown / unavailable providers, bad lists, missing baseline,
    a --seq beyond the model's positions) so a bad run fails before any work."""
    cdir = CompiledDir(compiled_dir)
    provider_names = parse_provider_list(providers)
    resolved = [resolve_provider(p) for p in provider_names]
    batches, seqs, threads = (parse_int_list(batches, "batch"), parse_int_list(seqs, "seq"),
                              parse_int_list(threads, "threads"))
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    models = list(models) if models else None
    cases = [(rp, _variants_for(cdir, rp.spec, no_baseline, models)) for rp in resolved]
    limit = cdir.max_positions()
    for seq in seqs:
        if limit and seq > limit:
            raise ConfigError(f"--seq {seq} exceeds the model's {limit} positions "
                              f"(max_position_embeddings in {cdir.path / 'config.json'})")
    return BenchPlan(cdir, provider_names, cases, batches, seqs, threads, limit, cdir.vocab_size() or 100,
                     cdir.flop_ratio(), models)


def _inputs(model: OnnxModel, batch: int, seq: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(4, vocab - 1), vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    if model.kind == "causal-lm":
        pos = np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy()
        return model.decoder_feeds(ids, mask, pos, model.empty_past(batch) if model.has_cache else None)
    return model.encoder_feeds(ids, mask)


def _rotated(runs: list[VariantRun], r: int) -> list[VariantRun]:
    """The variants in round-robin order for repeat r (each variant leads in turn)."""
    k = r % len(runs)
    return runs[k:] + runs[:k]


class _Bench:
    """The measuring loops of one run_bench call; rows accumulate in `self.rows`."""

    def __init__(self, plan: BenchPlan, repeats: int, warmup: int, gen_tokens: int, graph_optimization: str,
                 no_baseline: bool, seed: int, rss: Callable[[], float], engine: str = "ort"):
        self.plan, self.repeats, self.warmup, self.gen_tokens = plan, repeats, warmup, gen_tokens
        self.engine = engine
        self.genai: dict = {}                           # (file, provider, threads) -> GenaiDecoder
        self.graph_optimization, self.no_baseline, self.seed, self.rss = graph_optimization, no_baseline, seed, rss
        self.kind: Optional[str] = None                 # what the models compute, from the first one loaded
        self.rows: list[dict[str, Any]] = []

    def total_runs(self) -> int:
        p = self.plan
        return sum(len(files) * len(p.threads_for(rp)) * len(p.batches) * len(p.seqs) * (self.warmup + self.repeats)
                   for rp, files in p.cases)

    def run(self, bar: _Progress) -> list[dict[str, Any]]:
        for rp, files in self.plan.cases:
            for nthreads in self.plan.threads_for(rp):
                self._case(rp, files, nthreads, bar)
        return self.rows

    def _case(self, rp: ResolvedProvider, files: list[ModelFile], nthreads: int, bar: _Progress) -> None:
        """Every shape on one provider x threads; the sessions live only for this case."""
        settings = SessionSettings(intra_op_threads=nthreads, inter_op_threads=1,
                                   graph_optimization=self.graph_optimization)
        runs = [self._load(f, rp, settings) for f in files]
        self._case_key, self.genai = (rp, nthreads), {}      # GenAI models live for the case, as sessions do
        for batch in self.plan.batches:
            for seq in self.plan.seqs:
                n_gen = self._shape(runs, f"{rp.name} t{nthreads} b{batch} s{seq}", batch, seq, bar)
                self.rows.extend(shape_rows(rp, nthreads, batch, seq, runs, self.plan.flop_ratio, n_gen,
                                            self.no_baseline))

    def _load(self, f: ModelFile, rp: ResolvedProvider, settings: SessionSettings) -> VariantRun:
        """Create the session (timed) and run it once (ORT allocates its arenas), recording the RSS growth."""
        before = self.rss()
        t0 = time.perf_counter()
        sess = create_session(f.path, rp, settings)
        create_s = time.perf_counter() - t0
        model = OnnxModel(f.path, session=sess, cdir=self.plan.cdir)
        self.kind = self.kind or model.kind
        model.run(_inputs(model, self.plan.batches[0], min(self.plan.seqs), self.plan.vocab, self.seed))
        return VariantRun(f, model, create_s, self.rss() - before)

    def _shape(self, runs: list[VariantRun], desc: str, batch: int, seq: int, bar: _Progress) -> int:
        """Warm-up and timed runs of one batch x seq (then generation for decoders); returns the new tokens
        per generation run (0 when none was timed)."""
        feeds = {id(v): _inputs(v.model, batch, seq, self.plan.vocab, self.seed) for v in runs}
        for v in runs:
            v.reset()
        for _ in range(self.warmup):
            for v in runs:
                v.model.session.run(None, feeds[id(v)])
                bar.step(desc)
        for r in range(self.repeats):
            for v in _rotated(runs, r):
                t0 = time.perf_counter()
                v.model.session.run(None, feeds[id(v)])
                v.lat.append(time.perf_counter() - t0)
                bar.step(desc)
        if self.kind == "causal-lm" and self.gen_tokens > 0:
            return self._generation(runs, feeds, seq)
        return 0

    def _generate(self, v: VariantRun, fd: dict, n_gen: int):
        """One generation run: fg-edge's cached loop, or ONNX Runtime GenAI on the same file (--engine genai)."""
        from fg_edge.runtimes.generate import generate

        if self.engine != "genai":
            return generate(v.model, fd["input_ids"], fd["attention_mask"], max_new_tokens=n_gen, stop_at_eos=False)
        from fg_edge.runtimes.genai_engine import GenaiDecoder

        rp, threads = self._case_key
        key = (str(v.file.path), rp.name, threads)
        if key not in self.genai:
            self.genai[key] = GenaiDecoder(v.file.path.parent, v.file.path.name, rp.name, threads)
        return self.genai[key].generate(fd["input_ids"][0].tolist(), n_gen, stop_at_eos=False)

    def _generation(self, runs: list[VariantRun], feeds: dict, seq: int) -> int:
        """Time to first token and decode tokens/s, up to 5 rounds alternated like the timed runs."""
        limit = self.plan.limit
        n_gen = self.gen_tokens if not limit else max(0, min(self.gen_tokens, limit - seq))
        for r in range(max(1, min(self.repeats, 5)) if n_gen else 0):
            for v in _rotated(runs, r):
                fd = feeds[id(v)]
                out = self._generate(v, fd, n_gen)
                v.ttft.append(out.prefill_s)
                if out.tokens_per_s:
                    v.tps.append(out.tokens_per_s)
        return n_gen


def _check_engine(engine: str, plan: BenchPlan, gen_tokens: int) -> None:
    """--engine genai: decoders, batch 1, .onnx files (checked before any session is made)."""
    if engine == "ort":
        return
    if engine != "genai":
        raise ConfigError(f"--engine must be ort or genai; got {engine!r}")
    from fg_edge.runtimes.genai_engine import GENAI_PROVIDERS, require_genai

    require_genai()
    if plan.cdir.task != "causal-lm":
        raise ConfigError(f"--engine genai times decoder generation; {plan.cdir.path} holds a {plan.cdir.task} model")
    if gen_tokens <= 0:
        raise ConfigError("--engine genai times generation: give --gen-tokens > 0")
    if plan.batches != [1]:
        raise ConfigError(f"--engine genai times batch 1 (GenAI runs one sequence here); got --batch "
                          f"{','.join(map(str, plan.batches))}")
    for rp, files in plan.cases:
        if rp.name not in GENAI_PROVIDERS:
            raise ConfigError(f"--engine genai runs on {', '.join(GENAI_PROVIDERS)}; got provider {rp.name}")
        ort_files = [f.path.name for f in files if f.path.suffix == ".ort"]
        if ort_files:
            raise ConfigError(f"--engine genai runs .onnx files; provider {rp.name} would time {ort_files[0]}")


def run_bench(compiled_dir: str | Path, providers: Sequence[str] | str = ("cpu",), batches: Sequence[int] = (1,),
              seqs: Sequence[int] = (128,), threads: Sequence[int] = (1,), repeats: int = 20, warmup: int = 3,
              gen_tokens: int = 16, no_baseline: bool = False, graph_optimization: str = "all",
              progress: bool = True, seed: int = 0, models: Optional[Sequence[str] | str] = None,
              engine: str = "ort") -> dict[str, Any]:
    """Benchmark a compiled_dir; returns the bench.json dict (schema: fg_edge.runtimes.bench.schema). `models`:
    the variants to run (names.VARIANTS, e.g. "nnapi,qdq-nnapi"), each with its dense partner; default: see
    _variants_for. `engine`: who runs the decoders' generation loop ('ort': fg-edge's, 'genai')."""
    import onnxruntime as ort

    if repeats < 1 or warmup < 0:
        raise ConfigError(f"--repeats must be >= 1 and --warmup >= 0 (got {repeats}, {warmup})")
    plan = plan_bench(compiled_dir, providers, batches, seqs, threads, no_baseline, models)
    _check_engine(engine, plan, gen_tokens)
    mem_method, rss = memory_probe()
    load_start = load_average()
    bench = _Bench(plan, repeats, warmup, gen_tokens, graph_optimization, no_baseline, seed, rss, engine)
    bar = _Progress(bench.total_runs(), progress)
    try:
        rows = bench.run(bar)
    finally:
        bar.close()
    return {
        "schema_version": BENCH_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "compiled_dir": str(plan.cdir.path),
        "model_type": plan.cdir.model_type,
        "kind": bench.kind,
        "flop_ratio": plan.flop_ratio,
        "machine": {**machine_info(), "load_average_start": load_start, "load_average_end": load_average()},
        "onnxruntime": {"version": ort.__version__, "available_providers": list(ort.get_available_providers())},
        "settings": {"providers": plan.provider_names, "batches": plan.batches, "seqs": plan.seqs,
                     "threads": plan.threads, "repeats": repeats, "warmup": warmup, "gen_tokens": gen_tokens,
                     "graph_optimization": graph_optimization, "alternation": ALTERNATION,
                     "memory_method": mem_method, "no_baseline": no_baseline,
                     "models": plan.models, "engine": engine},
        "layers": plan.cdir.layers,
        "rows": rows,
    }
