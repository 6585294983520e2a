"""Quantized decoders end to end: `fg-edge compile --quantize int4 / int8-wo / qdq` on a tiny non-uniform LLaMA, the
quality measured at compile time (perplexity, greedy agreement vs fp32, far-off flag), and run / eval / bench
on the new variants; int8 dynamic refused for decoders."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import tiny_tokenizer

from fg_edge.cli import cli
from fg_edge.model_dir import save_model_dir
from fg_edge.testing import gated_tiny_model

TEXT = "good w1 w2 w3 bad w4\n\nw5 nice w6 w7 w8 w9 dull\n\nfine w10 w11 w12 w13 w14 w15 lovely w16\n"


def _model_dir(root, tied=False):
    model, gates = gated_tiny_model("llama", {0: [2, 3]}, {0: slice(None, None, 3)}, bos_token_id=4,
                                    eos_token_id=5, tie_word_embeddings=tied)
    return save_model_dir(model, gates, root / "llama", tokenizer=tiny_tokenizer("decoder"))


def compile_cli(*args):
    res = CliRunner().invoke(cli, ["compile", *map(str, args), "--no-progress", "--parity-steps", "4"])
    return res


@pytest.fixture(scope="module")
def int4_dir(tmp_path_factory):
    """A LLaMA whose layer 0 keeps 1 of 2 kv heads, compiled with int4 + quantized embedding (tied embeddings:
    test_weight_only)."""
    root = tmp_path_factory.mktemp("dec-int4")
    (root / "eval.txt").write_text(TEXT)
    res = compile_cli(_model_dir(root), "-o", root / "out", "--quantize", "int4", "--quantize-embedding",
                      "--eval-data", root / "eval.txt", "--quality-tokens", "8")
    assert res.exit_code == 0, res.output
    return root / "out", res.output, root / "eval.txt"


def test_int4_compile_writes_both_quantized_graphs_and_their_quality(int4_dir):
    out, output, eval_txt = int4_dir
    report = json.loads((out / "compile_report.json").read_text())
    q = report["quantization"]
    assert q["settings"]["mode"] == "int4" and q["settings"]["embedding"].startswith("quantized")
    for name in ("model.int4.onnx", "baseline.int4.onnx"):
        assert (out / name).is_file() and q["files"][name]["quantized_ops"]["MatMulNBits"] >= 7
        assert q["files"][name]["quantized_ops"]["GatherBlockQuantized"] == 1
        entry = q["quality"]["files"][name]
        assert entry["vs"] == "model.onnx" and 0 <= entry["greedy_agreement"] <= 1   # one fp32 reference
        assert entry["greedy_tokens"] == 8 * len(q["quality"]["prompts"]) and entry["perplexity"] > 1
        assert entry["max_abs_logit_diff"] < 0.2 and entry["flagged"] is (bool(entry["flag_reasons"]))
    assert q["quality"]["eval_text"] == str(eval_txt) and q["quality"]["new_tokens"] == 8
    # mixed precision (default edges): layer 0's v and down projections in 8 bits, in both graphs alike
    mixed = q["settings"]["mixed_bits"]
    assert mixed["policy"] == "edges" and mixed["layers"] == [0] and len(mixed["nodes"]) == 2
    assert "mixed bits (edges): 2 MatMuls in 8 bits" in output and "layers 0 of 2" in output
    for name in ("model.int4.onnx", "baseline.int4.onnx"):
        bits = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["bits"]
                for n in onnx.load(str(out / name), load_external_data=False).graph.node
                if n.op_type == "MatMulNBits"}
        assert [bits[n + "_Q8"] for n in mixed["nodes"]] == [8, 8] and list(bits.values()).count(4) >= 5
    row = next(r for r in report["summary"] if r["file"] == "model.int4.onnx")
    assert "greedy_agreement" in row and "perplexity_change" in row
    assert "quality vs fp32" in output and "greedy" in output and "\x1b[" not in output   # no colour off a tty
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["search"]["past_present_share_buffer"] is False and genai["model"]["decoder"]["filename"] == \
        "model.onnx" and genai["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert genai["model"]["eos_token_id"] == 5 and report["genai"]["decoder"] == "model.onnx"


def test_free_running_match_is_what_the_quantized_graph_generates(int4_dir):
    """The recorded free-running match, read from the teacher-forced pass, is the share of new tokens each int4
    graph generates on its own (cached, greedy) before its first difference from the fp32 graph's; never above
    the greedy agreement."""
    from fg_edge.exporters.pipeline.quality import _fp32_tokens, _prompt_ids
    from fg_edge.runtimes.generate import generate, left_pad
    from fg_edge.runtimes.runner import Runner

    out, _, _ = int4_dir
    quality = json.loads((out / "compile_report.json").read_text())["quantization"]["quality"]
    fp32 = Runner(out, model="compiled")
    prompts, n = _prompt_ids(fp32, quality["new_tokens"])
    _, _, new = _fp32_tokens(fp32, prompts, n)
    pad = fp32.cdir.pad_token_id()
    ids, mask = left_pad(prompts, pad)
    for variant, name in (("int4", "model.int4.onnx"), ("baseline-int4", "baseline.int4.onnx")):
        own = generate(Runner(out, model=variant).model, ids, mask, max_new_tokens=n, pad_id=pad,
                       stop_at_eos=False).new_tokens
        same = own == new
        prefix = [int(np.argmin(row)) if not row.all() else row.size for row in same]
        entry = quality["files"][name]
        assert entry["free_running_match"] == pytest.approx(np.mean(prefix) / n)
        assert entry["free_running_match"] <= entry["greedy_agreement"]


def test_recorded_perplexity_is_what_eval_measures(int4_dir):
    from fg_edge.runtimes.evaluate import evaluate

    out, _, eval_txt = int4_dir
    quality = json.loads((out / "compile_report.json").read_text())["quantization"]["quality"]["files"]
    results = evaluate(out, eval_txt, variants=["compiled", "int4", "baseline-int4"])["results"]
    assert quality["model.int4.onnx"]["perplexity"] == pytest.approx(results["int4"]["value"])
    assert quality["model.int4.onnx"]["perplexity_fp32"] == pytest.approx(results["compiled"]["value"])
    assert quality["baseline.int4.onnx"]["perplexity"] == pytest.approx(results["baseline-int4"]["value"])


def test_run_eval_bench_know_the_int4_variants(int4_dir, tmp_path):
    from fg_edge.runtimes.bench import run_bench
    from fg_edge.runtimes.runner import Runner

    out, _, eval_txt = int4_dir
    res = CliRunner().invoke(cli, ["run", str(out), "good w1", "--model", "int4", "--max-new-tokens", "3",
                                   "--json", "-"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["file"].endswith("model.int4.onnx")
    assert len(Runner(out, model="baseline-int4").generate("w1 w2", max_new_tokens=3).token_ids) <= 3
    res = CliRunner().invoke(cli, ["eval", str(out), "--data", str(eval_txt), "--models", "int4,baseline-int4"])
    assert res.exit_code == 0 and "4-bit weights" in res.output, res.output
    bench = run_bench(out, seqs=[4], repeats=1, warmup=0, gen_tokens=2, progress=False)
    rows = {r["variant"]: r for r in bench["rows"]}
    assert set(rows) == {"compiled", "baseline", "int4", "baseline-int4"}
    assert rows["int4"]["baseline_variant"] == "baseline-int4" and rows["int4"]["precision"] == "int4"


def test_mobile_profile_runs_a_decoders_int4(int4_dir):
    """The mobile profile takes the quantized variant a decoder ships as (int4; int8 dynamic is refused for
    decoders) for `run` and `bench`, against its own quantized baseline."""
    from fg_edge.formats.compiled_dir import CompiledDir
    from fg_edge.runtimes.bench.run import _variants_for
    from fg_edge.runtimes.providers import PROVIDERS
    from fg_edge.runtimes.runner import Runner

    out, _, _ = int4_dir
    assert Runner(out, provider="mobile").variant == "int4"
    files = _variants_for(CompiledDir(out), PROVIDERS["mobile"], no_baseline=False)
    assert [f.path.name for f in files] == ["model.int4.onnx", "baseline.int4.onnx"]
    assert [f.path.name for f in _variants_for(CompiledDir(out), PROVIDERS["cpu"], True)][:2] == [
        "model.onnx", "model.int4.onnx"]


def test_quality_in_the_parity_sessions_equals_a_fresh_measurement(int4_dir):
    """The compile measures quality in the sessions its parity checks opened (model.onnx's fp32 side at the
    parity stage, each int4 file right after its own check); measured afterwards with fresh runtime sessions on
    the written folder, the figures are the same."""
    from fg_edge.data.readers import load_texts
    from fg_edge.exporters.pipeline import quality

    out, _, eval_txt = int4_dir
    got = json.loads((out / "compile_report.json").read_text())["quantization"]["quality"]
    texts = [t for t in load_texts(eval_txt, what="--eval-data file").texts if t.strip()]
    fresh = quality.measure_quality(out, [("compiled", "int4"), ("compiled", "baseline-int4")], 8, texts,
                                    str(eval_txt))
    assert got["files"].keys() == fresh["files"].keys() == {"model.int4.onnx", "baseline.int4.onnx"}
    for name, entry in fresh["files"].items():
        for key in ("perplexity", "perplexity_fp32", "greedy_agreement", "free_running_match",
                    "max_abs_logit_diff"):
            assert got["files"][name][key] == pytest.approx(entry[key], rel=1e-5, abs=1e-6), (name, key)


def test_far_off_variant_is_flagged_in_red(int4_dir, monkeypatch):
    from fg_edge.exporters.pipeline import quality
    from fg_edge.exporters.pipeline.summary import format_summary, summary_rows

    out, _, _ = int4_dir
    report = json.loads((out / "compile_report.json").read_text())
    monkeypatch.setattr(quality, "MIN_GREEDY_AGREEMENT", 1.01)     # nothing can reach it: flagged
    report["quantization"]["quality"] = quality.measure_quality(out, [("compiled", "int4")], 4)
    entry = report["quantization"]["quality"]["files"]["model.int4.onnx"]
    assert entry["flagged"] and "greedy agreement" in entry["flag_reasons"][0]
    report["summary"] = summary_rows(report)
    table = format_summary(report, color=True)
    assert "\x1b[31mmodel.int4.onnx" in table and "FAR OFF" in table and "is far off its fp32 graph" in table
    assert "FAR OFF" not in next(line for line in table.splitlines() if line.startswith("model.onnx"))


def test_int8_dynamic_refused_for_decoders(tmp_path):
    res = compile_cli(_model_dir(tmp_path), "-o", tmp_path / "out", "--quantize", "int8")
    assert res.exit_code == 1 and "refused for decoders" in res.output and "--quantize int4" in res.output
    assert not (tmp_path / "out").exists()


def test_qdq_and_int8_wo_decoders_compile_and_run(tmp_path):
    """QDQ calibration feeds each graph its own kv-head counts (the baseline keeps the heads the compiled model
    dropped), and run / eval take the qdq variants."""
    from fg_edge.runtimes.evaluate import evaluate
    from fg_edge.runtimes.runner import Runner

    (tmp_path / "cal.txt").write_text(TEXT)
    md = _model_dir(tmp_path, tied=True)
    res = compile_cli(md, "-o", tmp_path / "qdq", "--quantize", "qdq", "--calibration", tmp_path / "cal.txt",
                      "--quality-tokens", "4")
    assert res.exit_code == 0, res.output
    for variant in ("qdq", "baseline-qdq"):
        assert Runner(tmp_path / "qdq", model=variant).generate("good w1", max_new_tokens=3).token_ids
    assert set(evaluate(tmp_path / "qdq", tmp_path / "cal.txt")["results"]) == {"baseline", "compiled", "qdq",
                                                                                  "baseline-qdq"}
    res = compile_cli(md, "-o", tmp_path / "wo", "--quantize", "int8-wo", "--no-baseline", "--asymmetric",
                      "--quality-tokens", "4")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "wo" / "compile_report.json").read_text())["quantization"]
    assert report["settings"]["bits"] == 8 and report["settings"]["symmetric"] is False
    assert list(report["quality"]["files"]) == ["model.int8-wo.onnx"]
    assert report["quality"]["eval_text"].startswith("built-in sample")


def test_gptq_int4_compile_calibrates_on_text(tmp_path):
    """--quant-method gptq reads --calibration (packed into chunks within the position limit), writes integer
    zero points (no correction MatMuls) for both graphs, and is refused without calibration text."""
    (tmp_path / "cal.txt").write_text(TEXT * 20)
    md = _model_dir(tmp_path)
    res = compile_cli(md, "-o", tmp_path / "out", "--quantize", "int4", "--quant-method", "gptq", "--calibration",
                      tmp_path / "cal.txt", "--quality-tokens", "4")
    assert res.exit_code == 0, res.output
    q = json.loads((tmp_path / "out" / "compile_report.json").read_text())["quantization"]
    assert q["settings"]["method"] == "gptq" and q["calibration_source"] == str(tmp_path / "cal.txt")
    assert q["settings"]["gptq"]["calibration_tokens"] > 100
    for name in ("model.int4.onnx", "baseline.int4.onnx"):
        ops = q["files"][name]["quantized_ops"]
        assert ops["MatMulNBits"] >= 7 and "ZeroPointCorrection" not in ops
        assert q["quality"]["files"][name]["max_abs_logit_diff"] < 0.2
    hessians = [q["files"][name]["gptq_hessians"] for name in ("model.int4.onnx", "baseline.int4.onnx")]
    assert hessians[0]["borrowed"] == 0 and hessians[0]["activations"] > 0        # collected, then shared
    assert hessians[0]["columns_reused"] == 0 and hessians[1]["columns_reused"] > 0   # q / k / v, gate / up
    assert hessians[1] == {**hessians[0], "borrowed": hessians[0]["activations"], "borrowed_from": "model.onnx",
                           "columns_reused": hessians[1]["columns_reused"]}
    assert not list(tmp_path.glob("*.npz")) and not list((tmp_path / "out").glob("*.npz"))
    res = compile_cli(md, "-o", tmp_path / "none", "--quantize", "int4", "--quant-method", "gptq")
    assert res.exit_code == 1 and "--quant-method gptq needs calibration text" in res.output, res.output
    assert not (tmp_path / "none").exists()


def test_int4_default_method_follows_the_calibration_text_at_hand(tmp_path):
    """--quantize int4 without --quant-method: gptq on the training data training.json records while that file can
    be read (the report says why), hqq once it cannot or without a tokenizer; --calibration alone picks gptq."""
    from fg_edge.exporters.pipeline.loading import choose_int4_method
    from fg_edge.exporters.pipeline.options import CompileOptions

    (tmp_path / "train.txt").write_text(TEXT * 20)
    md = _model_dir(tmp_path)
    (md / "training.json").write_text(json.dumps({"data": {"train": {"path": str(tmp_path / "train.txt")}}}))
    res = compile_cli(md, "-o", tmp_path / "out", "--quantize", "int4", "--quality-tokens", "4")
    assert res.exit_code == 0, res.output
    q = json.loads((tmp_path / "out" / "compile_report.json").read_text())["quantization"]
    assert q["settings"]["method"] == "gptq" and "training.json" in q["method_choice"]
    assert q["calibration_source"] == "training data recorded in training.json"
    assert "ZeroPointCorrection" not in q["files"]["model.int4.onnx"]["quantized_ops"]

    options = CompileOptions(quantize="int4").validate()
    (tmp_path / "train.txt").unlink()
    chosen, calib, why = choose_int4_method(options, md, tokenizer=object())
    assert chosen.quant_method == "hqq" and calib is None and "no readable training data" in why
    (tmp_path / "train.txt").write_text(TEXT)
    chosen, calib, why = choose_int4_method(options, md, tokenizer=None)
    assert chosen.quant_method == "hqq" and "no tokenizer" in why
    chosen, calib, _ = choose_int4_method(options, md, tokenizer=object())
    assert chosen.quant_method == "gptq" and calib[0] and options.quant_method is None
    asked = CompileOptions(quantize="int4", calibration=str(tmp_path / "train.txt"))
    given = asked.validate()
    assert given.quant_method == "gptq" and given.needs_calibration == "--quant-method gptq"
    assert asked.quant_method is None                       # validate() returns the resolved options
    assert CompileOptions(quantize="int8-wo", calibration=str(tmp_path / "train.txt")).validate().quant_method is None


@pytest.mark.parametrize("args,match", [
    (["--quantize", "int4", "--block-size", "24"], "--block-size 24"),
    (["--quantize", "int4", "--quant-method", "hqq", "--symmetric"], "drop --symmetric"),
    (["--quantize", "qdq", "--quantize-embedding"], "--quantize-embedding needs a weight-only mode"),
])
def test_bad_quantize_options_fail_before_work(tmp_path, args, match):
    res = compile_cli(tmp_path / "missing", "-o", tmp_path / "out", *args)
    assert res.exit_code != 0 and match in res.output, res.output


@pytest.mark.parametrize("filename,variant", [("model.onnx", "compiled"), ("model.int4.onnx", "int4")])
def test_onnxruntime_genai_generates_the_same_greedy_tokens(int4_dir, tmp_path, filename, variant):
    """genai_config.json (past_present_share_buffer false) lets ONNX Runtime GenAI run the non-uniform folder:
    32 greedy steps identical to fg-edge's runtime, for the fp32 and the int4 graph."""
    og = pytest.importorskip("onnxruntime_genai", reason="pip install 'fg-edge[genai]' (onnxruntime-genai)")
    import shutil

    from fg_edge.exporters.genai_config import write_genai_config
    from fg_edge.runtimes.runner import Runner

    out = int4_dir[0]
    folder = tmp_path / "genai"
    shutil.copytree(out, folder)
    write_genai_config(folder, filename)
    model, runner = og.Model(str(folder)), Runner(folder, model=variant)
    for prompt in ([4, 10, 11, 12], [4, 20, 7]):
        ours = runner.generate_ids([prompt], max_new_tokens=32).new_tokens[0].tolist()
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + 32, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        while not generator.is_done():
            generator.generate_next_token()
        theirs = [int(t) for t in generator.get_sequence(0)][len(prompt):]
        assert theirs == ours[: len(theirs)] and len(theirs) == len(ours), (ours, theirs)
        assert len(set(ours)) > 1 or 5 in ours        # a real sequence, not one repeated token


