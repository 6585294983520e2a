"""Export a (compiled) HF model to ONNX with dynamic batch / sequence axes (TorchScript exporter).

Graph interfaces (the names the runtime and the parity gate rely on):

* encoders / classifiers: inputs ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` when the model has
  more than one token type); output ``logits`` (task head) or ``last_hidden_state`` (bare backbone).
* causal LMs, one graph with a KV cache: inputs ``input_ids`` (batch, seq), ``attention_mask``
  (batch, past+seq), ``position_ids`` (batch, seq), ``past_key_values.{i}.key`` / ``.value`` of shape
  (batch, kv_heads_i, past, head_dim_i); outputs ``logits`` and ``present.{i}.key`` / ``.value``
  (batch, kv_heads_i, past+seq, head_dim_i). ``past`` may be 0 (prefill). Every layer has its own kv_heads_i,
  measured on the model itself (never taken from the global config), and recorded in the graph metadata
  ``fg_edge.kv_shapes`` as JSON ``[[kv_heads, head_dim], ...]``.

This module holds the I/O spec, the tracing (`trace_to_onnx`) and `finalize_onnx`; the file writer is
`onnx_files`, the graph rewrites (LM head, metadata) `graph_rewrites`, the shape folding `shape_folding`, the
GQA rewrite (attention reads the kv-head cache without repeat_kv copies) `grouped_attention`, the
library patches `patches`.
`LM_HEAD_NODE`, `pack_onnx`, `onnx_files` and `onnx_param_count` are re-exported here, where callers import them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from fg_edge.arch import model_kind
from fg_edge.errors import ConfigError, ExportError
from fg_edge.exporters.graph_rewrites import LM_HEAD_NODE, add_metadata, dedupe_lm_head, restore_unused_inputs
from fg_edge.exporters.onnx_files import attach_initializers, onnx_files, onnx_param_count, pack_onnx, save_onnx
from fg_edge.exporters.grouped_attention import ungroup_kv_repeats
from fg_edge.exporters.shape_folding import fold_shape_computations
from fg_edge.formats.names import KINDS
from fg_edge.gates.layer import replace_module

__all__ = ["DEFAULT_OPSET", "EXTERNAL_DATA_THRESHOLD", "ExportInfo", "LM_HEAD_NODE", "MAX_OPSET", "MIN_OPSET",
           "RawExport", "export_onnx", "finalize_onnx", "kv_layout", "onnx_files", "onnx_param_count", "pack_onnx",
           "trace_to_onnx", "validate_opset"]

log = logging.getLogger(__name__)

#: opsets the TorchScript exporter of this torch writes and ORT runs (torch >= 2.x: up to 20)
MIN_OPSET, MAX_OPSET = 14, 20
DEFAULT_OPSET = 17
#: models with more parameter bytes than this are written with external data (protobuf caps a file at 2 GB)
EXTERNAL_DATA_THRESHOLD = 1_500_000_000

# dummy shapes used for tracing: all different and > 1 so no dimension is specialised into a constant
_TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST = 2, 3, 4


def validate_opset(opset: int) -> int:
    if not isinstance(opset, int) or isinstance(opset, bool) or not (MIN_OPSET <= opset <= MAX_OPSET):
        raise ConfigError(f"--opset {opset!r} is not supported: fg-edge exports ONNX opsets {MIN_OPSET}–{MAX_OPSET} "
                          f"(torch {torch.__version__} TorchScript exporter); default {DEFAULT_OPSET}")
    return opset


def uses_token_type_ids(model: nn.Module) -> bool:
    import inspect

    if "token_type_ids" not in inspect.signature(model.forward).parameters:
        return False
    return int(getattr(model.config, "type_vocab_size", 0) or 0) > 1


def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(k, v) for k, v in cache]  # legacy tuple of tuples


@torch.no_grad()
def kv_layout(model: nn.Module) -> list[tuple[int, int]]:
    """[(kv_heads_i, head_dim_i)] per layer, measured by running the model on one token (ground truth).

    Compiled models differ per layer, so the global config value must never be used. When the config carries
    the compiler's shape record (`fg_edge_layers`), each entry's kv-head count is checked against the model.
    """
    device = next(model.parameters()).device
    ids = torch.full((1, 1), 3, dtype=torch.long, device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, return_dict=True)
    if getattr(out, "past_key_values", None) is None:
        raise ExportError(f"{type(model).__name__} returned no KV cache with use_cache=True; cannot export a "
                          f"cached decoder graph")
    shapes = [(int(k.shape[1]), int(k.shape[3])) for k, _ in _cache_layers(out.past_key_values)]
    _check_shape_record(model, shapes)
    return shapes


def _check_shape_record(model: nn.Module, shapes: list[tuple[int, int]]) -> None:
    """Cross-check the measured cache shapes with config.fg_edge_layers (the compiler's record) when present."""
    record = getattr(model.config, "fg_edge_layers", None)
    if not record:
        return
    if len(record) != len(shapes):
        raise ExportError(f"config.fg_edge_layers lists {len(record)} layers, the model's KV cache has {len(shapes)}")
    for i, (entry, got) in enumerate(zip(record, shapes)):
        cache = entry.get("kv_cache") if isinstance(entry, dict) else None
        if isinstance(cache, dict):
            want = (cache.get("num_heads"), cache.get("head_dim"))
        elif isinstance(entry, dict) and entry.get("num_heads"):
            want = (entry.get("num_kv_heads"), entry.get("head_dim"))
        else:
            continue
        if tuple(want) != tuple(got):
            raise ExportError(f"layer {i}: the shape record (config.fg_edge_layers) says the KV cache holds "
                              f"{want[0]} heads of dim {want[1]}, the model caches {got[0]} of dim {got[1]}")


class EncoderWrapper(nn.Module):
    def __init__(self, model: nn.Module, output: str, token_type_ids: bool):
        super().__init__()
        self.model, self.output, self.token_type_ids = model, output, token_type_ids

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        if self.token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        return getattr(self.model(**kwargs), self.output)


class DecoderWrapper(nn.Module):
    """Flat tensors in and out; a DynamicCache is built from the per-layer past tensors inside the graph."""

    def __init__(self, model: nn.Module, num_layers: int):
        super().__init__()
        self.model, self.num_layers = model, num_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, return_dict=True)
        flat = []
        for k, v in _cache_layers(out.past_key_values):
            flat += [k, v]
        return (out.logits, *flat)


