"""Every monkeypatch fg-edge applies to a library while it exports or quantizes, each scoped to a `with` block.

Each patch is a context manager that swaps the library attribute on entry and puts the original back on exit,
also when the body raises. Checked against torch 2.13.0+cpu, transformers 4.57.6, optimum-onnx 0.1.0 and
onnxruntime 1.32.0; a patch names the private symbol it relies on, so a library upgrade that removes it fails
loudly (AttributeError on entry) rather than silently exporting something else.

* `export_patches` — transformers >= 4.53 builds attention masks with `torch.vmap`, which `torch.jit.trace`
  cannot record; optimum-onnx ships vectorised replacements (`sdpa_mask_without_vmap`, `eager_mask_without_vmap`)
  and patches for `find_packed_sequence_indices` and `DynamicLayer.update`. We apply exactly those.
* `capture_initializers` — records the initializer dict the TorchScript exporter hands to its serialiser
  (private `torch._C._jit_pass_onnx_deduplicate_initializers`), so the weights can be streamed to disk.
* `no_graph_shape_inference` — the TorchScript exporter runs ONNX shape inference over the whole graph twice
  (~1.2 s each on SmolLM2-135M) only to annotate value types; fg-edge's finalize step re-infers what it needs
  and writes no value_info, so the final graphs are identical without it (checked on every tiny architecture).
* `no_onnxscript_function_scan` — after serialising, the TorchScript exporter parses the graph again and walks
  every node looking for custom-domain ops backed by onnxscript functions (~0.5 s per SmolLM2-135M export); with
  none registered (fg-edge registers none) the walk can only return the bytes unchanged, so it is skipped.
* `lean_quantizer_shape_inference` — onnxruntime's dynamic quantizer refreshes value_info with a full copy of the
  model; this replaces `onnx_quantizer.save_and_reload_model_with_shape_infer` by a copy-free equivalent.
* `shape_inference_dump_into` — onnxruntime's symbolic shape inference saves a failed run's model to a path
  relative to the current directory; this sends that file into a folder of ours instead (no `os.chdir`).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

from fg_edge.errors import ExportError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _swapped(owner: Any, name: str, new: Any) -> Iterator[Any]:
    """Set `owner.name = new` for the block; the original (yielded) is restored on exit, also on error."""
    orig = getattr(owner, name)
    setattr(owner, name, new)
    try:
        yield orig
    finally:
        setattr(owner, name, orig)


@contextlib.contextmanager
def _registered(registry, name: str, fn) -> Iterator[None]:
    """Register `fn` as `name` in a transformers AttentionMaskInterface for the block, then the original again.
    (transformers 4.57.6 registers both "sdpa" and "eager" itself, so there is always an original.)"""
    orig = registry[name] if name in registry else None
    registry.register(name, fn)
    try:
        yield
    finally:
        if orig is not None:
            registry.register(name, orig)


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """The optimum-onnx patches that make transformers' forward traceable (versions: see the module docstring)."""
    import transformers.cache_utils as cache_utils
    import transformers.masking_utils as masking_utils

    try:
        from optimum.exporters.onnx import model_patcher as mp
    except ImportError as exc:  # pragma: no cover - optimum-onnx is a dependency
        raise ExportError("fg-edge's ONNX export needs optimum-onnx (pip install optimum-onnx)") from exc

    registry = masking_utils.ALL_MASK_ATTENTION_FUNCTIONS
    with contextlib.ExitStack() as stack:
        stack.enter_context(_registered(registry, "sdpa", mp.sdpa_mask_without_vmap))
        stack.enter_context(_registered(registry, "eager", mp.eager_mask_without_vmap))
        stack.enter_context(_swapped(masking_utils, "find_packed_sequence_indices",
                                     mp.find_packed_sequence_indices_patched))
        stack.enter_context(_swapped(cache_utils.DynamicLayer, "update", mp.patched_dynamic_layer_update))
        yield


@contextlib.contextmanager
def capture_initializers() -> Iterator[dict]:
    """Record the initializer dict (name -> tensor, after constant folding and deduplication) that the
    TorchScript exporter passes to its serialiser; it is handed to `_export_onnx` only with export_params.

    Wraps the private `torch._C._jit_pass_onnx_deduplicate_initializers` (torch 2.13.0+cpu; the TorchScript
    exporter, dynamo=False, calls it once per export); the wrapper returns the original's result unchanged."""
    from torch import _C

    captured: dict = {}
    orig = _C._jit_pass_onnx_deduplicate_initializers

    def capture(graph, params_dict, is_train):
        result = orig(graph, params_dict, is_train)
        captured.clear()
        captured.update(result)
        return result

    with _swapped(_C, "_jit_pass_onnx_deduplicate_initializers", capture):
        yield captured


