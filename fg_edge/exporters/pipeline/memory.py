"""Keeping a compile's memory peak low: hand freed heap back to the OS, and move weights off the file mapping."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fg_edge.errors import ModelDirError
from fg_edge.formats.names import GATES_FILE

log = logging.getLogger(__name__)


def release() -> None:
    """Collect freed torch / protobuf objects and hand the freed heap back to the OS (glibc)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def unmap_weights(model, model_dir: Path) -> int:
    """Give the weights that from_pretrained left on a memory map of the model_dir's safetensors file(s) their own
    memory, read with plain file reads (the page cache does not count as this process's memory; touched pages of
    a mapping do, until the whole mapping is gone). The compile and baseline then fold layer by layer, each old
    weight freed as its new one is made, instead of holding the mapped file and the folded copy at once.
    Returns the number of tensors read; anything not found in the files is left as it is."""
    import struct

    import torch

    targets: dict[str, list] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
        targets.setdefault(name.replace(".base_layer.", "."), []).append(t)
    done: set[int] = set()
    for file in sorted(model_dir.glob("*.safetensors")):
        if file.name == GATES_FILE:
            continue
        try:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
                start = 8 + n
                for key, meta in header.items():
                    if key == "__metadata__" or key not in targets:
                        continue
                    dtype = getattr(torch, _SAFETENSORS_DTYPES.get(meta.get("dtype"), ""), None)
                    lo, hi = meta["data_offsets"]
                    for t in targets[key]:
                        if id(t) in done or dtype is None or t.dtype != dtype or list(t.shape) != meta["shape"]:
                            continue
                        buf = bytearray(hi - lo)
                        f.seek(start + lo)
                        if f.readinto(buf) != hi - lo:
                            raise ModelDirError(f"{file}: truncated tensor {key}")
                        fresh = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
                        t.data = fresh.reshape(t.shape)
                        done.add(id(t))
        except (OSError, ValueError, KeyError, struct.error) as exc:  # leave the model as loaded
            log.debug("could not re-read weights from %s: %s", file, exc)
    return len(done)