@dataclass
class ExportInfo:
    kind: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    external_data: bool
    token_type_ids: bool = False
    kv_shapes: list[tuple[int, int]] = field(default_factory=list)
    lm_head: dict = field(default_factory=dict)
    shape_folding: dict = field(default_factory=dict)
    grouped_attention: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kv_shapes"] = [list(s) for s in self.kv_shapes]
        return d


def param_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def _io_spec(model: nn.Module, kind: str, kv_shapes, vocab: int):
    g = torch.Generator().manual_seed(0)
    b, s, p = _TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST
    ids = torch.randint(3, max(vocab, 4), (b, s), generator=g)
    dtype = next(model.parameters()).dtype
    if kind == "causal-lm":
        names = ["input_ids", "attention_mask", "position_ids"]
        args = [ids, torch.ones(b, p + s, dtype=torch.long), torch.arange(p, p + s).expand(b, s).contiguous()]
        dyn = {"input_ids": {0: "batch_size", 1: "sequence_length"},
               "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
               "position_ids": {0: "batch_size", 1: "sequence_length"},
               "logits": {0: "batch_size", 1: "sequence_length"}}
        outputs = ["logits"]
        for i, (kv, hd) in enumerate(kv_shapes):
            for part in ("key", "value"):
                name = f"past_key_values.{i}.{part}"
                names.append(name)
                args.append(torch.randn(b, kv, p, hd, generator=g).to(dtype))
                dyn[name] = {0: "batch_size", 2: "past_sequence_length"}
                out = f"present.{i}.{part}"
                outputs.append(out)
                dyn[out] = {0: "batch_size", 2: "total_sequence_length"}
        return args, names, outputs, dyn
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, -1] = 0
    names, args = ["input_ids", "attention_mask"], [ids, mask]
    dyn = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    if uses_token_type_ids(model):
        names.append("token_type_ids")
        args.append(torch.zeros(b, s, dtype=torch.long))
        dyn["token_type_ids"] = {0: "batch_size", 1: "sequence_length"}
    output = "logits" if kind == "classification" else "last_hidden_state"
    dyn[output] = {0: "batch_size"} if kind == "classification" else {0: "batch_size", 1: "sequence_length"}
    return args, names, [output], dyn


