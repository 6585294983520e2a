"""`fg-edge bench` (fg_edge.runtimes.bench): output files and schema, decoders, missing baseline, bad options.

Timings are never asserted (docs/DESIGN.md §4: benchmarks write result files; unit tests check the files). The compiled_dirs
(cls_dir: BERT with int8 files, dec_dir: LLaMA with a KV cache) are written by the real compile pipeline (conftest.py).
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from fg_edge.errors import ConfigError, ModelDirError, ProviderError  # noqa: E402
from fg_edge.runtimes.bench import (BENCH_SCHEMA_VERSION, ROW_KEYS, TOP_KEYS, format_table,  # noqa: E402
                                    run_bench, validate_result, write_chart, write_outputs)


def _flop_ratio(cdir) -> float:
    """The ceiling `fg-edge compile` recorded in compile_report.json."""
    return json.loads((cdir / "compile_report.json").read_text())["totals"]["flop_ratio"]


def test_bench_writes_json_md_png(cls_dir, tmp_path):
    ratio = _flop_ratio(cls_dir.path)
    assert ratio > 1                                                          # the compiler removed something
    res = run_bench(cls_dir.path, providers="cpu,mobile", batches=[1, 2], seqs=[8], threads=[1], repeats=3, warmup=1,
                    progress=False)
    validate_result(res)
    paths = write_outputs(res, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["schema_version"] == BENCH_SCHEMA_VERSION
    assert set(TOP_KEYS) <= set(data) and all(set(ROW_KEYS) <= set(r) for r in data["rows"])
    for key in ("platform", "cpu_count", "processor", "load_average_start", "load_average_end"):
        assert key in data["machine"]
    assert len(data["machine"]["load_average_start"]) == 3                    # Linux has load averages
    assert data["onnxruntime"]["version"]
    assert data["flop_ratio"] == pytest.approx(ratio)
    assert data["layers"][1]["num_heads"] == 2
    cpu = [r for r in data["rows"] if r["provider"] == "cpu"]
    assert {r["variant"] for r in cpu} == {"compiled", "baseline", "int8", "baseline-int8"}
    assert len(cpu) == 4 * 2                                                  # variants x batches
    for r in cpu:
        assert r["latency_ms"]["n"] == 3
        assert r["latency_ms"]["median"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
        assert r["speedup"] > 0 and r["file_size_bytes"] > 0 and r["session_create_s"] > 0
        assert r["baseline_variant"] == {"compiled": "baseline", "int8": "baseline-int8"}.get(r["variant"],
                                                                                              r["variant"])
        if not r["dense"]:
            assert r["ceiling_fraction"] == pytest.approx(r["speedup"] / ratio)
        assert r["ttft_ms"] is None
    mobile = [r for r in data["rows"] if r["provider"] == "mobile"]
    assert {r["variant"] for r in mobile} == {"int8", "baseline-int8"}
    assert all(r["provider_label"] == "mobile (emulated on CPU EP)" and r["threads"] <= 2 for r in mobile)
    md = paths["md"].read_text()
    assert "mobile (emulated on CPU EP)" in md and "| provider |" in md and "ceiling" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(res)
    assert "speed-up" in table and f"{ratio:.3f}x" in table and "mobile (emulated on CPU EP)" in table


def test_bench_decoder_ttft_and_tokens_per_s(dec_dir):
    res = run_bench(dec_dir.path, seqs=[4], repeats=2, warmup=1, gen_tokens=4, progress=False)
    validate_result(res)
    assert res["kind"] == "causal-lm"
    for r in res["rows"]:
        assert r["ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0 and r["gen_tokens"] == 4


def test_bench_cli(cls_dir, tmp_path):
    from click.testing import CliRunner

    from fg_edge.cli.bench import bench_cmd

    out = tmp_path / "b"
    res = CliRunner().invoke(bench_cmd, [str(cls_dir.path), "--batch", "1", "--seq", "8", "--threads", "1",
                                         "--repeats", "2", "--warmup", "0", "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "speed-up" in res.output
    assert {p.name for p in out.iterdir()} == {"bench.json", "bench.md", "bench.png"}


def test_missing_baseline(cls_dir, tmp_path):
    d = tmp_path / "nobase"
    shutil.copytree(cls_dir.path, d, ignore=shutil.ignore_patterns("baseline*"))
    with pytest.raises(ModelDirError, match="no baseline.onnx.*--no-baseline"):
        run_bench(d, seqs=[8], repeats=1, warmup=0, progress=False)
    res = run_bench(d, seqs=[8], repeats=1, warmup=0, no_baseline=True, progress=False)
    validate_result(res)
    assert {r["variant"] for r in res["rows"]} == {"compiled", "int8"}
    assert all(r["speedup"] is None and r["baseline_variant"] is None for r in res["rows"])


def test_bench_bad_options(cls_dir):
    with pytest.raises(ProviderError, match="unknown execution provider"):
        run_bench(cls_dir.path, providers="cpu,warp-drive", progress=False)
    with pytest.raises(ConfigError, match="--batch"):
        run_bench(cls_dir.path, batches="1,x", progress=False)
    with pytest.raises(ConfigError, match="exceeds the model's 64 positions"):
        run_bench(cls_dir.path, seqs=[100], repeats=1, warmup=0, progress=False)


def test_chart_skipped_without_matplotlib(cls_dir, tmp_path, monkeypatch):
    res = run_bench(cls_dir.path, seqs=[8], repeats=1, warmup=0, progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert write_chart(res, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_busy_machine_is_flagged():
    from fg_edge.runtimes.bench.machine import busy_note

    assert busy_note({"cpu_count": 2, "load_average_start": [0.5, 0.4, 0.3], "load_average_end": [1.9, 1, 1]}) is None
    note = busy_note({"cpu_count": 2, "load_average_start": [0.5, 0.4, 0.3], "load_average_end": [3.2, 1, 1]})
    assert "busy" in note and "3.2" in note
    assert busy_note({"cpu_count": 2, "load_average_start": None, "load_average_end": None}) is None