@pytest.mark.parametrize("variant", ["compiled", "int4", "baseline-int4"])
def test_run_engine_genai_matches_the_ort_engine(int4_dir, variant):
    """`fg-edge run --engine genai` on every variant (the folder's genai_config.json, its file overlaid): the
    same greedy text as fg-edge's own loop."""
    pytest.importorskip("onnxruntime_genai", reason="pip install 'fg-edge[genai]' (onnxruntime-genai)")
    out = int4_dir[0]
    got = {}
    for engine in ("ort", "genai"):
        res = CliRunner().invoke(cli, ["run", str(out), "good w1 w2", "--model", variant, "--max-new-tokens", "24",
                                       "--engine", engine, "--threads", "1", "--json", "-"])
        assert res.exit_code == 0, res.output
        got[engine] = json.loads(res.output)
    assert got["genai"]["engine"] == "genai" and got["genai"]["file"] == got["ort"]["file"]
    assert got["genai"]["token_ids"] == got["ort"]["token_ids"] and len(got["ort"]["token_ids"]) > 1


def test_bench_engine_genai_times_generation(int4_dir, tmp_path):
    pytest.importorskip("onnxruntime_genai", reason="pip install 'fg-edge[genai]' (onnxruntime-genai)")
    res = CliRunner().invoke(cli, ["bench", str(int4_dir[0]), "--seq", "8", "--gen-tokens", "8", "--repeats", "2",
                                   "--warmup", "0", "--engine", "genai", "-o", str(tmp_path / "b"), "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert data["settings"]["engine"] == "genai"
    rows = {r["variant"]: r for r in data["rows"]}
    assert {"compiled", "int4", "baseline", "baseline-int4"} <= set(rows)
    assert all(r["decode_tokens_per_s"] > 0 and r["ttft_ms"] > 0 for r in rows.values())
    assert "generation by ONNX Runtime GenAI" in (tmp_path / "b" / "bench.md").read_text()


def test_engine_genai_bad_uses_fail_with_one_line(int4_dir, tmp_path, monkeypatch):
    """Batch > 1 in bench, and a missing package (simulated), each give one line naming what to change."""
    pytest.importorskip("onnxruntime_genai", reason="pip install 'fg-edge[genai]' (onnxruntime-genai)")
    res = CliRunner().invoke(cli, ["bench", str(int4_dir[0]), "--batch", "2", "--seq", "8", "--engine", "genai",
                                   "-o", str(tmp_path / "b"), "--no-progress"])
    assert res.exit_code != 0 and "--engine genai times batch 1" in res.output, res.output
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)      # import now raises ImportError
    res = CliRunner().invoke(cli, ["run", str(int4_dir[0]), "good", "--engine", "genai"])
    assert res.exit_code != 0 and "pip install 'fg-edge[genai]'" in res.output, res.output


def test_quality_text_is_capped_by_tokens():
    """The compile's perplexity check reads the leading documents up to MAX_EVAL_TOKENS (at least one)."""
    from types import SimpleNamespace

    from fg_edge.exporters.pipeline.quality import _token_capped

    tok = SimpleNamespace(encode_batch=lambda texts: [SimpleNamespace(ids=t.split()) for t in texts])
    texts = ["a b c", "d e", "f g h i", "j"]
    assert _token_capped(tok, texts, cap=5) == ["a b c", "d e"]
    assert _token_capped(tok, texts, cap=2) == ["a b c"]            # one document even when it is longer
    assert _token_capped(tok, texts, cap=100) == texts
