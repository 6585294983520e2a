"""Runtime harness (fg_edge.runtimes): providers, sessions, runner, torch-free path, bad inputs.

The compiled_dirs come from conftest.py (cls_dir, emb_dir, dec_dir): tiny gated models saved as a model_dir and
compiled by `fg_edge.exporters.pipeline.compile_model_dir`, so `model.onnx` has physically pruned heads / FFN
channels (layers differ in shape, the decoder carries per-layer kv-head counts) and every file the runtime reads
is the one `fg-edge compile` writes. Each fixture is (path, the compiled torch model), built once per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

onnxruntime = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from fg_edge.errors import (InputMismatchError, ModelDirError, ModelFileError, ProviderError,  # noqa: E402
                            ProviderUnavailableError)
from fg_edge.runtimes import providers as P  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _copy(src: Path, tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    import shutil

    dst = tmp_path / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop) if drop else None)
    return dst


# ------------------------------------------------------------------------------------------------------------
# providers
# ------------------------------------------------------------------------------------------------------------
def test_provider_table_covers_targets():
    want = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
            "xnnpack": "XnnpackExecutionProvider", "nnapi": "NnapiExecutionProvider",
            "coreml": "CoreMLExecutionProvider", "qnn": "QNNExecutionProvider",
            "openvino": "OpenVINOExecutionProvider", "dml": "DmlExecutionProvider", "webgpu": "WebGpuExecutionProvider"}
    for name, ep in want.items():
        assert P.PROVIDERS[name].ep == ep
        assert P.get_spec(ep).name == name                       # full EP names resolve too
    assert "onnxruntime-gpu" in P.PROVIDERS["cuda"].install
    assert "onnxruntime-openvino" in P.PROVIDERS["openvino"].install
    assert "onnxruntime-qnn" in P.PROVIDERS["qnn"].install
    assert "onnxruntime-directml" in P.PROVIDERS["dml"].install
    assert "Android" in P.PROVIDERS["nnapi"].install
    assert "macOS" in P.PROVIDERS["coreml"].install
    mobile = P.PROVIDERS["mobile"]
    assert mobile.ep == "CPUExecutionProvider" and mobile.max_threads == 2 and mobile.prefer_quantized[0] == "int8"
    assert mobile.display == "mobile (emulated on CPU EP)"
    assert P.resolve_provider("cpu").ep == "CPUExecutionProvider"
    rows = P.provider_table()
    assert any(r["name"] == "cpu" and r["available"] for r in rows)


def test_unknown_provider():
    with pytest.raises(ProviderError, match="unknown execution provider 'tpu9000'.*cpu, cuda"):
        P.resolve_provider("tpu9000")


@pytest.mark.parametrize("name,package", [("cuda", "onnxruntime-gpu"), ("openvino", "onnxruntime-openvino"),
                                          ("dml", "onnxruntime-directml"), ("nnapi", "Android")])
def test_unavailable_provider_names_package(monkeypatch, name, package):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "get_ep_devices", lambda: [])
    with pytest.raises(ProviderUnavailableError, match=package) as err:
        P.resolve_provider(name)
    assert P.PROVIDERS[name].ep in str(err.value)


def test_ep_library_option_errors(tmp_path):
    with pytest.raises(ProviderError, match="NAME=PATH"):
        P.register_ep_libraries(["no-equals-sign"])
    with pytest.raises(ProviderError, match="no such file"):
        P.register_ep_libraries([f"MyEP={tmp_path / 'missing.so'}"])
    bogus = tmp_path / "libbogus.so"
    bogus.write_bytes(b"not a shared library")
    assert hasattr(onnxruntime, "register_execution_provider_library")      # ORT >= 1.22 has plugin EPs
    with pytest.raises(ProviderError, match="cannot register"):
        P.register_ep_libraries([f"BogusEP={bogus}"])


def test_cuda_provider(cls_dir):
    """Runs only where onnxruntime-gpu offers CUDAExecutionProvider (skips cleanly elsewhere)."""
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("CUDAExecutionProvider not available (pip install onnxruntime-gpu on a CUDA machine)")
    from fg_edge.runtimes.runner import Runner

    d, _ = cls_dir
    gpu = Runner(d, provider="cuda")
    assert gpu.model.session.get_providers()[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu.logits(["good film"]), Runner(d).logits(["good film"]), atol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# runner
# ------------------------------------------------------------------------------------------------------------
def test_runner_classification(cls_dir):
    from fg_edge.runtimes.runner import Runner

    d, model = cls_dir
    r = Runner(d)
    assert r.kind == "classification" and r.variant == "compiled"
    texts = ["the movie was good", "bad plot"]
    out = r.classify(texts)
    assert {o["label"] for o in out} <= {"NEGATIVE", "POSITIVE"}
    assert all(abs(sum(o["probabilities"].values()) - 1) < 1e-6 for o in out)
    ids, mask, _ = r.encode_padded(texts)
    assert ids[1, -1] == 0 and mask[1, -1] == 0                      # padded on the right
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(r.logits(texts), ref, atol=1e-5)
    base = Runner(d, model="baseline")
    assert base.file.path.name == "baseline.onnx"
    assert Runner(d, model="int8").classify(texts)[0]["label"] in ("NEGATIVE", "POSITIVE")


def test_runner_mobile_profile(cls_dir):
    from fg_edge.runtimes.runner import Runner

    r = Runner(cls_dir[0], provider="mobile", threads=8)
    assert r.variant == "int8" and r.file.path.name == "model.int8.onnx"
    assert r.label == "mobile (emulated on CPU EP)"
    assert r.run("good")["provider"] == "mobile (emulated on CPU EP)"


def test_runner_embedding(emb_dir):
    from fg_edge.runtimes.runner import Runner

    d, model = emb_dir
    r = Runner(d)
    assert r.kind == "embedding"
    texts = ["a good film", "boring"]
    emb = r.embed(texts)
    ids, mask, _ = r.encode_padded(texts)
    with torch.no_grad():
        h = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    m = torch.tensor(mask)[..., None].float()
    ref = ((h * m).sum(1) / m.sum(1)).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    assert r.run("a good film", normalize=True)["dim"] == emb.shape[1]


def test_runner_decoder_matches_torch_greedy(dec_dir):
    from fg_edge.runtimes.generate import left_pad
    from fg_edge.runtimes.runner import Runner

    d, model = dec_dir
    r = Runner(d)
    assert r.kind == "causal-lm"
    layout = r.model.kv_layout()
    assert [(x["kv_heads"], x["head_dim"]) for x in layout] == [(1, 8), (2, 8)]    # per-layer, not global
    prompt = "once upon a time"
    res = r.generate(prompt, max_new_tokens=10)
    ids = r.encode([prompt])[0]
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)[0, len(ids):].tolist()
    assert res.token_ids == ref
    assert [s["key"][1] for s in res.kv_shapes] == [1, 2]
    assert res.kv_shapes[0]["key"][2] == len(ids) + len(ref) - 1
    # a left-padded batch of two prompts
    prompts = [r.encode(["once upon a time there"])[0], r.encode(["the girl"])[0]]
    out = r.generate_ids(prompts, max_new_tokens=6)
    pids, pmask = left_pad(prompts, 0)
    with torch.no_grad():
        ref2 = model.generate(torch.tensor(pids), attention_mask=torch.tensor(pmask), max_new_tokens=6,
                              do_sample=False, pad_token_id=0)[:, pids.shape[1]:]
    np.testing.assert_array_equal(out.new_tokens, ref2.numpy())


def test_sampling_is_seeded(dec_dir):
    from fg_edge.runtimes.runner import Runner

    r = Runner(dec_dir[0])
    a = r.generate("once", max_new_tokens=6, top_k=5, temperature=0.9, seed=7).token_ids
    b = r.generate("once", max_new_tokens=6, top_k=5, temperature=0.9, seed=7).token_ids
    assert a == b
    greedy = r.generate("once", max_new_tokens=6).token_ids
    assert r.generate("once", max_new_tokens=6, top_k=1, temperature=1.0, seed=3).token_ids == greedy


def test_cli_run(cls_dir, dec_dir, tmp_path):
    from click.testing import CliRunner

    from fg_edge.cli import cli

    res = CliRunner().invoke(cli, ["run", str(cls_dir[0]), "the film was good"])
    assert res.exit_code == 0, res.output
    assert "label:" in res.output
    res = CliRunner().invoke(cli, ["run", str(cls_dir[0]), "the film was good", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0 and "label:" in res.output                 # --json FILE: the text output stays
    assert json.loads((tmp_path / "r.json").read_text())["label"] in ("NEGATIVE", "POSITIVE")
    res = CliRunner().invoke(cli, ["run", str(dec_dir[0]), "once upon a time", "--max-new-tokens", "4", "--json", "-"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output[res.output.index("{"):])
    assert len(data["token_ids"]) <= 4 and [x["kv_heads"] for x in data["kv_layout"]] == [1, 2]
    res = CliRunner().invoke(cli, ["run", str(cls_dir[0]), "x", "--provider", "cuda"])
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert res.exit_code == 1 and "onnxruntime-gpu" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------
def test_corrupted_onnx(cls_dir, tmp_path):
    from click.testing import CliRunner

    from fg_edge.cli import cli
    from fg_edge.runtimes.runner import Runner

    d = _copy(cls_dir[0], tmp_path)
    (d / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    with pytest.raises(ModelFileError, match=str(d / "model.onnx")):
        Runner(d)
    res = CliRunner().invoke(cli, ["run", str(d), "good"])
    assert res.exit_code == 1 and "model.onnx" in res.output and "corrupted" in res.output


def test_mismatched_input_names(cls_dir):
    from fg_edge.runtimes.session import build_feeds, create_session

    sess = create_session(cls_dir[0] / "model.onnx")
    ids = np.ones((1, 4), dtype=np.int64)
    with pytest.raises(InputMismatchError) as err:
        build_feeds(sess, {"input_ids": ids, "mask": ids, "token_type_ids": ids}, "model.onnx")
    msg = str(err.value)
    assert "missing attention_mask" in msg and "unexpected mask" in msg
    assert "expected ['attention_mask', 'input_ids', 'token_type_ids']" in msg and "given" in msg
    feeds = build_feeds(sess, {"input_ids": ids.astype(np.int32), "attention_mask": ids, "token_type_ids": ids})
    assert feeds["input_ids"].dtype == np.int64                       # cast to the declared type


def test_missing_compiled_dir_and_variant(cls_dir, tmp_path):
    from fg_edge.runtimes.runner import Runner

    with pytest.raises(ModelDirError, match="does not exist"):
        Runner(tmp_path / "nope")
    d = _copy(cls_dir[0], tmp_path, drop=("*.int8.onnx",))
    with pytest.raises(ModelDirError, match="model.int8.onnx"):
        Runner(d, model="int8")


# ------------------------------------------------------------------------------------------------------------
# eval
# ------------------------------------------------------------------------------------------------------------
def test_eval_accuracy_side_by_side(cls_dir, tmp_path):
    from click.testing import CliRunner

    from fg_edge.cli import cli
    from fg_edge.runtimes.runner import Runner

    d = cls_dir[0]
    rows = [("the movie was \"good", 1), ("bad plot", 0), ("it was great fun", 1), ("boring 'story", 0)]
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))   # unquoted, GLUE style
    res = CliRunner().invoke(cli, ["eval", str(d), "--data", str(tsv), "--text-column", "sentence", "--json", "-"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    assert list(report["results"]) == ["baseline", "compiled", "int8", "baseline-int8"]
    pred = Runner(d).logits([t for t, _ in rows]).argmax(-1)
    assert report["results"]["compiled"]["value"] == pytest.approx(np.mean(pred == [y for _, y in rows]))
    jl = tmp_path / "dev.jsonl"
    jl.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    res = CliRunner().invoke(cli, ["eval", str(d), "--data", str(jl), "--max-rows", "3", "--models", "compiled"])
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "compiled" in res.output


def test_eval_perplexity(dec_dir, tmp_path):
    from fg_edge.runtimes.evaluate import evaluate

    d, model = dec_dir
    txt = tmp_path / "valid.txt"
    txt.write_text("once upon a time there was a girl and a boy\n\nthe story was fun\n")
    report = evaluate(d, txt, window=8)
    assert set(report["results"]) == {"baseline", "compiled"}
    comp = report["results"]["compiled"]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    nll, n = 0.0, 0
    for doc in ("once upon a time there was a girl and a boy", "the story was fun"):
        ids = tok.encode(doc).ids
        for s in range(0, len(ids) - 1, 7):
            chunk = torch.tensor([ids[s:s + 8]])
            if chunk.shape[1] < 2:
                continue
            with torch.no_grad():
                logp = torch.log_softmax(model(chunk).logits[0, :-1].double(), -1)
            nll -= logp[torch.arange(chunk.shape[1] - 1), chunk[0, 1:]].sum().item()
            n += chunk.shape[1] - 1
    assert comp["tokens"] == n
    assert comp["value"] == pytest.approx(np.exp(nll / n), rel=1e-4)


# ------------------------------------------------------------------------------------------------------------
# the runtime path never imports torch / transformers
# ------------------------------------------------------------------------------------------------------------
TORCH_FREE_SCRIPT = textwrap.dedent("""
    import importlib.abc, sys, json

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "optimum", "accelerate", "safetensors"):
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())
    cls_dir, dec_dir, out_dir, tsv = sys.argv[1:5]
    from fg_edge.runtimes.runner import Runner
    from fg_edge.runtimes.bench import run_bench, write_outputs, validate_result
    from fg_edge.runtimes.evaluate import evaluate
    from click.testing import CliRunner
    from fg_edge.cli import cli   # the real `fg-edge` group: importing it must not pull torch in either

    for args in (["run", dec_dir, "once upon", "--max-new-tokens", "2"],
                 ["eval", cls_dir, "--data", tsv],
                 ["bench", dec_dir, "--seq", "4", "--repeats", "1", "--warmup", "0", "--gen-tokens", "2",
                  "-o", out_dir + "-cli", "--no-progress"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, (args[0], res.output, res.exception)
    print(Runner(cls_dir).run("the film was good")["label"])
    print(Runner(dec_dir).generate("once upon a time", max_new_tokens=4).token_ids)
    res = run_bench(cls_dir, providers="cpu,mobile", seqs=[8], repeats=2, warmup=1, progress=False)
    validate_result(res)
    write_outputs(res, out_dir)
    res = run_bench(dec_dir, seqs=[4], repeats=2, warmup=0, gen_tokens=3, progress=False)
    print(evaluate(cls_dir, tsv)["results"]["compiled"]["value"])
    bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")]
    print("IMPORTED", bad)
    assert not bad, bad
""")


def test_runtime_path_never_imports_torch(cls_dir, dec_dir, tmp_path):
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("text\tlabel\nthe film was good\t1\nbad\t0\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE_SCRIPT, str(cls_dir[0]), str(dec_dir[0]),
                           str(tmp_path / "bench"), str(tsv)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IMPORTED []" in proc.stdout
    assert (tmp_path / "bench" / "bench.json").is_file()
