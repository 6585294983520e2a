"""Distillation from a fine-tuned classifier: `fg-edge finetune` → `fg-edge train --teacher`, and its errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_tokenizer
from fg_edge.data.readers import load_classification
from fg_edge.data.tokenize import pad_collate, tokenize_classification
from fg_edge.errors import ConfigError
from fg_edge.train.finetune import FinetuneArgs, finetune, save_finetuned
from fg_edge.train.teacher import CachedTeacher, load_teacher
from fg_edge.testing import tiny_model


def _save_hf(model, path, tokenizer=None):
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def base_dir(tmp_path):
    return _save_hf(tiny_model("bert", task="classification"), tmp_path / "base", tiny_tokenizer("encoder"))


def test_finetune_learns_and_saves_a_plain_classifier(tmp_path, sentiment_files, encoder_tokenizer):
    train = load_classification(sentiment_files[0])
    dev = load_classification(sentiment_files[1], reference=train)
    model = tiny_model("bert", task="classification", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model, result = finetune(model, encoder_tokenizer, train, dev,
                             FinetuneArgs(steps=60, lr=2e-3, batch_size=16, progress=False))
    assert result.dev_accuracy >= 0.8 and result.trainable_params == result.base_params
    out = save_finetuned(model, encoder_tokenizer, tmp_path / "teacher", {"result": result.to_dict()})
    teacher = load_teacher(out, tiny_model("bert", task="classification"))
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert json.loads((out / "finetune.json").read_text())["result"]["steps"] == 60


def test_cached_teacher_gives_the_in_loop_logits(encoder_tokenizer, sentiment_files):
    data = load_classification(sentiment_files[0], max_rows=20)
    rows = [dict(r, index=i) for i, r in enumerate(tokenize_classification(data, encoder_tokenizer, 32))]
    collate = pad_collate(encoder_tokenizer)
    teacher = tiny_model("bert", task="classification", seed=3)
    cached = CachedTeacher.build(teacher, rows, collate, batch_size=7)
    batch = collate([rows[i] for i in (13, 2, 19)])
    with torch.no_grad():
        direct = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"]).logits
    assert torch.allclose(cached(batch), direct, atol=1e-5)


def test_teacher_errors_are_clear(tmp_path, base_dir):
    student = tiny_model("bert", task="classification")
    with pytest.raises(ConfigError, match="no such folder"):
        load_teacher(tmp_path / "missing", student)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        load_teacher(tmp_path / "empty", student)
    encoder = tmp_path / "encoder"
    tiny_model("bert", task="classification").bert.save_pretrained(encoder, safe_serialization=True)
    with pytest.raises(ConfigError, match="not a \\*ForSequenceClassification"):
        load_teacher(encoder, student)
    three = _save_hf(tiny_model("bert", task="classification", num_labels=3), tmp_path / "three")
    with pytest.raises(ConfigError, match="3 classes.*has 2"):
        load_teacher(three, student)
    vocab = _save_hf(tiny_model("bert", task="classification", vocab_size=200), tmp_path / "vocab")
    with pytest.raises(ConfigError, match="vocabulary size 200"):
        load_teacher(vocab, student)


def _cli(args):
    from fg_edge.cli import cli

    return CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)


def test_two_step_recipe_through_the_cli(tmp_path, base_dir, sentiment_files):
    train, dev = sentiment_files
    common = ["--train", train, "--dev", dev, "--steps", "12", "--batch-size", "16", "--no-progress"]
    r = _cli(["finetune", base_dir, *common, "-o", tmp_path / "teacher", "--lr", "1e-3"])
    assert r.exit_code == 0, r.output
    assert "dev accuracy" in r.output
    r = _cli(["train", base_dir, "--task", "classification", *common, "--teacher", tmp_path / "teacher",
              "--target-sparsity", "0.3", "--adapter-rank", "2", "-o", tmp_path / "gated"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "gated" / "training.json").read_text())
    assert meta["teacher"] == str(tmp_path / "teacher") and meta["args"]["distill"] is True
    assert "distill_kl" in meta["metrics"]["dev"]
    assert meta["sparsity"]["unit"] == "params" and meta["sparsity"]["block_params_removed_share"] >= 0.3
    # the teacher's own folder is an input: untouched
    assert (tmp_path / "teacher" / "model.safetensors").is_file()

    # compile, then eval with the teacher beside the compiled variants
    r = _cli(["compile", tmp_path / "gated", "-o", tmp_path / "compiled"])
    assert r.exit_code == 0, r.output
    r = _cli(["eval", tmp_path / "compiled", "--data", dev, "--reference", tmp_path / "teacher",
              "--json", tmp_path / "eval.json"])
    assert r.exit_code == 0, r.output
    assert "dense-folded" in r.output and "reference model" in r.output
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert results["baseline"]["value"] == results["compiled"]["value"]      # equal by construction
    teacher_acc = meta_acc = json.loads((tmp_path / "teacher" / "finetune.json").read_text())["result"]["dev_accuracy"]
    assert results["reference"]["value"] == pytest.approx(teacher_acc) and meta_acc is not None


def test_cli_teacher_errors(tmp_path, base_dir, sentiment_files):
    train, dev = sentiment_files
    r = _cli(["train", base_dir, "--task", "classification", "--train", train, "--teacher", tmp_path / "nope",
              "--steps", "1", "--no-progress", "-o", tmp_path / "out"])
    assert r.exit_code == 1 and "--teacher" in r.output and "no such folder" in r.output
    assert not (tmp_path / "out").exists()
    r = _cli(["train", base_dir, "--task", "classification", "--train", train, "--distill", "--steps", "1",
              "-o", tmp_path / "out2"])
    assert r.exit_code == 2 and "--teacher DIR" in r.output


def test_lora_finetune_merges_into_a_plain_classifier(tmp_path, sentiment_files, encoder_tokenizer):
    pytest.importorskip("peft")
    train = load_classification(sentiment_files[0])
    model = tiny_model("bert", task="classification")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    model, result = finetune(model, encoder_tokenizer, train, None,
                             FinetuneArgs(steps=10, lr=5e-3, lora_rank=2, batch_size=16, progress=False))
    assert result.trainable_params < result.base_params / 5
    assert type(model).__name__ == "BertForSequenceClassification"          # adapters merged, PEFT gone
    state = model.state_dict()
    assert set(state) == set(base)
    changed = {k for k in base if not torch.equal(base[k], state[k])}
    assert any("attention.self.query.weight" in k for k in changed)
    assert not any("attention.self.key.weight" in k for k in changed)          # LoRA on query / value only
    out = save_finetuned(model, encoder_tokenizer, tmp_path / "lora", {})
    assert load_teacher(out, tiny_model("bert", task="classification")) is not None
