"""`fg-edge compile`: compiled_dir contents, report, int8 / QDQ / ORT options, parity gate and bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner
from conftest import sentiment_rows, tiny_tokenizer, write_tsv

from fg_edge.cli import cli
from fg_edge.model_dir import save_model_dir
from fg_edge.testing import DECODERS, gated_tiny_model


def make_model_dir(tmp_path, model_type, tokenizer=True):
    every_third = slice(None, None, 3)
    model, gate_config = gated_tiny_model(model_type, {0: [0], 1: slice(2, None)}, {0: every_third, 1: every_third})
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(40, seed=3))
    kind = "decoder" if model_type in DECODERS else "encoder"
    path = tmp_path / f"{model_type}_run"
    save_model_dir(model, gate_config, path, tokenizer=tiny_tokenizer(kind) if tokenizer else None,
                   metadata={"data": {"train": {"path": train, "format": "tsv"}}})
    return path


def invoke(*args):
    result = CliRunner().invoke(cli, ["compile", *map(str, args), "--no-progress"])
    return result


def _no_leftovers(parent):
    return not [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.fixture
def bert_dir(tmp_path):
    return make_model_dir(tmp_path, "bert")


def test_compile_bert_int8_ort(tmp_path, bert_dir):
    out = tmp_path / "out"
    dev = write_tsv(tmp_path / "dev.tsv", sentiment_rows(24, seed=4))
    res = invoke(bert_dir, "-o", out, "--quantize", "int8", "--per-channel", "--ort-format", "--eval-data", dev)
    assert res.exit_code == 0, res.output
    for name in ("model.onnx", "baseline.onnx", "model.int8.onnx", "baseline.int8.onnx", "model.ort",
                 "baseline.ort", "model.int8.ort", "required_operators.config", "config.json", "tokenizer.json",
                 "compile_report.json", "fg_edge_compiled.safetensors"):
        assert (out / name).is_file(), name
    report = json.loads((out / "compile_report.json").read_text())
    assert report["onnx_parity"]["model.onnx"]["passed"] and report["onnx_parity"]["baseline.onnx"]["passed"]
    assert report["onnx_parity"]["model.onnx"]["max_abs_diff"] <= 1e-4
    assert report["totals"]["params_after"] < report["totals"]["params_before"]  # compiler report kept
    assert report["export"]["opset"] == 17 and report["export"]["token_type_ids"] is True
    q = report["quantization"]
    assert q["settings"]["per_channel"] is True and q["settings"]["weight_type"] == "QInt8"
    assert q["files"]["model.int8.onnx"]["quantized_ops"]["MatMulInteger"] >= 4
    assert "max_abs_diff" in q["files"]["model.int8.onnx"]["vs_gated_model"]
    # one status vocabulary: fp32 graphs gate the compile; int8 is measured only, with no "passed" to misread
    assert report["onnx_parity"]["model.onnx"]["check"] == "gated"
    int8 = q["files"]["model.int8.onnx"]["vs_gated_model"]
    assert int8["check"] == "report-only" and "passed" not in int8 and isinstance(int8["within_tolerance"], bool)
    assert "stage_seconds" not in report and report["timings_s"]["total"] >= max(
        v for k, v in report["timings_s"].items() if k != "total")
    # the recorded int8 accuracy is what fg-edge eval measures on the same rows
    from fg_edge.runtimes.evaluate import evaluate

    measured = evaluate(out, dev, variants=["int8"])["results"]["int8"]["value"]
    assert q["task_metric"]["model.int8.onnx"] == pytest.approx(measured) and "quantized_change" in q["task_metric"]
    assert "NNAPI" in report["mobile_partitions"]["model.onnx"]
    # the mobile estimate also describes every shipped .ort: the graph ORT optimised into it, fused contrib ops
    # (e.g. DynamicQuantizeMatMul) included, which the exported int8 ONNX does not show
    parts = report["mobile_partitions"]
    assert set(report["ort_format"]["files"]) <= set(parts)
    shipped_ops = parts["model.int8.ort"]["NNAPI"]["as_exported"]["unsupported_ops"]
    assert any(op.startswith("com.microsoft:") for op in shipped_ops), shipped_ops
    assert not any(op.startswith("com.microsoft:")
                   for op in parts["model.onnx"]["NNAPI"]["as_exported"]["unsupported_ops"])
    assert report["files"]["model.onnx"] == (out / "model.onnx").stat().st_size
    assert "fg_edge_layers" in json.loads((out / "config.json").read_text())
    # summary table on the terminal
    assert "model.onnx" in res.output and "FLOP ratio" in res.output and "pass" in res.output
    assert _no_leftovers(tmp_path)


def test_compile_decoder_default_output(tmp_path):
    model_dir = make_model_dir(tmp_path, "qwen2")
    res = invoke(model_dir, "--parity-steps", "8")
    assert res.exit_code == 0, res.output
    out = tmp_path / "qwen2_run_compiled"
    report = json.loads((out / "compile_report.json").read_text())
    assert report["export"]["kv_shapes"] == [[2, 8], [1, 8]]  # per layer, not the config's 2 everywhere
    assert report["onnx_parity"]["model.onnx"]["token_agreement"] == 1.0
    assert report["onnx_parity"]["baseline.onnx"]["kv_shapes"] == [[2, 8], [2, 8]]
    cfg = json.loads((out / "config.json").read_text())
    assert [r["kv_cache"]["num_heads"] for r in cfg["fg_edge_layers"]] == [2, 1]
    # the torch side reloads from the same folder
    from fg_edge.compiler import load_compiled

    assert load_compiled(out).model.layers[1].self_attn.k_proj.out_features == 8
    # existing output without --overwrite: refused, untouched; with --overwrite: replaced
    before = (out / "model.onnx").stat().st_mtime_ns
    res = invoke(model_dir, "--parity-steps", "2")
    assert res.exit_code != 0 and "already exists" in res.output and "--overwrite" in res.output
    assert (out / "model.onnx").stat().st_mtime_ns == before
    res = invoke(model_dir, "--parity-steps", "2", "--overwrite", "--no-baseline")
    assert res.exit_code == 0, res.output
    assert not (out / "baseline.onnx").exists() and _no_leftovers(tmp_path)


def test_compile_qdq_with_training_sentences(tmp_path, bert_dir):
    out = tmp_path / "qdq"
    res = invoke(bert_dir, "-o", out, "--quantize", "qdq", "--no-baseline")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "compile_report.json").read_text())
    assert report["quantization"]["calibration_source"].startswith("training data")
    ops = report["quantization"]["files"]["model.qdq.onnx"]["quantized_ops"]
    assert ops["QuantizeLinear"] >= 4 and ops["DequantizeLinear"] >= 4


def _nbits_by_name(path) -> dict:
    """{MatMulNBits name: (N, B, scales (N, blocks))} of an int4 file."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits":
            n = next(a.i for a in node.attribute if a.name == "N")
            out[node.name] = (n, inits[node.input[1]], inits[node.input[2]].reshape(n, -1))
    return out


