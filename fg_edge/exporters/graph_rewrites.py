"""Rewrites of an exported ONNX graph (ModelProto, weights possibly in external data): fg-edge metadata and the
LM head (named, and for tied embeddings fed from the embedding instead of a second, transposed copy)."""

from __future__ import annotations

#: node name given to the vocabulary projection (LM head) of causal-LM graphs; quantization excludes it by default
LM_HEAD_NODE = "fg_edge/lm_head"


def dedupe_lm_head(proto, base_dir: str = "") -> dict:
    """Name the MatMul that produces `logits` LM_HEAD_NODE and, when its weight is the transposed token
    embedding (tied embeddings: the TorchScript exporter constant-folds W.T into a second copy), feed it
    Transpose(embedding) instead so the weights are stored once (ORT folds the Transpose at session creation)."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get("logits")
    while node is not None and node.op_type in ("Identity", "Cast", "Reshape") and node.input:
        node = producer.get(node.input[0])
    if node is None or node.op_type != "MatMul":
        return {"lm_head_node": None}
    node.name = LM_HEAD_NODE
    inits = {t.name: t for t in graph.initializer}
    w = inits.get(node.input[1])
    result = {"lm_head_node": LM_HEAD_NODE, "tied_embedding_deduplicated": False}
    if w is None or len(w.dims) != 2:
        return result
    uses = sum(1 for n in graph.node for i in n.input if i == w.name)
    if uses != 1:
        return result
    for gather in graph.node:
        if gather.op_type != "Gather" or gather.input[0] not in inits:
            continue
        e = inits[gather.input[0]]
        if list(e.dims) != [w.dims[1], w.dims[0]] or e.data_type != w.data_type:
            continue
        if not np.array_equal(numpy_helper.to_array(e, base_dir).T, numpy_helper.to_array(w, base_dir)):
            continue
        t_out = LM_HEAD_NODE + "/embedding_T"
        transpose = helper.make_node("Transpose", [e.name], [t_out], name=LM_HEAD_NODE + "/Transpose", perm=[1, 0])
        node.input[1] = t_out
        graph.initializer.remove(w)
        idx = list(graph.node).index(node)
        graph.node.insert(idx, transpose)
        result.update(tied_embedding_deduplicated=True, bytes_saved=int(np.prod(w.dims)) * 4)
        break
    return result


def add_metadata(proto, meta: dict[str, str]) -> None:
    """Append `meta` to the graph's metadata_props and mark fg-edge as its producer."""
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "fg-edge"


#: dynamic dims of the integer inputs a graph may end up not reading (see restore_unused_inputs)
_INT_INPUT_DIMS = {"position_ids": ("batch_size", "sequence_length"),
                   "token_type_ids": ("batch_size", "sequence_length"),
                   "input_ids": ("batch_size", "sequence_length")}


def restore_unused_inputs(proto, names: list[str], kind: str) -> list[str]:
    """Put back the declared integer inputs that the TorchScript exporter dropped because nothing reads them
    (a decoder whose every RoPE layer lost its heads reads no position_ids: SmolLM3 with NoPE layers), so every
    graph of a kind has the same interface. Returns the names restored."""
    from onnx import TensorProto, helper

    from fg_edge.errors import ExportError

    present = {i.name for i in proto.graph.input}
    restored = []
    for pos, name in enumerate(names):
        if name in present:
            continue
        dims = ("batch_size", "total_sequence_length") if name == "attention_mask" and kind == "causal-lm" else \
            _INT_INPUT_DIMS.get(name, ("batch_size", "sequence_length") if name == "attention_mask" else None)
        if dims is None:
            raise ExportError(f"the exported graph has no input {name!r}: nothing in the model reads it")
        proto.graph.input.insert(min(pos, len(proto.graph.input)),
                                 helper.make_tensor_value_info(name, TensorProto.INT64, list(dims)))
        restored.append(name)
    return restored
