"""Writing and reading .onnx files (+ their external-data file) without holding every weight in memory.

* `attach_initializers`: the tensors the TorchScript exporter captured -> initializers of a raw export, stored as
  external data in `<raw>.data`, one tensor at a time.
* `save_onnx`: write a ModelProto whose initializers live in external data files, streaming their bytes, either
  as `<path>` + `<path>.data` or as one self-contained file (written as raw protobuf records).
* `pack_onnx`, `onnx_files`, `onnx_param_count`: small helpers on written graphs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from fg_edge.errors import ExportError

#: tensors smaller than this stay inside the graph file when writing external data (as onnx.save_model does)
_EXTERNAL_MIN_BYTES = 1024
_CHUNK = 16 * 2**20


def _tensor_array(t: torch.Tensor):
    """(numpy array with the tensor's raw little-endian bytes, ONNX data type)."""
    from onnx import TensorProto, helper

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy(), TensorProto.BFLOAT16
    arr = t.numpy()
    return arr, helper.np_dtype_to_tensor_dtype(arr.dtype)


def _set_external(tensor, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v


def attach_initializers(raw: Path, params: dict) -> None:
    """Turn the graph inputs of `raw` (exported with export_params=False) that name captured initializers into
    initializers stored as external data in `raw`.data, written one tensor at a time."""
    import onnx
    from onnx import TensorProto

    proto = onnx.load(str(raw))
    graph = proto.graph
    input_names = {i.name for i in graph.input}
    missing = [n for n in params if n not in input_names]
    if missing:
        raise ExportError(f"{len(missing)} exported initializers have no graph input (e.g. {missing[0]!r})")
    data_name = raw.name + ".data"
    offset = 0
    with open(raw.with_name(data_name), "wb") as f:
        for name, t in params.items():
            arr, dtype = _tensor_array(t)
            tensor = graph.initializer.add()
            tensor.name, tensor.data_type = name, dtype
            tensor.dims.extend(int(d) for d in arr.shape)
            tensor.data_location = TensorProto.EXTERNAL
            _set_external(tensor, data_name, offset, arr.nbytes)
            f.write(memoryview(arr.reshape(-1)).cast("B") if arr.size else b"")
            offset += arr.nbytes
    keep = [i for i in graph.input if i.name not in params]
    graph.ClearField("input")
    graph.input.extend(keep)
    onnx.save_model(proto, str(raw))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _external_span(tensor, base_dir: Path) -> Optional[tuple[Path, int, int]]:
    """(file, offset, length) of an initializer stored as external data; None for one stored inline."""
    from onnx import TensorProto

    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in tensor.external_data}
    file = base_dir / info["location"]
    offset = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else file.stat().st_size - offset
    return file, offset, length


def _copy_span(src: Path, offset: int, length: int, out) -> None:
    with open(src, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise ExportError(f"{src}: external data ends before offset {offset} + {length}")
            out.write(chunk)
            left -= len(chunk)


def _inline_attribute_tensors(graph, base_dir: Path) -> None:
    """Load node-attribute tensors kept as external data (ORT's quantizer saves Constant values that way) into the
    graph: they are small, and the file they point to is not the one being written."""
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor

    for node in graph.node:
        for attr in node.attribute:
            tensors = ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
            for t in tensors:
                if t.data_location == TensorProto.EXTERNAL:
                    load_external_data_for_tensor(t, str(base_dir))
                    t.data_location = TensorProto.DEFAULT
                    del t.external_data[:]
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _inline_attribute_tensors(sub, base_dir)


def _save_external(proto, inits: list, spans: dict, path: Path, data_name: str) -> None:
    """`path` + `path`.data: every external span copied into the new data file (small ones inlined)."""
    import onnx
    from onnx import TensorProto

    offset = 0
    with open(path.parent / data_name, "wb") as out:
        for t in inits:
            span = spans[t.name]
            if span is None:
                continue
            if span[2] < _EXTERNAL_MIN_BYTES:  # inline, as onnx.save_model's size_threshold does
                with open(span[0], "rb") as f:
                    f.seek(span[1])
                    raw_data = f.read(span[2])
                del t.external_data[:]
                t.data_location = TensorProto.DEFAULT
                t.raw_data = raw_data
                continue
            _copy_span(span[0], span[1], span[2], out)
            _set_external(t, data_name, offset, span[2])
            offset += span[2]
    proto.graph.initializer.extend(inits)
    onnx.save_model(proto, str(path))


def _save_single_file(proto, inits: list, spans: dict, path: Path) -> None:
    """One file: ModelProto.graph (field 7) = tensor-less graph bytes + GraphProto.initializer (field 5) records;
    a record = the tensor's bytes without data + TensorProto.raw_data (field 9) streamed from its data file."""
    import onnx

    records = []
    for t in inits:
        span = spans[t.name]
        if span is not None:
            del t.external_data[:]
            t.ClearField("data_location")
        head = t.SerializeToString()
        if span is not None:
            head += b"\x4a" + _varint(span[2])
        size = len(head) + (span[2] if span is not None else 0)
        records.append((b"\x2a" + _varint(size) + head, span))
    graph_bytes = proto.graph.SerializeToString()
    graph_len = len(graph_bytes) + sum(len(r) + (s[2] if s is not None else 0) for r, s in records)
    rest = onnx.ModelProto()
    rest.CopyFrom(proto)
    rest.ClearField("graph")
    with open(path, "wb") as out:
        out.write(rest.SerializeToString())
        out.write(b"\x3a" + _varint(graph_len))
        out.write(graph_bytes)
        for record, span in records:
            out.write(record)
            if span is not None:
                _copy_span(span[0], span[1], span[2], out)
    proto.graph.initializer.extend(inits)


def save_onnx(proto, path: Path, external_data: bool, base_dir: Optional[Path] = None) -> None:
    """Write `proto` to `path`; initializers that live in external data files (relative to `base_dir`) are
    streamed from there, so their bytes are never all in memory. external_data: the tensors go to
    `path`.data (small ones stay inline); else one self-contained file (protobuf fields may come in any order,
    so the graph is written as its tensor-less bytes followed by one initializer record at a time)."""
    import onnx

    base_dir = Path(base_dir) if base_dir is not None else path.parent
    _inline_attribute_tensors(proto.graph, base_dir)
    data_name = path.name + ".data"
    if (path.parent / data_name).exists():
        os.remove(path.parent / data_name)
    spans = {t.name: _external_span(t, base_dir) for t in proto.graph.initializer}
    if not any(spans.values()):
        if external_data:
            onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=_EXTERNAL_MIN_BYTES)
        else:
            onnx.save_model(proto, str(path))
        return
    inits = list(proto.graph.initializer)
    proto.graph.ClearField("initializer")
    if external_data:
        _save_external(proto, inits, spans, path, data_name)
    else:
        _save_single_file(proto, inits, spans, path)


def pack_onnx(path: str | Path) -> None:
    """Rewrite a graph saved with external data (`path`.data) as one self-contained file, streaming the tensors
    (never all in memory); a graph without external data is left as it is."""
    import onnx

    path = Path(path)
    data = path.with_name(path.name + ".data")
    if not data.exists():
        return
    proto = onnx.load(str(path), load_external_data=False)
    packed = path.with_name(path.name + ".packing")
    try:
        save_onnx(proto, packed, False, base_dir=path.parent)
        os.replace(packed, path)
    finally:
        if packed.exists():
            os.remove(packed)
    os.remove(data)


def onnx_files(path: str | Path) -> list[Path]:
    """The graph file and its external-data file when there is one."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return [path] + ([data] if data.exists() else [])


def onnx_param_count(path: str | Path) -> int:
    """Number of weight elements stored as initializers (float, and int8 for quantized graphs)."""
    import numpy as np
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) if t.dims else 1 for t in proto.graph.initializer))