def test_encoder_gptq_baseline_borrows_hessians(tmp_path, bert_dir):
    """An encoder's GPTQ compile: the dense baseline takes every Hessian factor from model.onnx's calibration run
    (the compiled BERT lost heads and FFN channels) and, for the outputs the compiler kept in query / key / value /
    FFN-in, the very codes model.int4.onnx has; both int4 files stay close to the gated model."""
    out = tmp_path / "out"
    cal = write_tsv(tmp_path / "cal.tsv", sentiment_rows(64, seed=5))
    res = invoke(bert_dir, "-o", out, "--quantize", "int4", "--quant-method", "gptq", "--calibration", cal)
    assert res.exit_code == 0, res.output
    files = json.loads((out / "compile_report.json").read_text())["quantization"]["files"]
    own, borrowed = files["model.int4.onnx"]["gptq_hessians"], files["baseline.int4.onnx"]["gptq_hessians"]
    assert own["borrowed"] == 0 and borrowed["borrowed"] == borrowed["activations"] == own["activations"] > 0
    model, base = _nbits_by_name(out / "model.int4.onnx"), _nbits_by_name(out / "baseline.int4.onnx")
    narrowed = [k for k in model if k in base and model[k][0] < base[k][0]]
    assert narrowed and borrowed["columns_reused"] >= sum(model[k][0] for k in narrowed)
    for k in narrowed:                      # each kept column's packed codes and scales, found in the baseline
        rows = {(b.tobytes(), s.tobytes()) for b, s in zip(base[k][1], base[k][2])}
        assert all((b.tobytes(), s.tobytes()) in rows for b, s in zip(model[k][1], model[k][2])), k
    for name in ("model.int4.onnx", "baseline.int4.onnx"):
        assert files[name]["vs_gated_model"]["max_abs_diff"] < 0.02, files[name]["vs_gated_model"]   # measured 1e-3


