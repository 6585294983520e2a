"""`fg-edge compile --ort-format --ort-target nnapi`: .nnapi.ort files at ORT's basic level with no contrib op,
parity-checked, a partition estimate per file, selectable by run / eval / bench; bad option combinations."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from conftest import sentiment_rows, tiny_tokenizer, write_tsv

from fg_edge.cli import cli
from fg_edge.errors import ExportError
from fg_edge.model_dir import save_model_dir
from fg_edge.testing import gated_tiny_model

NNAPI_FILES = ("model.nnapi.ort", "baseline.nnapi.ort", "model.qdq.nnapi.ort", "baseline.qdq.nnapi.ort")


def _model_dir(root, model_type):
    kind = "decoder" if model_type in ("qwen2", "llama") else "encoder"
    model, gates = gated_tiny_model(model_type, {0: [0]}, {0: slice(None, None, 3), 1: slice(None, None, 3)})
    train = write_tsv(root / "train.tsv", sentiment_rows(24, seed=3))
    return save_model_dir(model, gates, root / f"{model_type}_run", tokenizer=tiny_tokenizer(kind),
                          metadata={"data": {"train": {"path": train, "format": "tsv"}}})


def _compile(*args):
    return CliRunner().invoke(cli, ["compile", *map(str, args), "--no-progress"])


@pytest.fixture(scope="module")
def nnapi_out(tmp_path_factory):
    """A tiny BERT compiled with --quantize qdq --ort-format --ort-target nnapi (and the CLI's output)."""
    root = tmp_path_factory.mktemp("nnapi")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        res = _compile(_model_dir(root, "bert"), "-o", root / "out", "--quantize", "qdq", "--ort-format",
                       "--ort-target", "nnapi")
    assert res.exit_code == 0, res.output
    return root / "out", res.output


def test_nnapi_target_writes_contrib_free_ort_files(nnapi_out):
    from fg_edge.exporters.ort_format import ort_operators

    out, output = nnapi_out
    for name in NNAPI_FILES + ("required_operators.nnapi.config",):
        assert (out / name).is_file(), name
    assert not (out / "model.ort").exists()          # only the targets asked for
    for name in NNAPI_FILES:                        # read from the shipped file itself
        domains = ort_operators(out / name)
        assert set(domains) == {"ai.onnx"}, (name, domains)
    assert "DequantizeLinear" in ort_operators(out / "model.qdq.nnapi.ort")["ai.onnx"]
    assert "com.microsoft" not in (out / "required_operators.nnapi.config").read_text()
    assert "# - model.qdq.nnapi.ort" in (out / "required_operators.nnapi.config").read_text()
    report = json.loads((out / "compile_report.json").read_text())
    ort = report["ort_format"]
    assert ort["targets"]["nnapi"]["optimization_level"] == "basic" and sorted(ort["files"]) == sorted(NNAPI_FILES)
    assert ort["for"]["model.nnapi.ort"] == "NNAPI, CoreML" and ort["for"]["model.qdq.nnapi.ort"].startswith("NNAPI")
    # fp32 files gate the compile like the .onnx they come from; QDQ ones are measured only
    assert ort["parity"]["model.nnapi.ort"]["check"] == "gated" and ort["parity"]["model.nnapi.ort"]["passed"]
    assert ort["parity"]["baseline.nnapi.ort"]["passed"]
    assert ort["parity"]["model.qdq.nnapi.ort"]["check"] == "report-only"
    for name in NNAPI_FILES:                        # the estimate of each shipped file
        nnapi = report["mobile_partitions"][name]["NNAPI"]
        assert nnapi["with_fixed_shapes"]["nodes"] > 0
        assert not any(op.startswith("com.microsoft:") for op in nnapi["with_fixed_shapes"]["unsupported_ops"])
    rows = {r["file"]: r for r in report["summary"]}
    assert rows["model.nnapi.ort"]["parity"] == "pass" and rows["model.qdq.nnapi.ort"]["parity"] == "report only"
    # the table says which file is for which EP, and what NNAPI / CoreML take of each
    assert "  for" in output and "NNAPI, CoreML" in output and "mobile estimate" in output
    assert any(line.startswith("model.qdq.nnapi.ort: NNAPI ") and "CoreML MLProgram" in line
               for line in output.splitlines())
    # what NNAPI still lacks is said, with what would help (opset 17 exports LayerNormalization as one op)
    assert "hint: NNAPI takes no LayerNormalization" in output and "--opset 16" in output
    assert ort["targets"]["nnapi"]["hints"]


def test_nnapi_files_selectable_by_run_eval_bench(nnapi_out, tmp_path):
    from fg_edge.runtimes.bench.run import plan_bench
    from fg_edge.runtimes.evaluate import evaluate
    from fg_edge.runtimes.runner import Runner

    out, _ = nnapi_out
    runner = Runner(out, model="qdq-nnapi", provider="mobile")
    assert runner.file.path.name == "model.qdq.nnapi.ort" and "label" in runner.run("good w1")
    dev = write_tsv(tmp_path / "dev.tsv", sentiment_rows(8, seed=5))
    results = evaluate(out, dev)["results"]
    assert {"nnapi", "baseline-nnapi", "qdq-nnapi", "baseline-qdq-nnapi"} <= set(results)
    plan = plan_bench(out, "mobile", "1", "8", "1", no_baseline=False, models="nnapi,qdq-nnapi")
    assert [f.path.name for f in plan.cases[0][1]] == ["model.nnapi.ort", "baseline.nnapi.ort",
                                                       "model.qdq.nnapi.ort", "baseline.qdq.nnapi.ort"]
    res = CliRunner().invoke(cli, ["bench", str(out), "--models", "int8", "--no-progress", "-o", str(tmp_path / "b")])
    assert res.exit_code != 0 and "model.int8.onnx" in res.output


@pytest.mark.parametrize("args, message", [
    (["--ort-target", "nnapi"], "--ort-target nnapi needs --ort-format"),
    (["--ort-format", "--ort-target", "nnapi", "--quantize", "int8"], "--ort-target nnapi cannot take --quantize int8"),
])
def test_nnapi_bad_combinations_fail_before_work(tmp_path, args, message):
    out = tmp_path / "out"
    res = _compile(tmp_path / "no-such-model-dir", "-o", out, *args)    # options are checked before the input
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_nnapi_target_refused_for_decoders(tmp_path):
    out = tmp_path / "out"
    res = _compile(_model_dir(tmp_path, "qwen2"), "-o", out, "--ort-format", "--ort-target", "nnapi")
    assert res.exit_code != 0 and "--ort-target nnapi is refused for decoders" in res.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_contrib_ops_fail_loudly_and_leave_nothing(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from fg_edge.exporters.ort_format import LEVEL_ENV, convert_to_ort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, tmp_path / "model.onnx")
    before = os.environ.get(LEVEL_ENV)
    with pytest.raises(ExportError, match=r"contrib ops.*model\.nnapi\.ort: com\.microsoft:Gelu"):
        convert_to_ort([tmp_path / "model.onnx"], tmp_path, target="nnapi")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert os.environ.get(LEVEL_ENV) == before
    # the cpu target takes contrib ops (they are what its full optimisation fuses into)
    info = convert_to_ort([tmp_path / "model.onnx"], tmp_path)
    assert info["operators"]["model.ort"] == {"com.microsoft": ["Gelu"]} and info["optimization_level"] == "all"
