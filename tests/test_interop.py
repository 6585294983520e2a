"""Compiled folders and other tools: optimum loads the ONNX model and agrees; a plain transformers from_pretrained
refuses the folder instead of loading random weights; config.json says which layers differ and how to load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fg_edge.formats.names import LEGACY_WEIGHTS_FILE, NOTE_KEY, WEIGHTS_FILE


def _batch(path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return tok(["good fine w1 w2", "bad", "w3 awful w4 w5 w6"], padding=True, return_tensors="pt")


def test_optimum_loads_the_compiled_onnx_and_agrees(cls_dir):
    ort_models = pytest.importorskip("optimum.onnxruntime")
    model = ort_models.ORTModelForSequenceClassification.from_pretrained(cls_dir.path, file_name="model.onnx")
    enc = _batch(cls_dir.path)
    got = model(**enc).logits
    with torch.no_grad():
        want = cls_dir.model(**enc).logits
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4)


def test_plain_from_pretrained_refuses_a_compiled_folder(cls_dir):
    from transformers import AutoModelForSequenceClassification

    for kwargs in ({}, {"ignore_mismatched_sizes": True}):
        with pytest.raises(OSError):
            AutoModelForSequenceClassification.from_pretrained(cls_dir.path, **kwargs)


def test_config_names_the_loader_and_the_layers_that_differ(cls_dir):
    config = json.loads((cls_dir.path / "config.json").read_text())
    note = config[NOTE_KEY]
    assert "fg_edge.compiler.load_compiled" in note and "layers 0, 1 differ" in note   # see conftest.cls_dir
    assert "fg_edge_plan" not in config and (cls_dir.path / "compile_plan.json").is_file()
    assert (cls_dir.path / WEIGHTS_FILE).is_file() and not (cls_dir.path / LEGACY_WEIGHTS_FILE).exists()


def test_folders_of_fg_edge_0_1_still_load(cls_dir, tmp_path):
    from fg_edge.compiler import load_compiled

    old = tmp_path / "old"
    shutil.copytree(cls_dir.path, old)
    (old / WEIGHTS_FILE).rename(old / LEGACY_WEIGHTS_FILE)
    enc = _batch(old)
    with torch.no_grad():
        assert torch.equal(load_compiled(old)(**enc).logits, cls_dir.model(**enc).logits)


def test_label_names_round_trip_train_compile_run_eval(tiny_bert_dir, sentiment_files, tmp_path):
    """--label-names on integer labels ends up as id2label everywhere: run prints the names, eval accepts data
    labelled with them (and with the integers); a wrong count is refused before any work."""
    from click.testing import CliRunner
    from conftest import sentiment_rows, write_tsv

    from fg_edge.cli import cli

    train, _ = sentiment_files
    run = CliRunner().invoke
    res = run(cli, ["train", str(tiny_bert_dir), "--task", "classification", "--train", train, "--steps", "2",
                    "--label-names", "negative,positive,neutral", "-o", str(tmp_path / "bad"), "--no-progress"])
    assert res.exit_code == 2 and "2 distinct names" in res.output and not (tmp_path / "bad").exists()
    res = run(cli, ["train", str(tiny_bert_dir), "--task", "classification", "--train", train, "--steps", "2",
                    "--label-names", "negative,positive", "-o", str(tmp_path / "md"), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = run(cli, ["compile", str(tmp_path / "md"), "-o", str(tmp_path / "c"), "--no-baseline", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads(run(cli, ["run", str(tmp_path / "c"), "good fine", "--json", "-"]).output)
    assert out["label"] in ("negative", "positive") and set(out["probabilities"]) == {"negative", "positive"}
    rows = sentiment_rows(20, seed=5)
    ids = write_tsv(tmp_path / "ids.tsv", rows)
    names = write_tsv(tmp_path / "named.tsv", [(t, ["negative", "positive"][y]) for t, y in rows])
    by_name = json.loads(run(cli, ["eval", str(tmp_path / "c"), "--data", names, "--json", "-"]).output)
    by_id = json.loads(run(cli, ["eval", str(tmp_path / "c"), "--data", ids, "--json", "-"]).output)
    assert by_name["results"]["compiled"]["rows"] == by_id["results"]["compiled"]["rows"] == 20
    assert by_name["results"]["compiled"]["value"] == by_id["results"]["compiled"]["value"]


def test_sentence_pairs_through_train_compile_run_eval(tmp_path):
    """A pair model is fed as it was trained: both texts in the tokenizer's pair template with their segment ids
    (ONNX logits = the compiled torch model's on HF-tokenized pairs), the training max_length, and an error when
    the second text is missing; eval finds the pair column in the folder's record."""
    import random

    from click.testing import CliRunner
    from conftest import NEGATIVE, NEUTRAL, POSITIVE

    from fg_edge.cli import cli
    from fg_edge.compiler import load_compiled
    from fg_edge.errors import InputMismatchError
    from fg_edge.runtimes.runner import Runner

    from conftest import tiny_tokenizer
    from fg_edge.testing import tiny_model

    base = tmp_path / "base"     # large init: segment embeddings that matter, so all-zero token types would show
    tiny_model("bert", task="classification", initializer_range=0.5).save_pretrained(base)
    tiny_tokenizer("encoder").save_pretrained(base)
    rng = random.Random(0)
    rows = [(" ".join(rng.sample(NEUTRAL, 3)), rng.choice(POSITIVE if i % 2 else NEGATIVE) + " w1", i % 2)
            for i in range(40)]
    data = tmp_path / "pairs.tsv"
    data.write_text("premise\thypothesis\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows))
    run = CliRunner().invoke
    res = run(cli, ["train", str(base), "--task", "classification", "--train", str(data), "--text-column",
                    "premise", "--text-pair-column", "hypothesis", "--steps", "2", "--max-length", "16",
                    "-o", str(tmp_path / "md"), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = run(cli, ["compile", str(tmp_path / "md"), "-o", str(tmp_path / "c"), "--no-baseline", "--no-progress"])
    assert res.exit_code == 0, res.output

    runner = Runner(tmp_path / "c")
    assert runner.pair_column == "hypothesis" and runner.max_length == 16
    texts, pairs = [a for a, _, _ in rows[:5]], [b for _, b, _ in rows[:5]]
    ids, _, types = runner.encode_padded(texts, pairs)
    assert types.max() == 1 and ids.shape[1] <= 16
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(tmp_path / "c")(texts, pairs, padding=True, truncation=True, max_length=16,
                                                          return_tensors="pt")
    with torch.no_grad():
        want = load_compiled(tmp_path / "c")(**enc).logits.numpy()
    got = runner.logits(texts, pairs)
    np.testing.assert_allclose(got, want, atol=1e-5)
    zero_types = runner.model.run(runner.model.encoder_feeds(*runner.encode_padded(texts, pairs)[:2]), ["logits"])
    assert np.abs(zero_types["logits"] - want).max() > 100 * np.abs(got - want).max()
    with pytest.raises(InputMismatchError, match="--pair"):
        runner.run(texts[0])

    out = json.loads(run(cli, ["run", str(tmp_path / "c"), texts[0], "--pair", pairs[0], "--json", "-"]).output)
    assert out["probabilities"] and out["label"]
    report = json.loads(run(cli, ["eval", str(tmp_path / "c"), "--data", str(data), "--json", "-"]).output)
    labels = np.array([y for _, _, y in rows])
    expected = float((runner.logits([a for a, _, _ in rows], [b for _, b, _ in rows]).argmax(-1) == labels).mean())
    assert report["results"]["compiled"]["value"] == pytest.approx(expected)
