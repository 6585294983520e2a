"""Shared fixtures: tiny word-level tokenizers, tiny model folders, a synthetic easy classification task, and tiny
compiled_dirs written by the real train -> compile pipeline (session-scoped)."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import NamedTuple

import pytest

#: ../shared beside the repository (docs/DESIGN.md §5): real data and models, read in place.
SHARED = Path(__file__).resolve().parents[2] / "shared"


def needs_shared(*paths: Path):
    """Skip a test whose ../shared files are missing — but fail it under CI (CI=true), where shared/ is laid
    beside the clone, so a missing copy cannot turn into a silently green run."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if not missing:
        return lambda f: f
    reason = f"{', '.join(missing)} not present (../shared must sit beside the repository)"
    if os.environ.get("CI"):
        def fail(f):
            def wrapper(*args, **kwargs):
                pytest.fail(f"CI: {reason}")
            wrapper.__name__, wrapper.__doc__ = f.__name__, f.__doc__
            return wrapper
        return fail
    return pytest.mark.skip(reason=reason)


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    """No test reaches a model hub: HF_HUB_OFFLINE=1 for every test (fg-edge's own probe reads it)."""
    from fg_edge.sources import resolve as sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sources.hub_reachable.cache_clear()
    yield
    sources.hub_reachable.cache_clear()

POSITIVE = ["good", "great", "fine", "nice", "superb", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "ugly"]
NEUTRAL = [f"w{i}" for i in range(40)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]"]


def tiny_tokenizer(kind: str = "encoder"):
    """A PreTrainedTokenizerFast over a fixed word-level vocabulary (58 ids, < the tiny configs' 120).

    encoder: "[CLS] a [SEP]" / "[CLS] a [SEP] b [SEP]" with token_type_ids; decoder: "[BOS] a", eos [EOS].
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + POSITIVE + NEGATIVE + NEUTRAL)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "encoder":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", vocab["[BOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]")


def sentiment_rows(n: int, seed: int = 0, min_words: int = 1, max_words: int = 8) -> list[tuple[str, int]]:
    """An easy task: a few neutral words plus one positive (label 1) or negative (label 0) word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(NEUTRAL, rng.randint(min_words, max_words))
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words), label))
    rng.shuffle(rows)
    return rows


def write_tsv(path, rows, header=("text", "label")) -> str:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Every test runs torch on one thread: tiny models run fastest that way, and on a 2-core machine torch's and
    ORT's OpenMP pools spinning against each other (or other jobs) stalled a 30-step tiny run from ~1 s to ~60 s.
    Restores the setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def encoder_tokenizer():
    return tiny_tokenizer("encoder")


@pytest.fixture
def decoder_tokenizer():
    return tiny_tokenizer("decoder")


@pytest.fixture
def sentiment_files(tmp_path):
    """(train.tsv, dev.tsv) of the easy synthetic sentiment task."""
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(320, seed=1))
    dev = write_tsv(tmp_path / "dev.tsv", sentiment_rows(64, seed=2))
    return train, dev


@pytest.fixture
def tiny_bert_dir(tmp_path):
    """A folder with a tiny random BERT (save_pretrained) and its word-level tokenizer, as a user would pass."""
    from fg_edge.testing import tiny_model

    path = tmp_path / "tiny-bert"
    model = tiny_model("bert", task="classification", seed=0)
    model.save_pretrained(path)
    tiny_tokenizer("encoder").save_pretrained(path)
    return path


# -- compiled folders written by the real pipeline (model_dir -> `fg-edge compile`), built once per session ------
class CompiledFolder(NamedTuple):
    """A compiled_dir and the torch model its model.onnx was exported from (fg_edge.compiler.load_compiled)."""

    path: Path
    model: object


def compile_tiny(root: Path, name: str, gated, quantize: str = "none") -> CompiledFolder:
    """save_model_dir + compile_model_dir (the code behind `fg-edge train` / `fg-edge compile`) into root."""
    from fg_edge.compiler import load_compiled
    from fg_edge.exporters.pipeline import CompileOptions, compile_model_dir
    from fg_edge.model_dir import save_model_dir
    from fg_edge.testing import DECODERS

    model, gate_config = gated                      # fg_edge.testing.gated_tiny_model
    kind = "decoder" if model.config.model_type in DECODERS else "encoder"
    model_dir = save_model_dir(model, gate_config, root / name, tokenizer=tiny_tokenizer(kind))
    out = root / f"{name}-compiled"
    compile_model_dir(model_dir, out, options=CompileOptions(quantize=quantize, decoder_steps=4))
    return CompiledFolder(out, load_compiled(out))


@contextlib.contextmanager
def _fixture_build():
    """What the function-scoped autouse fixtures give a test, for a session fixture's build: hub offline, one
    torch thread (both restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")
            yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cls_dir(tmp_path_factory) -> CompiledFolder:
    """BERT classifier (NEGATIVE / POSITIVE) compiled with int8: layer 1 keeps 2 of 4 heads, layer 0 half its FFN.
    Files: model / baseline (.int8).onnx, config.json, tokenizer.json, compile_report.json, ..."""
    from fg_edge.testing import gated_tiny_model

    with _fixture_build():
        gated = gated_tiny_model("bert", {1: [0, 1]}, {0: slice(None, None, 2)},
                                 id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
        return compile_tiny(tmp_path_factory.mktemp("rt-cls"), "bert-cls", gated, quantize="int8")


@pytest.fixture(scope="session")
def emb_dir(cls_dir, tmp_path_factory) -> CompiledFolder:
    """An embedding compiled_dir (last_hidden_state output): `fg-edge compile` has no embedding task, so this is the
    classifier's compiled folder with model.onnx re-exported from its compiled backbone by the same exporter."""
    import shutil

    from fg_edge.compiler import load_compiled
    from fg_edge.exporters.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("rt-emb") / "bert-emb-compiled"
    shutil.copytree(cls_dir.path, out, ignore=shutil.ignore_patterns("*.onnx", "*.ort", "*.data"))
    with _fixture_build():
        backbone = load_compiled(cls_dir.path).base_model
        export_onnx(backbone, out / "model.onnx", kind="embedding")
    return CompiledFolder(out, backbone)


@pytest.fixture(scope="session")
def dec_dir(tmp_path_factory) -> CompiledFolder:
    """LLaMA (GQA 4 heads / 2 kv heads) with a KV cache, fp32 only: layer 0 keeps kv group 0 (1 kv head), layer 1
    keeps both; a third of every FFN closed."""
    from fg_edge.testing import gated_tiny_model

    with _fixture_build():
        gated = gated_tiny_model("llama", {0: [2, 3]}, {0: slice(None, None, 3), 1: slice(None, None, 3)},
                                 bos_token_id=4, eos_token_id=5)
        return compile_tiny(tmp_path_factory.mktemp("rt-dec"), "llama", gated)
