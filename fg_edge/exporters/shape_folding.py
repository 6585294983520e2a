"""Fold the shape arithmetic of an exported graph into constants, so each forward runs only the real work.

The TorchScript exporter writes every `view` / `expand` / `x[..., :n]` of the modelling code as a chain of
Shape → Gather → Unsqueeze → Concat (→ Equal / Where for `expand(-1)`) nodes feeding a Reshape, Expand or Slice,
recomputed on every forward: about 1,500 of the 3,600 nodes of a SmolLM2-135M decode step, each a few µs of
ORT's per-node overhead, while the step's weight work (211 int4 MatMuls) takes about 9 ms on one core.

ONNX Runtime's symbolic shape inference knows each of those values in terms of the graph's dynamic axes
(`batch_size`, `sequence_length`, `past_sequence_length`). From it, exactly:

* a Reshape target becomes a constant when each entry is an integer, the input's own dimension at the same
  index (written 0, ONNX's "copy this dimension") or the single remaining unknown (written -1);
* an Expand target becomes a constant when each symbolic entry is the input's own dimension (written 1, which
  broadcasting keeps);
* a Slice whose output has the input's shape, with unit steps, takes everything and is dropped;
* any other integer tensor whose value inference found to be a constant becomes an initializer;

then the nodes nothing reads any more are removed. The graph computes the same values with the same kernels
(only shape arithmetic changes), and the compiler's parity gate checks every file as before. When symbolic
inference cannot read a graph, it is left as it is (logged).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

log = logging.getLogger(__name__)

_INT_TYPES = (6, 7)   # onnx.TensorProto.INT32, INT64


def fold_shape_computations(proto) -> dict[str, Any]:
    """Rewrite `proto` (a ModelProto; weights may stay in external data) in place; return what changed."""
    before = len(proto.graph.node)
    try:
        info = _infer(proto)
    except Exception as exc:  # symbolic inference is best-effort: an unreadable graph is exported unchanged
        log.info("shape folding skipped: symbolic shape inference failed (%s: %s)", type(exc).__name__, exc)
        return {"applied": False, "reason": f"{type(exc).__name__}: {exc}", "nodes_before": before,
                "nodes_after": before}
    counts = _rewrite(proto, info)
    counts["removed_nodes"] = remove_dead(proto)
    after = len(proto.graph.node)
    log.info("shape folding: %d -> %d nodes (%s)", before, after,
             ", ".join(f"{k} {v}" for k, v in counts.items() if k != "removed_nodes"))
    return {"applied": True, "nodes_before": before, "nodes_after": after, **counts}


class _Inferred:
    """What symbolic inference knows of each tensor: its shape (sympy expressions) and, for small integer
    tensors, its value."""

    def __init__(self, ssi):
        self.ssi = ssi

    def shape(self, name: str) -> Optional[list]:
        import sympy

        vi = self.ssi.known_vi_.get(name)
        if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            return None
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(sympy.Integer(d.dim_value))
            elif d.dim_param:
                dims.append(self.ssi.symbolic_dims_.get(d.dim_param) or sympy.sympify(d.dim_param))
            else:
                return None
        return dims

    def elem_type(self, name: str) -> Optional[int]:
        vi = self.ssi.known_vi_.get(name)
        if vi is None or not vi.type.HasField("tensor_type"):
            return None
        return vi.type.tensor_type.elem_type

    def value(self, name: str):
        """The inferred value: a scalar or a list of ints / sympy expressions; None when unknown."""
        v = self.ssi.sympy_data_.get(name)
        if v is None:
            return None
        if hasattr(v, "tolist"):
            v = v.tolist()
        return v


def _infer(proto) -> _Inferred:
    """Symbolic shape inference on a weightless copy of `proto`: initializers kept in external data become graph
    inputs of the same type and shape (inference needs no weight values, and never reads the data files).
    What inference proves holds even where it stops early (a shape it cannot infer): only proven facts are
    used."""
    from onnx import ModelProto, helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    skeleton = ModelProto()
    skeleton.CopyFrom(proto)
    graph = skeleton.graph
    external = [t for t in graph.initializer if t.data_location == 1]   # TensorProto.EXTERNAL
    if external:
        names = {t.name for t in external}
        inputs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external]
        kept = [t for t in graph.initializer if t.name not in names]
        graph.ClearField("initializer")
        graph.initializer.extend(kept)
        graph.input.extend(inputs)
    ssi = SymbolicShapeInference(int_max=2**31 - 1, auto_merge=False, guess_output_rank=False, verbose=0)
    ssi._preprocess(skeleton)
    done = False
    while ssi.run_:
        done = ssi._infer_impl()
    if not done:
        log.info("shape folding: symbolic shape inference stopped before the end of the graph; using what it proved")
    return _Inferred(ssi)


def _int(v) -> Optional[int]:
    """v as a Python int when it is a concrete integer, else None."""
    import sympy

    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, sympy.Integer):
        return int(v)
    if hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0 and v.dtype.kind == "i":
        return int(v)
    return None


def _same(a, b) -> bool:
    import sympy

    try:
        return sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0
    except (TypeError, ValueError, sympy.SympifyError):
        return False


def _concrete(value) -> Optional[list | int]:
    if isinstance(value, list):
        ints = [_int(v) for v in value]
        return None if any(i is None for i in ints) else ints
    return _int(value)


def _reshape_target(in_shape: Optional[list], target: list) -> Optional[list[int]]:
    out, unknown = [], 0
    for i, v in enumerate(target):
        iv = _int(v)
        if iv is not None:
            out.append(iv)
            unknown += iv == -1
        elif in_shape is not None and i < len(in_shape) and _same(v, in_shape[i]):
            out.append(0)
        else:
            out.append(-1)
            unknown += 1
    return out if unknown <= 1 else None


def _expand_target(in_shape: Optional[list], target: list) -> Optional[list[int]]:
    if in_shape is None:
        return None
    offset = len(target) - len(in_shape)
    out = []
    for i, v in enumerate(target):
        iv = _int(v)
        if iv is not None:
            out.append(iv)
        elif i - offset >= 0 and _same(v, in_shape[i - offset]):
            out.append(1)
        else:
            return None
    return out


def _rewrite(proto, info: _Inferred) -> dict[str, int]:
    import numpy as np
    from onnx import numpy_helper

    graph = proto.graph
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                       for o in n.output}
    graph_inputs = {i.name for i in graph.input}
    kept_names = {o.name for o in graph.output} | subgraph_reads(graph)   # names a bypass cannot rename
    made: dict[tuple, str] = {}
    counts = {"reshape": 0, "expand": 0, "slice": 0, "constants": 0}

    def constant(values, dtype: int, scalar: bool) -> str:
        key = (tuple(values) if isinstance(values, list) else values, dtype, scalar)
        if key not in made:
            name = f"fg_edge/shape_{len(made)}"
            arr = np.array(values, dtype=np.int64 if dtype == 7 else np.int32)
            graph.initializer.append(numpy_helper.from_array(arr.reshape(()) if scalar else arr, name))
            made[key] = name
            constants.add(name)
        return made[key]

    bypass: dict[str, str] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):   # a Slice dropped upstream: read its input instead
            if name in bypass:
                node.input[i] = bypass[name]
        if node.op_type == "Reshape" and len(node.input) == 2 and node.input[1] not in constants:
            allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
            target = info.value(node.input[1])
            new = _reshape_target(info.shape(node.input[0]), target) if isinstance(target, list) else None
            if new is not None and not allowzero:
                node.input[1] = constant(new, 7, False)
                counts["reshape"] += 1
        elif node.op_type == "Expand" and node.input[1] not in constants:
            target = info.value(node.input[1])
            new = _expand_target(info.shape(node.input[0]), target) if isinstance(target, list) else None
            if new is not None:
                node.input[1] = constant(new, 7, False)
                counts["expand"] += 1
        elif node.op_type == "Slice" and node.output[0] not in kept_names and _takes_all(node, info):
            bypass[node.output[0]] = node.input[0]
            counts["slice"] += 1
            continue
        for i, name in enumerate(node.input):
            if not name or name in constants or name in graph_inputs:
                continue
            dtype = info.elem_type(name)
            value = _concrete(info.value(name)) if dtype in _INT_TYPES else None
            if value is None:
                continue
            shape = info.shape(name)
            node.input[i] = constant(value, dtype, scalar=shape is not None and len(shape) == 0)
            counts["constants"] += 1
    return counts


def _takes_all(node, info: _Inferred) -> bool:
    """A Slice whose output has its input's shape and whose steps are all 1 returns its input unchanged."""
    if len(node.input) > 4 and node.input[4]:
        steps = _concrete(info.value(node.input[4]))
        if steps is None or any(s != 1 for s in (steps if isinstance(steps, list) else [steps])):
            return False
    a, b = info.shape(node.input[0]), info.shape(node.output[0])
    return a is not None and b is not None and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


