"""`fg-edge bench`: compiled vs dense baseline (vs int8 variants) on ONNX Runtime, measured in one run.

Method (docs/DESIGN.md §4): for each provider x threads the sessions of every variant are created (creation time and
RSS delta recorded), then for each batch x seq shape every variant is warmed up and the timed runs alternate
between the variants round-robin (the order rotates every repeat, so no variant always runs first). Latency
is reported as median / p90 / p99; speed-up = baseline median / variant median, against the dense baseline of the
same precision family on the same provider, threads and shape. The FLOP ratio from compile_report.json is the
ceiling; `ceiling_fraction` = speed-up / FLOP ratio. Decoders also report time to first token (prompt of `seq`
tokens, empty cache) and tokens/s of cached generation (`gen_tokens` new tokens, no EOS stop).

    run.py      planning and measuring (`run_bench`)        rows.py     one row per variant, speed-ups
    schema.py   bench.json keys and `validate_result`       machine.py  platform, RSS probe, latency stats
    report.py   terminal table, bench.md, result files      chart.py    bench.png (matplotlib, optional)

The bench.json schema is documented in `fg_edge.runtimes.bench.schema`.
"""

from __future__ import annotations

from fg_edge.runtimes.bench.chart import write_chart
from fg_edge.runtimes.bench.machine import machine_info
from fg_edge.runtimes.bench.report import format_markdown, format_table, write_outputs
from fg_edge.runtimes.bench.run import parse_int_list, run_bench
from fg_edge.runtimes.bench.schema import BENCH_SCHEMA_VERSION, ROW_KEYS, TOP_KEYS, validate_result

__all__ = ["BENCH_SCHEMA_VERSION", "ROW_KEYS", "TOP_KEYS", "format_markdown", "format_table", "machine_info",
           "parse_int_list", "run_bench", "validate_result", "write_chart", "write_outputs"]