def test_injected_mismatch_fails_and_writes_nothing(tmp_path, bert_dir, monkeypatch):
    import fg_edge.exporters.onnx_export as ox

    real = ox.trace_to_onnx
    calls = []

    def perturbed(model, path, **kw):
        calls.append(path)
        # baseline.onnx is traced first, inside the compile stage (folded, nothing removed yet: a change there
        # would reach the compiled model too), model.onnx second
        if len(calls) == 2:
            with torch.no_grad():
                model.classifier.weight[0, 0] += 0.01
        return real(model, path, **kw)

    monkeypatch.setattr(ox, "trace_to_onnx", perturbed)
    out = tmp_path / "bad"
    res = invoke(bert_dir, "-o", out)
    assert res.exit_code != 0
    assert "model.onnx vs the gated model: max abs difference" in res.output and "exceeds tolerance 1.0e-04" in res.output
    assert not out.exists() and _no_leftovers(tmp_path)


@pytest.mark.parametrize("case", ["missing_dir", "missing_gates", "corrupt_config", "corrupt_weights",
                                  "opset", "calibration_missing", "parent_is_file", "unwritable", "tolerance_inf",
                                  "output_contains_model_dir"])
def test_bad_input(tmp_path, bert_dir, case):
    out = tmp_path / "out"
    args = [bert_dir, "-o", out]
    expect = None
    if case == "missing_dir":
        args[0], expect = tmp_path / "nope", "no such model_dir"
    elif case == "missing_gates":
        (bert_dir / "fg_edge_gates.safetensors").unlink()
        expect = "missing fg_edge_gates.safetensors"
    elif case == "corrupt_config":
        (bert_dir / "config.json").write_text("{not json")
        expect = str(bert_dir)
    elif case == "corrupt_weights":
        (bert_dir / "model.safetensors").write_bytes(b"\x00garbage" * 10)
        expect = str(bert_dir)
    elif case == "opset":
        args += ["--opset", "9"]
        expect = "14–20"
    elif case == "tolerance_inf":
        args += ["--tolerance", "inf"]
        expect = "finite"
    elif case == "output_contains_model_dir":
        args = [bert_dir, "-o", tmp_path, "--overwrite"]
        out = tmp_path / "never-written"
        expect = "contains the model_dir"
    elif case == "calibration_missing":
        args += ["--quantize", "qdq", "--calibration", tmp_path / "none.txt"]
        expect = "no such file"
    elif case == "parent_is_file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out"
        args = [bert_dir, "-o", out]
        expect = "is a file, not a folder"
    elif case == "unwritable":
        if os.geteuid() == 0:
            pytest.skip("root can write anywhere")
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "out"
        args = [bert_dir, "-o", out]
        expect = "permission denied"
    res = invoke(*args)
    assert res.exit_code != 0
    assert expect in res.output, res.output
    assert "Traceback" not in res.output
    assert not out.exists()
    assert _no_leftovers(tmp_path)
