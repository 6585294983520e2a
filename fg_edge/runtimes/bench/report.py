"""Reports of a bench result: the terminal table, bench.md, and the result files (bench.json / .md / .png)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from fg_edge.formats.atomic import write_text_atomic
from fg_edge.runtimes.bench.chart import write_chart
from fg_edge.runtimes.bench.machine import busy_note

#: how every report explains its ratio columns
RATIO_NOTE = ("speed-up = dense baseline median / variant median (same provider, threads, shape, precision "
              "family); ceiling = FLOP ratio from compile_report.json; % ceil = speed-up / ceiling; "
              "vs fp32 = dense fp32 baseline median / variant median.")


def _fmt(v, spec: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _ratio(v) -> str:
    return _fmt(v, ".3f") + ("x" if v is not None else "")


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
                _ratio(r["speedup"]), _ratio(r["flop_ratio"]),
                _fmt(None if r["ceiling_fraction"] is None else 100 * r["ceiling_fraction"], ".0f"),
                _ratio(r["speedup_vs_dense_fp32"]),
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
    lines.append(RATIO_NOTE)
    busy = busy_note(result["machine"])
    if busy:
        lines.append(f"WARNING: {busy}")
    return "\n".join(lines)


def _ceiling(result: dict) -> Optional[str]:
    return "%.3fx" % result["flop_ratio"] if result["flop_ratio"] else None


def _header(result: dict) -> str:
    m, o = result["machine"], result["onnxruntime"]
    return (f"fg-edge bench: {result['compiled_dir']} ({result['model_type']}, {result['kind']}); "
            f"onnxruntime {o['version']}; {m['platform']}, {m['cpu_count']} CPUs, {m['processor'] or '?'}; "
            f"FLOP-ratio ceiling {_ceiling(result) or 'unknown'}; "
            f"{result['settings']['repeats']} repeats after {result['settings']['warmup']} warm-up, A/B alternated")


def format_markdown(result: dict) -> str:
    """bench.md: the settings as a list, then the table."""
    head, body = _table_rows(result)
    s = result["settings"]
    lines = ["# fg-edge bench", "",
             f"- compiled_dir: `{result['compiled_dir']}` ({result['model_type']}, {result['kind']})",
             f"- machine: {result['machine']['platform']}, {result['machine']['cpu_count']} CPUs, "
             f"{result['machine']['processor'] or 'unknown processor'}",
             f"- onnxruntime {result['onnxruntime']['version']}; providers {', '.join(s['providers'])}; "
             f"threads {s['threads']}; batches {s['batches']}; seqs {s['seqs']}",
             f"- {s['repeats']} timed repeats after {s['warmup']} warm-up runs; {s['alternation']}; "
             f"graph optimisation {s['graph_optimization']}; memory: {s['memory_method']}"
             + ("; generation by ONNX Runtime GenAI" if s.get("engine") == "genai" else ""),
             f"- FLOP-ratio ceiling (compile_report.json): {_ceiling(result) or 'unknown'}",
             "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    if any(r["provider"] == "mobile" for r in result["rows"]):
        lines += ["", "The mobile rows are emulated on the CPU EP (1-2 threads, .ort / int8 models when present); "
                      "they are not measurements on a phone."]
    lines += ["", "speed-up = dense baseline median / variant median (same provider, threads, shape and precision "
                  "family); % ceil = speed-up / FLOP ratio.", ""]
    busy = busy_note(result["machine"])
    if busy:
        lines += [f"**Warning:** {busy}.", ""]
    return "\n".join(lines)


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Optional[Path]]:
    """bench.json, bench.md and bench.png into out_dir (created); returns the paths written (png: None when
    matplotlib is not installed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Optional[Path]] = {"json": out / "bench.json", "md": out / "bench.md"}
    write_text_atomic(paths["json"], json.dumps(result, indent=2) + "\n")
    write_text_atomic(paths["md"], format_markdown(result))
    paths["png"] = write_chart(result, out / "bench.png")
    return paths
