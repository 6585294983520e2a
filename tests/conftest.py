"""Shared fixtures: tiny word-level tokenizers, tiny model folders and a synthetic easy classification task."""

from __future__ import annotations

import os
import random
from pathlib import Path

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