@contextlib.contextmanager
def no_graph_shape_inference() -> Iterator[None]:
    """Skip the exporter's two whole-graph passes `torch._C._jit_pass_onnx_graph_shape_type_inference` (torch
    2.13.0+cpu, TorchScript exporter): they only annotate value types (the exporter ignores their failures). The
    per-node inference that symbolic functions read while the graph is converted is not touched."""
    from torch import _C

    with _swapped(_C, "_jit_pass_onnx_graph_shape_type_inference", lambda graph, params_dict, opset: None):
        yield


#: the symbolic-function domains torch registers itself; only another domain can carry an onnxscript function
_BUILTIN_SYMBOLIC_DOMAINS = frozenset({"aten", "onnx", "prim", "quantized"})


@contextlib.contextmanager
def no_onnxscript_function_scan() -> Iterator[None]:
    """Skip `torch.onnx._internal.torchscript_exporter.onnx_proto_utils._add_onnxscript_fn` (torch 2.13.0+cpu)
    when no symbolic function of a custom domain is registered: it inserts the FunctionProtos of such functions
    only, so then it returns the model bytes it was given, after parsing them and visiting every node. With a
    custom domain registered (another library in this process) the original runs."""
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils, registration

    orig = onnx_proto_utils._add_onnxscript_fn

    def add_onnxscript_fn(model_bytes, custom_opsets):
        domains = {name.split("::", 1)[0] for name in registration.registry.all_functions()}
        if custom_opsets or domains - _BUILTIN_SYMBOLIC_DOMAINS:
            return orig(model_bytes, custom_opsets)
        return model_bytes

    with _swapped(onnx_proto_utils, "_add_onnxscript_fn", add_onnxscript_fn):
        yield


#: initializers at least this large are left out of the copy that shape inference sees (weights, not shapes)
_SHAPE_INFER_STRIP_BYTES = 4096


def _lean_shape_infer(model):
    """save_and_reload_model_with_shape_infer without the copies: infer shapes on a copy that holds stand-ins
    for the large weight tensors and put the result (value_info, inputs, outputs, metadata) into `model` itself."""
    import onnx
    from onnxruntime.quantization import quant_utils

    # field by field, never clearing the model's initializers (protobuf would copy every live tensor)
    light = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(light, name, getattr(model, name))
    light.opset_import.extend(model.opset_import)
    light.metadata_props.extend(model.metadata_props)
    light.functions.extend(model.functions)
    light.graph.name = model.graph.name
    for name in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(light.graph, name).extend(getattr(model.graph, name))
    for t in model.graph.initializer:
        if t.ByteSize() >= _SHAPE_INFER_STRIP_BYTES:  # a data-less stand-in: name, type and dims only
            stub = light.graph.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
        else:
            light.graph.initializer.add().CopyFrom(t)
    inferred = onnx.shape_inference.infer_shapes(light)
    quant_utils.add_infer_metadata(inferred)
    for field in ("value_info", "input", "output"):
        model.graph.ClearField(field)
        getattr(model.graph, field).extend(getattr(inferred.graph, field))
    del model.metadata_props[:]
    model.metadata_props.extend(inferred.metadata_props)
    return model


@contextlib.contextmanager
def lean_quantizer_shape_inference() -> Iterator[None]:
    """ORT's dynamic quantizer refreshes value_info with save_and_reload_model_with_shape_infer: a deep copy of
    the whole model, written out and loaded back (with the caller's copy still alive: 3x the weights in RAM).
    Same value_info, one copy (`_lean_shape_infer`). Patches `onnxruntime.quantization.onnx_quantizer.
    save_and_reload_model_with_shape_infer` (onnxruntime 1.32.0) for the block."""
    from onnxruntime.quantization import onnx_quantizer

    with _swapped(onnx_quantizer, "save_and_reload_model_with_shape_infer", _lean_shape_infer):
        yield


#: the relative path onnxruntime.tools.symbolic_shape_infer (1.32.0) saves an incomplete inference to
_SHAPE_INFER_DUMP = "sym_shape_infer_temp.onnx"


@contextlib.contextmanager
def shape_inference_dump_into(folder: str | Path) -> Iterator[None]:
    """`SymbolicShapeInference.infer_shapes` (onnxruntime 1.32.0, run by quant_pre_process) writes
    "sym_shape_infer_temp.onnx" and its external data (a uuid-named .data file) into the current directory when
    inference is incomplete, then raises. For the block, `onnx.save_model` (onnx 1.23.2) writes that one relative
    path under `folder` instead; every other save is passed through unchanged."""
    import onnx

    orig = onnx.save_model

    def save_model(proto, f, *args, **kwargs):
        if isinstance(f, (str, Path)) and str(f) == _SHAPE_INFER_DUMP:
            f = str(Path(folder) / _SHAPE_INFER_DUMP)
        return orig(proto, f, *args, **kwargs)

    with _swapped(onnx, "save_model", save_model):
        yield
