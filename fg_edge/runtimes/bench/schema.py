"""bench.json: its schema version, its keys and the check that a result dict has every documented key.

bench.json schema (BENCH_SCHEMA_VERSION = 1), every key always present (null where it does not apply):

    schema_version        int, BENCH_SCHEMA_VERSION
    created               ISO-8601 UTC time of the run
    compiled_dir          path benchmarked
    model_type            config.json model_type
    kind                  'classification' | 'embedding' | 'causal-lm'
    flop_ratio            FLOPs before / after from compile_report.json (speed-up ceiling), or null
    machine               {platform, system, machine, processor, cpu_count, python, load_average_start,
                           load_average_end} (1/5/15-minute load averages, None where the OS has none)
    onnxruntime           {version, available_providers}
    settings              {providers, batches, seqs, threads, repeats, warmup, gen_tokens, graph_optimization,
                           alternation, memory_method, no_baseline, models (--models; null: the defaults),
                           engine ('ort' | 'genai': who ran the generation rows' loop)}
    layers                config.json fg_edge_layers (per-layer heads / kv heads / head_dim / ffn_size)
    rows                  list of rows, one per provider x threads x batch x seq x variant:
      provider            short name ('cpu', 'mobile', 'cuda', ...)
      provider_label      how reports show it ('mobile (emulated on CPU EP)' for the mobile profile)
      ep                  ONNX Runtime execution provider name
      variant             'compiled' | 'baseline' | 'int8' | 'baseline-int8' | 'qdq' | 'baseline-qdq' | 'int4' |
                          'baseline-int4' | 'int8-wo' | 'baseline-int8-wo' | 'nnapi' | 'baseline-nnapi' | 'qdq-nnapi' |
                          'baseline-qdq-nnapi' (fg_edge.formats.names.VARIANTS; the *nnapi ones are .ort only)
      file                model file name;  format: 'onnx' | 'ort';  dense: bool
      precision           'fp32' | 'int8' | 'qdq' | 'int4' | 'int8-wo' (the variant's family)
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

from fg_edge.errors import ResultFileError

BENCH_SCHEMA_VERSION = 1
ROW_KEYS = ("provider", "provider_label", "ep", "variant", "file", "format", "precision", "dense", "file_size_bytes",
            "threads", "batch", "seq", "latency_ms", "throughput_seq_per_s", "throughput_tokens_per_s",
            "session_create_s", "rss_delta_mb", "baseline_variant", "speedup", "flop_ratio", "ceiling_fraction",
            "speedup_vs_dense_fp32", "ttft_ms", "decode_tokens_per_s", "gen_tokens")
TOP_KEYS = ("schema_version", "created", "compiled_dir", "model_type", "kind", "flop_ratio", "machine", "onnxruntime",
            "settings", "layers", "rows")


def validate_result(result: dict) -> None:
    """Raise ResultFileError (a ValueError) when a bench.json dict lacks a documented key (tests and readers)."""
    missing = [k for k in TOP_KEYS if k not in result]
    for i, row in enumerate(result.get("rows", [])):
        missing += [f"rows[{i}].{k}" for k in ROW_KEYS if k not in row]
    if missing:
        raise ResultFileError(f"bench.json lacks {', '.join(missing)}")
    if result["schema_version"] != BENCH_SCHEMA_VERSION:
        raise ResultFileError(f"bench.json schema_version {result['schema_version']} != {BENCH_SCHEMA_VERSION}")
