"""GGUF files: a header parser (`gguf_metadata`, stdlib only) and loading through transformers' GGUF reader
(dequantised to float32; needs `pip install gguf`), with the tokenizer corrected from the file's metadata."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import mmap
import struct
import time
from pathlib import Path

from fg_edge.arch import auto_class
from fg_edge.errors import SourceError
from fg_edge.sources.hf import model_kwargs
from fg_edge.sources.resolve import GGUF_MAGIC, ResolvedSource

log = logging.getLogger(__name__)

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}


def gguf_metadata(path: str | Path) -> dict:
    """Scalar and string key/values of a GGUF file's header (arrays are skipped). Fast: no tensor data is read."""
    path = Path(path)
    meta: dict = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        try:
            if m[:4] != GGUF_MAGIC:
                raise SourceError(f"{path}: not a GGUF file (no GGUF magic)")
            version = struct.unpack_from("<I", m, 4)[0]
            if version < 2:
                raise SourceError(f"{path}: GGUF version {version} is too old (need >= 2)")
            _, n_kv = struct.unpack_from("<QQ", m, 8)
            pos = 24

            def string(p):
                n = struct.unpack_from("<Q", m, p)[0]
                return m[p + 8:p + 8 + n].decode("utf-8", "replace"), p + 8 + n

            def skip(vtype, p):
                if vtype in _GGUF_SCALARS:
                    return p + struct.calcsize(_GGUF_SCALARS[vtype])
                if vtype == 8:
                    return p + 8 + struct.unpack_from("<Q", m, p)[0]
                if vtype == 9:
                    itype, count = struct.unpack_from("<IQ", m, p)
                    p += 12
                    if itype in _GGUF_SCALARS:
                        return p + count * struct.calcsize(_GGUF_SCALARS[itype])
                    for _ in range(count):
                        p = skip(itype, p)
                    return p
                raise SourceError(f"{path}: unknown GGUF value type {vtype}")

            for _ in range(n_kv):
                key, pos = string(pos)
                vtype = struct.unpack_from("<I", m, pos)[0]
                pos += 4
                if vtype in _GGUF_SCALARS:
                    meta[key] = struct.unpack_from(_GGUF_SCALARS[vtype], m, pos)[0]
                elif vtype == 8:
                    meta[key] = string(pos)[0]
                pos = skip(vtype, pos)
        except struct.error:
            raise SourceError(f"{path}: truncated or corrupt GGUF header") from None
    return meta


def require_gguf_package(source: str, path: Path) -> None:
    """SourceError naming `pip install gguf` when the `gguf` package is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise SourceError(f"{source!r} is a GGUF file ({path}); reading GGUF needs the `gguf` "
                          "package: pip install gguf (or pip install 'fg-edge[gguf]')")


@contextlib.contextmanager
def _memoized_gguf_name_map():
    """transformers 4.57 rebuilds gguf's TensorNameMap for every submodule (~400x for a 30-layer model, several
    seconds); the map depends only on (arch, n_blocks), so share one per call while we load."""
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def load_gguf_model(resolved: ResolvedSource, task, num_labels, trust_remote_code, attn_implementation):
    """(model, header metadata) of a 'gguf' source; the metadata feeds `gguf_tokenizer`."""
    require_gguf_package(resolved.source, resolved.path)
    path = resolved.path
    meta = gguf_metadata(path)
    kwargs = model_kwargs(task, num_labels, trust_remote_code, attn_implementation)
    t0 = time.perf_counter()
    try:
        with _memoized_gguf_name_map():
            model = auto_class(task).from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        arch = meta.get("general.architecture", "?")
        raise SourceError(f"cannot load GGUF file {path} (architecture {arch!r}): {str(exc).splitlines()[0]}. "
                          "transformers reads GGUF files of the architectures in "
                          "transformers.modeling_gguf_pytorch_utils.GGUF_SUPPORTED_ARCHITECTURES") from None
    n = sum(p.numel() for p in model.parameters())
    log.info("GGUF %s: dequantised %.1fM parameters to float32 (%.0f MB) in %.1fs", path.name, n / 1e6,
             n * 4 / 1e6, time.perf_counter() - t0)
    return model, meta


_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")


def gguf_tokenizer(path: Path, meta: dict):
    """transformers' GGUF tokenizer, corrected from the file's metadata.

    transformers 4.57 swaps in BOS for EOS (GGUFLlamaConverter), ignores `add_bos_token` / the padding id, and drops
    the digit split of llama.cpp's 'smollm'-style pre-tokenizers; the hub tokenizer of such models has all three.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    size = len(tok)
    for attr, key in (("unk_token", "unknown_token_id"), ("bos_token", "bos_token_id"),
                      ("eos_token", "eos_token_id"), ("pad_token", "padding_token_id")):
        i = meta.get(f"tokenizer.ggml.{key}")
        if isinstance(i, int) and 0 <= i < size:
            piece = tok.convert_ids_to_tokens(i)
            if getattr(tok, attr) != piece:
                setattr(tok, attr, piece)
    if hasattr(tok, "update_post_processor"):
        for attr in ("add_bos_token", "add_eos_token"):
            value = meta.get(f"tokenizer.ggml.{attr}")
            if value is not None and hasattr(tok, "_" + attr):
                setattr(tok, "_" + attr, bool(value))
                tok.init_kwargs[attr] = bool(value)  # what save_pretrained writes
        tok.update_post_processor()
    if meta.get("tokenizer.ggml.model") == "gpt2" and meta.get("tokenizer.ggml.pre") in _DIGIT_SPLIT_PRE:
        from tokenizers import pre_tokenizers

        backend = tok.backend_tokenizer
        if isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel):
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer])
    return tok

