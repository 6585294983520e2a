"""llama2.c checkpoints and tokenizers -> Hugging Face `LlamaForCausalLM` / `PreTrainedTokenizerFast`.

Two jobs, one function each (plus `load_for_task`, the classification variant, and `find_tokenizer`):

- `load_checkpoint(path)`: a llama2.c `.bin` checkpoint (legacy "version 0" file: 7 little-endian int32 header
  then float32 arrays; or the "version 1" fp32 export with the `ak42` magic) -> `LlamaForCausalLM`, float32, eval.
  The q/k rows are permuted per head from llama2.c's interleaved RoPE pairs to HF's rotate-half layout, exactly as
  `convert_llama_weights_to_hf` does; everything else copies as it is.
- `load_tokenizer(path)`: a llama2.c `tokenizer.bin` / `tok512.bin` (int32 max_token_length, then per token a
  float32 score, an int32 byte length and the bytes) -> `PreTrainedTokenizerFast`. llama2.c's `encode` prepends a
  space ("dummy prefix"), starts from one symbol per UTF-8 character (bytes `<0xNN>` for characters not in the
  vocab) and then repeatedly merges the adjacent pair whose concatenation is a vocab piece with the highest score.
  The equivalent `tokenizers` model is a BPE over the whole (unsplit) text whose merges are every split of every
  piece, ranked by the merged piece's score, with byte fallback; spaces become "▁" as in SentencePiece.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fg_edge.errors import SourceError

#: Magic of the llama2.c "version 1/2" exports ("ak42" little-endian).
_MAGIC_V1 = 0x616B3432
_V1_HEADER_BYTES = 256
_SPIECE = "\u2581"  # "▁"


@dataclass(frozen=True)
class Llama2cHeader:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int          # always positive here; `shared_classifier` holds the sign of the v0 field
    seq_len: int
    shared_classifier: bool
    version: int             # 0 (legacy) or 1 (fp32 export with magic)
    offset: int              # byte offset of the first weight

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def weight_counts(self) -> list[tuple[str, tuple[int, ...]]]:
        """Name and shape of every float32 array in file order."""
        L, d, h, v = self.n_layers, self.dim, self.hidden_dim, self.vocab_size
        kv = self.n_kv_heads * self.head_dim
        blocks = [("wq", (L, d, d)), ("wk", (L, kv, d)), ("wv", (L, kv, d)), ("wo", (L, d, d)),
                  ("w1", (L, h, d)), ("w2", (L, d, h)), ("w3", (L, h, d))]
        if self.version == 0:
            arrays = [("tok_embeddings", (v, d)), ("rms_att", (L, d))] + blocks[:4] + [("rms_ffn", (L, d))] \
                + blocks[4:] + [("rms_final", (d,)), ("freq_cis_real", (self.seq_len, self.head_dim // 2)),
                                ("freq_cis_imag", (self.seq_len, self.head_dim // 2))]
        else:
            arrays = [("rms_att", (L, d)), ("rms_ffn", (L, d)), ("rms_final", (d,)), ("tok_embeddings", (v, d))] \
                + blocks
        if not self.shared_classifier:
            arrays.append(("wcls", (v, d)))
        return arrays

    def expected_bytes(self) -> int:
        return self.offset + 4 * sum(int(np.prod(shape)) for _, shape in self.weight_counts())


def _bad(path, what: str) -> SourceError:
    return SourceError(f"{path}: not a valid llama2.c checkpoint ({what})")


def read_header(path: str | Path) -> Llama2cHeader:
    """Parse and validate the header; checks the file size against the header (a truncated file is refused)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_V1_HEADER_BYTES)
    if len(head) < 28:
        raise _bad(path, f"{size} bytes, shorter than the 28-byte header")
    magic = struct.unpack_from("<I", head, 0)[0]
    if magic == _MAGIC_V1:
        if len(head) < _V1_HEADER_BYTES:
            raise _bad(path, f"{size} bytes, shorter than the 256-byte version-1 header")
        version = struct.unpack_from("<i", head, 4)[0]
        if version != 1:
            raise _bad(path, f"llama2.c export version {version}; only the fp32 versions 0 (legacy) and 1 are "
                             "supported, re-export with `export.py --version 1` or `--version 0`")
        dim, hidden, layers, heads, kv, vocab, seq = struct.unpack_from("<7i", head, 8)
        shared = bool(head[36])
        offset, version = _V1_HEADER_BYTES, 1
    else:
        dim, hidden, layers, heads, kv, vocab, seq = struct.unpack_from("<7i", head, 0)
        shared = vocab > 0
        vocab = abs(vocab)
        offset, version = 28, 0
    fields = dict(dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads, n_kv_heads=kv, vocab_size=vocab,
                  seq_len=seq)
    for name, value in fields.items():
        if not 0 < value <= 1 << 20:
            raise _bad(path, f"header field {name}={value} is out of range; header "
                             + ", ".join(f"{k}={v}" for k, v in fields.items()))
    if dim % heads or heads % kv or (dim // heads) % 2:
        raise _bad(path, f"dim={dim}, n_heads={heads}, n_kv_heads={kv}: dim must split into an even head size "
                         "and n_heads must be a multiple of n_kv_heads")
    header = Llama2cHeader(dim, hidden, layers, heads, kv, vocab, seq, shared, version, offset)
    expected = header.expected_bytes()
    if size != expected:
        raise _bad(path, f"{size} bytes, but the header (" + ", ".join(f"{k}={v}" for k, v in fields.items())
                         + f", shared classifier {shared}) implies {expected} bytes"
                         + ("; the file is truncated" if size < expected else ""))
    return header


def is_checkpoint(path: str | Path) -> bool:
    """True when `path` is a file whose header and size look like a llama2.c checkpoint."""
    try:
        read_header(path)
    except (SourceError, OSError):
        return False
    return True


def permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama2.c / Meta interleaved RoPE pairs (rows 2i, 2i+1 of a head) -> HF rotate-half (rows i, i + d/2)."""
    d_out, d_in = w.shape
    return w.reshape(n_heads, d_out // n_heads // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def llama_config(header: Llama2cHeader, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(hidden_size=header.dim, intermediate_size=header.hidden_dim, num_hidden_layers=header.n_layers,
                  num_attention_heads=header.n_heads, num_key_value_heads=header.n_kv_heads,
                  vocab_size=header.vocab_size, max_position_embeddings=header.seq_len, rms_norm_eps=1e-5,
                  rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=header.shared_classifier,
                  bos_token_id=1, eos_token_id=2, attention_bias=False, mlp_bias=False)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def read_state_dict(path: str | Path, header: Llama2cHeader | None = None) -> dict[str, torch.Tensor]:
    """The HF `LlamaForCausalLM` state dict of a llama2.c checkpoint (lm_head only when not shared)."""
    header = header or read_header(path)
    data = np.fromfile(path, dtype="<f4", offset=header.offset)
    arrays: dict[str, torch.Tensor] = {}
    pos = 0
    for name, shape in header.weight_counts():
        n = int(np.prod(shape))
        arrays[name] = torch.from_numpy(data[pos:pos + n].reshape(shape).astype(np.float32))
        pos += n
    sd = {"model.embed_tokens.weight": arrays["tok_embeddings"], "model.norm.weight": arrays["rms_final"]}
    for i in range(header.n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = arrays["rms_att"][i]
        sd[p + "post_attention_layernorm.weight"] = arrays["rms_ffn"][i]
        sd[p + "self_attn.q_proj.weight"] = permute_rotary(arrays["wq"][i], header.n_heads)
        sd[p + "self_attn.k_proj.weight"] = permute_rotary(arrays["wk"][i], header.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = arrays["wv"][i]
        sd[p + "self_attn.o_proj.weight"] = arrays["wo"][i]
        sd[p + "mlp.gate_proj.weight"] = arrays["w1"][i]
        sd[p + "mlp.down_proj.weight"] = arrays["w2"][i]
        sd[p + "mlp.up_proj.weight"] = arrays["w3"][i]
    if not header.shared_classifier:
        sd["lm_head.weight"] = arrays["wcls"]
    return {k: v.contiguous() for k, v in sd.items()}


def load_checkpoint(path: str | Path, attn_implementation: str = "eager"):
    """A llama2.c checkpoint as a float32 `LlamaForCausalLM` in eval mode."""
    from transformers import LlamaForCausalLM

    header = read_header(path)
    config = llama_config(header)
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config)
    sd = read_state_dict(path, header)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (header.shared_classifier and k == "lm_head.weight")]
    if missing or unexpected:  # a bug in this converter, not in the file
        raise SourceError(f"{path}: llama2.c conversion bug: missing {missing}, unexpected {unexpected}")
    if header.shared_classifier:
        model.tie_weights()
    return model.to(torch.float32).eval()


def load_for_task(path: Path, task: str, num_labels: int | None, attn_implementation: str = "eager"):
    """(model, header): `LlamaForCausalLM` for 'causal-lm', else `LlamaForSequenceClassification` on the same
    backbone with a new head of `num_labels` (default 2); float32."""
    header = read_header(path)
    causal = load_checkpoint(path, attn_implementation=attn_implementation)
    if task == "causal-lm":
        return causal, header
    from transformers import LlamaForSequenceClassification

    config = llama_config(header, num_labels=int(num_labels) if num_labels is not None else 2)
    config._attn_implementation = attn_implementation
    model = LlamaForSequenceClassification(config)
    model.model.load_state_dict(causal.model.state_dict())
    return model.to(torch.float32), header


# --------------------------------------------------------------------------------------------- tokenizer


def find_tokenizer(checkpoint: Path, vocab_size: int) -> Path:
    """The tokenizer file next to a checkpoint: tokenizer.bin, tok<vocab_size>.bin, or the only other tok*.bin."""
    folder = checkpoint.parent
    for name in ("tokenizer.bin", f"tok{vocab_size}.bin"):
        if (folder / name).is_file():
            return folder / name
    others = sorted(p for p in folder.glob("tok*.bin") if p != checkpoint)
    if len(others) == 1:
        return others[0]
    raise SourceError(f"llama2.c checkpoint {checkpoint}: no tokenizer next to it (looked for tokenizer.bin, "
                      f"tok{vocab_size}.bin); pass tokenizer=PATH (fg-edge train --tokenizer PATH)")


def read_tokenizer(path: str | Path, vocab_size: int | None = None) -> tuple[list[bytes], list[float], int]:
    """(pieces as bytes, scores, max_token_length) of a llama2.c tokenizer file."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 4:
        raise SourceError(f"{path}: not a llama2.c tokenizer file ({len(data)} bytes)")
    max_len = struct.unpack_from("<i", data, 0)[0]
    pieces: list[bytes] = []
    scores: list[float] = []
    pos = 4
    while pos < len(data) and (vocab_size is None or len(pieces) < vocab_size):
        if pos + 8 > len(data):
            raise SourceError(f"{path}: not a llama2.c tokenizer file (truncated after {len(pieces)} tokens)")
        score, n = struct.unpack_from("<fi", data, pos)
        pos += 8
        if not 0 <= n <= max(max_len, 16) or pos + n > len(data):
            raise SourceError(f"{path}: not a llama2.c tokenizer file (token {len(pieces)} has length {n}, "
                              f"max_token_length is {max_len})")
        pieces.append(data[pos:pos + n])
        scores.append(score)
        pos += n
    if vocab_size is not None and len(pieces) != vocab_size:
        raise SourceError(f"{path}: holds {len(pieces)} tokens but the checkpoint's vocab_size is {vocab_size}")
    if len(pieces) < 259 or any(pieces[3 + b] != f"<0x{b:02X}>".encode() for b in range(256)):
        raise SourceError(f"{path}: not a llama2.c SentencePiece tokenizer (expected <unk>, BOS, EOS, then the 256 "
                          "byte tokens <0x00>..<0xFF>)")
    return pieces, scores, max_len


def _hf_piece(i: int, piece: bytes) -> str:
    if i == 0:
        return "<unk>"
    if i == 1:
        return "<s>"
    if i == 2:
        return "</s>"
    return piece.decode("utf-8", errors="strict").replace(" ", _SPIECE)


def build_tokenizer(pieces: list[bytes], scores: list[float], model_max_length: int | None = None):
    """A `PreTrainedTokenizerFast` equivalent to llama2.c's encode / decode (BOS added, no EOS).

    Special tokens are <unk> (0), <s> (1, llama2.c's "\\n<s>\\n") and </s> (2); `split_special_tokens` is on, so
    text that spells "<s>" is encoded as plain text, as llama2.c does.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    try:
        vocab_list = [_hf_piece(i, p) for i, p in enumerate(pieces)]
    except UnicodeDecodeError as exc:
        raise SourceError(f"llama2.c tokenizer: a piece is not valid UTF-8 ({exc})") from None
    vocab = {}
    for i, piece in enumerate(vocab_list):
        if piece in vocab:
            raise SourceError(f"llama2.c tokenizer: piece {piece!r} appears twice (ids {vocab[piece]} and {i})")
        vocab[piece] = i
    mergeable = {p: i for i, p in enumerate(vocab_list) if i >= 259}
    ranked = []
    for piece, i in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-scores[i], i, mergeable[left], (left, right)))
    merges = [m for *_, m in sorted(ranked)]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(_SPIECE), normalizers.Replace(" ", _SPIECE)])
    tok.pre_tokenizer = None  # llama2.c merges across word boundaries: the whole text is one BPE word
    tok.decoder = decoders.Sequence([decoders.Replace(_SPIECE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", 1)])
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False, split_special_tokens=True,
                                   **kwargs)


def load_tokenizer(path: str | Path, vocab_size: int | None = None, model_max_length: int | None = None):
    """A llama2.c tokenizer file as a `PreTrainedTokenizerFast`."""
    pieces, scores, _ = read_tokenizer(path, vocab_size)
    return build_tokenizer(pieces, scores, model_max_length)