def subgraph_reads(graph) -> set[str]:
    """Every tensor name read inside the subgraphs (If / Loop / Scan branches) of `graph`'s nodes: they may
    read outer-scope tensors without naming them as node inputs."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for inner in sub.node:
                    names.update(i for i in inner.input if i)
                names |= subgraph_reads(sub)
                names.update(o.name for o in sub.output)
    return names


def remove_dead(proto) -> int:
    """Drop the nodes and initializers nothing reads (graph outputs and subgraphs count as readers; an
    initializer that is also a graph input stays, as it is a default the caller may override); return how many
    nodes went."""
    graph = proto.graph
    needed = {o.name for o in graph.output} | subgraph_reads(graph) | {i.name for i in graph.input}
    alive = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            alive.append(node)
            needed.update(i for i in node.input if i)
    removed = len(graph.node) - len(alive)
    if removed:
        alive.reverse()
        kept = [type(n)() for n in alive]
        for k, n in zip(kept, alive):
            k.CopyFrom(n)
        del graph.node[:]
        graph.node.extend(kept)
        inits = [t for t in graph.initializer if t.name in needed]
        if len(inits) != len(graph.initializer):
            kept_inits = [type(t)() for t in inits]
            for k, t in zip(kept_inits, inits):
                k.CopyFrom(t)
            del graph.initializer[:]
            graph.initializer.extend(kept_inits)
    return removed