def export_onnx(model: nn.Module, path: str | Path, *, opset: int = DEFAULT_OPSET, kind: Optional[str] = None,
                external_data: Optional[bool] = None) -> ExportInfo:
    """Export `model` (a plain HF model: compiled, or dense with gates folded) to `path`.

    external_data: None = automatic (above EXTERNAL_DATA_THRESHOLD bytes of parameters), True / False forces it;
    the tensors then go to ``<path>.data`` next to the graph. The model is left in eval mode.
    """
    validate_opset(opset)
    kind = kind or model_kind(model)
    if kind not in KINDS:
        raise ConfigError(f"export kind must be one of {', '.join(KINDS)}; got {kind!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".fg-export-", dir=path.parent))
    try:
        raw = trace_to_onnx(model, scratch / "raw.onnx", opset=opset, kind=kind)
        info = finalize_onnx(raw, path, kind=kind, external_data=external_data,
                             model_type=str(getattr(model.config, "model_type", "")))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        model.eval()
    return info


class _TransposedLinear(nn.Module):
    """nn.Linear with its weight stored (in, out): exports as MatMul(x, W^T) + Add like nn.Linear does, but
    reads the parameter directly, so the exporter's constant folding makes no transposed copy of every weight."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


@torch.no_grad()
def transpose_linears_(model: nn.Module) -> int:
    """Replace every nn.Linear whose weight is not shared (tied) by a _TransposedLinear, layer by layer (the old
    weight is freed as soon as its copy exists). Consumes the model for export only; returns #replaced."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) is nn.Linear and counts.get(id(m.weight), 0) == 1]
    fresh = set()
    for name, m in targets:
        new = replace_module(model, name, _TransposedLinear(m))
        fresh.add(id(new.weight_t))
        m.weight = None
    # weights loaded from safetensors live in one file mapping that stays resident while any tensor uses it:
    # re-home what is left (embeddings, norms, biases) so the mapping, and its resident pages, are released
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in fresh:
            t.data = t.data.clone()
    return len(targets)


@torch.no_grad()
def restore_linears_(model: nn.Module) -> int:
    """Undo `transpose_linears_`: every _TransposedLinear becomes an nn.Linear again, layer by layer, with the
    same weight values (a transpose is exact) — for a model that goes on being used after its export (the dense
    baseline, exported between the compiler's fold and prune). Returns #restored."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, _TransposedLinear)]
    for name, m in targets:
        k, n = m.weight_t.shape
        linear = nn.Linear(k, n, bias=m.bias is not None, device="meta", dtype=m.weight_t.dtype)
        linear.weight = nn.Parameter(m.weight_t.detach().t().contiguous(), requires_grad=False)
        if m.bias is not None:
            linear.bias = m.bias
        replace_module(model, name, linear)
        m.weight_t = None
    return len(targets)


def trace_to_onnx(model: nn.Module, raw: str | Path, *, opset: int = DEFAULT_OPSET,
                  kind: Optional[str] = None, consume: bool = False) -> "RawExport":
    """First half of `export_onnx`: trace `model` to the plain ONNX file `raw` (no metadata, no post-processing).

    Needs the torch model; `finalize_onnx` does not, so a caller may free the model in between.
    consume: the caller drops the model after this; its linears are re-laid out (transpose_linears_) so the
    export holds no second, transposed copy of the weights (peak memory), with the same graph computed."""
    validate_opset(opset)
    kind = kind or model_kind(model)
    if kind not in KINDS:
        raise ConfigError(f"export kind must be one of {', '.join(KINDS)}; got {kind!r}")
    raw = Path(raw)
    model.eval()
    kv_shapes = kv_layout(model) if kind == "causal-lm" else []
    vocab = int(getattr(model.config, "vocab_size", 100) or 100)
    args, names, outputs, dyn = _io_spec(model, kind, kv_shapes, vocab)
    n_params = param_bytes(model)
    if consume:
        transpose_linears_(model)
    if kind == "causal-lm":
        wrapper = DecoderWrapper(model, len(kv_shapes))
    else:
        wrapper = EncoderWrapper(model, outputs[0], "token_type_ids" in names)
    # torch.onnx.export puts the wrapper's training flag back onto every child: eval() the wrapper itself
    wrapper.eval()
    from fg_edge.exporters.patches import (capture_initializers, export_patches, no_graph_shape_inference,
                                           no_onnxscript_function_scan)

    try:
        with export_patches(), no_graph_shape_inference(), no_onnxscript_function_scan(), torch.no_grad(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                # export_params=False: the exporter's own weight serialisation builds the ModelProto, its byte
                # string and a Python copy of it, and re-parses it (3-4 copies of the weights at once); instead
                # the initializers it would write are captured and streamed to `raw`.data one tensor at a time
                with capture_initializers() as params:
                    torch.onnx.export(wrapper, tuple(args), str(raw), input_names=names, output_names=outputs,
                                      dynamic_axes=dyn, opset_version=opset, do_constant_folding=True,
                                      dynamo=False, export_params=False)
                attach_initializers(raw, params)
                params.clear()
            except Exception as exc:
                raise ExportError(f"torch.onnx.export of {type(model).__name__} ({kind}, opset {opset}) failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
    finally:
        model.eval()
    return RawExport(path=raw, kind=kind, opset=opset, input_names=names, output_names=outputs,
                     kv_shapes=kv_shapes, param_bytes=n_params,
                     model_type=str(getattr(model.config, "model_type", "")),
                     model_class=type(model).__name__)


@dataclass
class RawExport:
    path: Path
    kind: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    kv_shapes: list[tuple[int, int]]
    param_bytes: int
    model_type: str
    model_class: str


def finalize_onnx(raw: "RawExport", path: str | Path, *, kind: Optional[str] = None,
                  external_data: Optional[bool] = None, model_type: Optional[str] = None) -> ExportInfo:
    """Second half of `export_onnx`: add the fg-edge metadata, name (and for tied embeddings deduplicate) the
    LM head, fold the shape arithmetic into constants (fg_edge.exporters.shape_folding), and write `path`
    (+ external data when large). Needs no torch model."""
    import gc

    import onnx

    path = Path(path)
    kind = kind or raw.kind
    if external_data is None:
        external_data = raw.param_bytes > EXTERNAL_DATA_THRESHOLD
    # the weights stay in the raw export's external data file: the final file is written from it tensor by
    # tensor (`save_onnx`), so no full copy of the weights is ever in memory
    proto = onnx.load(str(raw.path), load_external_data=False)
    meta = {"fg_edge.kind": kind, "fg_edge.kv_shapes": json.dumps([list(s) for s in raw.kv_shapes]),
            "fg_edge.model_type": model_type if model_type is not None else raw.model_type}
    restored = restore_unused_inputs(proto, raw.input_names, kind)
    if restored:
        log.info("inputs %s are read by nothing in the graph; kept as declared (unused) inputs", restored)
    lm_head = dedupe_lm_head(proto, str(raw.path.parent)) if kind == "causal-lm" else {}
    if lm_head.get("lm_head_node"):
        meta["fg_edge.lm_head_node"] = lm_head["lm_head_node"]
    folding = fold_shape_computations(proto)
    # after folding: the repeat_kv chains' Expand / Reshape targets must be constants to be recognised
    grouped = ungroup_kv_repeats(proto) if kind == "causal-lm" else {}
    add_metadata(proto, meta)
    save_onnx(proto, path, external_data, base_dir=raw.path.parent)
    del proto
    for f in onnx_files(raw.path):
        os.remove(f)
    gc.collect()
    info = ExportInfo(kind=kind, opset=raw.opset, input_names=raw.input_names, output_names=raw.output_names,
                      external_data=bool(external_data), token_type_ids="token_type_ids" in raw.input_names,
                      kv_shapes=raw.kv_shapes, lm_head=lm_head, shape_folding=folding,
                      grouped_attention=grouped)
    log.info("exported %s (%s, opset %d%s) to %s", raw.model_class, kind, raw.opset,
             ", external data" if external_data else "", path)
    return info
