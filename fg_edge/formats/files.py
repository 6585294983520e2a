"""One reader per file format a user hands fg-edge, each turning a library's exception into a typed error that
names the file and what to do (torch-free).

- `check_safetensors(path)`: the header and the data size of a .safetensors file, without loading a tensor (a
  truncated download, a garbage or a pickled file fails here, not deep inside transformers).
- `check_weight_files(folder)`: every safetensors file of a Hugging Face folder (single or sharded).
- `read_json(path)`: a JSON object file.
- `check_tokenizer_files(folder)`: the tokenizer files a folder holds parse (tokenizer.json with `tokenizers`,
  the *_config.json files as JSON); a folder with none passes (the caller decides whether one is needed).
- `weights_mismatch_message(exc, folder)`: transformers' "size mismatch" RuntimeError as one line naming the files.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Optional, Type

from fg_edge.errors import FgEdgeError, ModelDirError

#: safetensors dtype name -> bytes per element
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 * 1024 * 1024
_MISMATCH = re.compile(r"size mismatch for (\S+?): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
                       r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _corrupt(path: Path, why: str, error: Type[FgEdgeError]) -> FgEdgeError:
    return error(f"{path}: {why}; the file is corrupt or truncated (re-download or re-save it)")


def check_safetensors(path: str | Path, error: Type[FgEdgeError] = ModelDirError) -> dict[str, list[int]]:
    """{tensor name: shape} of a safetensors file, after checking that its header parses and that the file holds
    exactly the bytes the header describes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _corrupt(path, f"{size} bytes, too short for a safetensors header", error)
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise _corrupt(path, f"header length {n} does not fit a {size}-byte file", error)
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"unreadable safetensors header ({exc})", error) from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "the safetensors header is not a JSON object", error)
    shapes, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shape, (start, stop) = [int(d) for d in info["shape"]], info["data_offsets"]
            want = _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"tensor {name!r} has a malformed header entry", error) from None
        numel = 1
        for d in shape:
            numel *= d
        if stop - start != numel * want:
            raise _corrupt(path, f"tensor {name!r} {shape} needs {numel * want} bytes, header gives {stop - start}",
                           error)
        shapes[name], end = shape, max(end, int(stop))
    if 8 + n + end > size:
        raise _corrupt(path, f"the header describes {8 + n + end} bytes but the file has {size}", error)
    return shapes


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a HF folder: the shards its index names, else every *.safetensors in it."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = read_json(index)
        shards = sorted(set((data.get("weight_map") or {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ModelDirError(f"{index} names {len(missing)} missing shard(s), first {missing[0]}; copy them "
                                "beside it")
        return [folder / s for s in shards]
    return sorted(folder.glob("*.safetensors"))


def check_weight_files(folder: str | Path, error: Type[FgEdgeError] = ModelDirError) -> dict[str, list[int]]:
    """Check every weights file of `folder` (`check_safetensors`); {tensor name: shape} over all of them."""
    shapes: dict[str, list[int]] = {}
    for file in weight_files(folder):
        shapes.update(check_safetensors(file, error))
    return shapes


def read_json(path: str | Path, error: Type[FgEdgeError] = ModelDirError, what: str = "JSON file") -> dict:
    """A JSON object file; a typed error naming the file when it is unreadable, invalid or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"cannot read the {what} {path} ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc}); the file is corrupt or truncated (re-download or re-save "
                    "it)") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def check_tokenizer_files(folder: str | Path, error: Type[FgEdgeError] = ModelDirError) -> Optional[Path]:
    """Parse the tokenizer files `folder` holds; returns its tokenizer.json (None when it has none)."""
    folder = Path(folder)
    for name in TOKENIZER_FILES[1:]:
        if (folder / name).is_file():
            read_json(folder / name, error, "tokenizer file")
    fast = folder / "tokenizer.json"
    return check_tokenizer_file(fast, error) if fast.is_file() else None


def check_tokenizer_file(path: str | Path, error: Type[FgEdgeError] = ModelDirError) -> Path:
    """A tokenizer.json that `tokenizers` can read, or a typed error naming it."""
    path = Path(path)
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_file(str(path))
    except ImportError:  # pragma: no cover - tokenizers is a base dependency
        return path
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{path}: not a valid tokenizer file ({first}); the file is corrupt or truncated (re-save the "
                    "tokenizer with save_pretrained)") from None
    return path



def weights_mismatch_message(exc: BaseException, folder: str | Path) -> Optional[str]:
    """One line for transformers' RuntimeError when the weights do not fit config.json ("size mismatch for X:
    copying a param with shape A from checkpoint, the shape in current model is B"); None for other errors."""
    found = _MISMATCH.findall(str(exc))
    if not found:
        return None
    files = weight_files(folder)
    name, got, want = found[0]
    stored = [int(x) for x in got.split(",") if x.strip()]
    # transformers names the parameter inside its module ("bias"): find the stored tensor it means
    shapes = check_weight_files(folder) if files else {}
    full = next((n for n, s in shapes.items() if (n == name or n.endswith("." + name)) and s == stored), name)
    return (f"{len(found)} weight(s) in {', '.join(str(f) for f in files) or folder} do not match "
            f"{Path(folder) / 'config.json'}: {full} is stored as [{got}] but config.json builds [{want}]; the "
            "weights belong to another model or config.json was edited")
