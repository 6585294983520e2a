"""Grouped-query attention without the repeated KV cache: an exact rewrite of exported decoder graphs.

HF's eager attention writes GQA's `repeat_kv` as Unsqueeze(axis 2) → Expand([1, kv, g, 1, d]) →
Reshape([0, kv·g, -1, d]) on the key and the value: every decode step copies the whole cache of every layer
g times over before the two attention MatMuls read it (SmolLM2-135M: 3 kv heads, 3 query heads each, so three
copies of each cache per layer per step, growing with the context).

The copies are not needed. The query heads of one kv group are contiguous, so the query [B, kv·g, S, d] *is*
[B, kv, g·S, d] in memory: one Reshape (no copy), a plain batched MatMul against the kv-head key
[B, kv, d, T] gives [B, kv, g·S, T], and a Reshape back gives the scores [B, kv·g, S, T] the rest of the graph
expects (scale, mask, softcap, softmax are untouched). The value side is the same: the probabilities
[B, kv·g, S, T] are [B, kv, g·S, T], MatMul with the value [B, kv, T, d] gives [B, kv, g·S, d], a Reshape gives
[B, kv·g, S, d]. Each output element is the same dot product over the same operands as before; only the GEMM
blocking changes, so results agree to float rounding (the compiler's parity gate checks every file as before).

Matched strictly per layer, after shape folding (the Expand and Reshape targets must be constants); anything
else, including layers with g = 1 where HF repeats nothing, is left as exported.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

log = logging.getLogger(__name__)


def _const_ints(name: str, inits: dict, consts: dict) -> Optional[list[int]]:
    from onnx import numpy_helper

    t = inits.get(name)
    if t is None and name in consts:
        t = consts[name].attribute[0].t if consts[name].attribute else None
    if t is None or t.data_type != 7 or (t.data_location == 1):   # INT64, stored inline
        return None
    return [int(v) for v in numpy_helper.to_array(t).reshape(-1)]


def _attr(node, name: str):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _repeat_chain(reshape, producer: dict, inits: dict, consts: dict) -> Optional[tuple[str, int, int, list]]:
    """(kv-head tensor, kv, g, [unsqueeze, expand, reshape]) when `reshape` ends a repeat_kv chain, else None."""
    if reshape.op_type != "Reshape" or _attr(reshape, "allowzero"):
        return None
    expand = producer.get(reshape.input[0])
    if expand is None or expand.op_type != "Expand":
        return None
    unsq = producer.get(expand.input[0])
    if unsq is None or unsq.op_type != "Unsqueeze":
        return None
    axes = _const_ints(unsq.input[1], inits, consts) if len(unsq.input) > 1 else _attr(unsq, "axes")
    target = _const_ints(expand.input[1], inits, consts)
    shape = _const_ints(reshape.input[1], inits, consts)
    if list(axes or []) != [2] or target is None or shape is None or len(target) != 5 or len(shape) != 4:
        return None
    one, kv, g, one_t, d = target
    if one != 1 or one_t != 1 or kv < 1 or g < 2 or d < 1 or shape != [0, kv * g, -1, d]:
        return None
    return unsq.input[0], kv, g, [unsq, expand, reshape]


def ungroup_kv_repeats(proto) -> dict[str, Any]:
    """Rewrite `proto` (a ModelProto; weights may stay in external data) in place; return what changed."""
    from onnx import helper, numpy_helper
    import numpy as np

    from fg_edge.exporters.shape_folding import remove_dead

    graph = proto.graph
    nodes = list(graph.node)
    producer = {o: n for n in nodes for o in n.output}
    readers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in graph.output}
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in nodes if n.op_type == "Constant"}

    def only_reader(name: str):
        r = readers.get(name, [])
        return r[0] if len(r) == 1 and name not in graph_outputs else None

    shapes: dict[tuple[int, ...], str] = {}

    def shape_const(values: tuple[int, ...]) -> str:
        if values not in shapes:
            name = f"fg_edge/gqa_shape_{len(shapes)}"
            graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
            shapes[values] = name
        return shapes[values]

    # MatMuls whose right operand ends a repeat chain read by them alone: the candidates for probabilities x
    # values (one pass, so the match below is linear in the graph)
    value_side: dict[int, tuple] = {}
    for cand in nodes:
        v_rep = producer.get(cand.input[1]) if cand.op_type == "MatMul" else None
        v_chain = _repeat_chain(v_rep, producer, inits, consts) if v_rep is not None else None
        if v_chain and only_reader(v_rep.output[0]) is cand:
            value_side[id(cand)] = (cand, v_chain)

    drop, insert_before, layers = set(), [], 0
    for score_mm in nodes:
        if score_mm.op_type != "MatMul":
            continue
        kt = producer.get(score_mm.input[1])
        if kt is None or kt.op_type != "Transpose" or list(_attr(kt, "perm") or []) != [0, 1, 3, 2]:
            continue
        k_rep = producer.get(kt.input[0])
        k_chain = _repeat_chain(k_rep, producer, inits, consts) if k_rep is not None else None
        if k_chain is None or only_reader(k_rep.output[0]) is not kt or only_reader(kt.output[0]) is not score_mm:
            continue
        k_src, kv, g, k_nodes = k_chain
        # the value chain with the same grouping, read by exactly one MatMul (probabilities x values) that
        # the scores reach
        pv_mm = v_nodes = v_src = None
        hit = _first_downstream(score_mm.output[0], value_side, readers, limit=12)
        if hit is not None and hit[1][1:3] == (kv, g) and id(hit[0]) not in drop:
            pv_mm, (v_src, _, _, v_nodes) = hit
        if pv_mm is None:
            continue
        if any(only_reader(n.output[0]) is None for n in k_nodes[:2] + v_nodes[:2]):
            continue
        head = score_mm.name or score_mm.output[0]
        q5, k_t, s5 = head + "/gq_query", head + "/gq_key_T", head + "/gq_scores"
        p5, o5 = head + "/gq_probs", head + "/gq_out"
        new = [
            (score_mm, helper.make_node("Reshape", [score_mm.input[0], shape_const((0, kv, -1, 0))], [q5],
                                        name=head + "/gq_Reshape_q")),
            (score_mm, helper.make_node("Transpose", [k_src], [k_t], name=head + "/gq_Transpose_k",
                                        perm=[0, 1, 3, 2])),
            (score_mm, helper.make_node("MatMul", [q5, k_t], [s5], name=head + "/gq_MatMul_qk")),
            (score_mm, helper.make_node("Reshape", [s5, shape_const((0, kv * g, -1, 0))], [score_mm.output[0]],
                                        name=head + "/gq_Reshape_scores")),
            (pv_mm, helper.make_node("Reshape", [pv_mm.input[0], shape_const((0, kv, -1, 0))], [p5],
                                     name=head + "/gq_Reshape_probs")),
            (pv_mm, helper.make_node("MatMul", [p5, v_src], [o5], name=head + "/gq_MatMul_pv")),
            (pv_mm, helper.make_node("Reshape", [o5, shape_const((0, kv * g, -1, 0))], [pv_mm.output[0]],
                                     name=head + "/gq_Reshape_out")),
        ]
        insert_before.extend(new)
        drop.update(id(n) for n in k_nodes + v_nodes + [kt, score_mm, pv_mm])
        layers += 1
    if not layers:
        return {"applied": False, "layers": 0}
    before = len(nodes)
    by_anchor: dict[int, list] = {}
    for anchor, node in insert_before:
        by_anchor.setdefault(id(anchor), []).append(node)
    out = []
    for n in nodes:
        out.extend(by_anchor.get(id(n), []))
        if id(n) not in drop:
            out.append(n)
    del graph.node[:]
    graph.node.extend(out)
    remove_dead(proto)   # the repeat chains' axes and targets, now unread
    after = len(graph.node)
    log.info("grouped attention: %d layer(s) read the kv-head cache directly (no repeat_kv copies); %d -> %d "
             "nodes", layers, before, after)
    return {"applied": True, "layers": layers, "nodes_before": before, "nodes_after": after}


def _first_downstream(start: str, targets: dict, readers: dict, limit: int) -> Optional[tuple]:
    """The entry of `targets` (keyed by node id) whose node first reads, within `limit` hops, what `start`
    feeds; None when none does."""
    frontier, seen = [start], set()
    for _ in range(limit):
        nxt = []
        for name in frontier:
            for r in readers.get(name, []):
                if id(r) in targets:
                    return targets[id(r)]
                if id(r) not in seen:
                    seen.add(id(r))
                    nxt.extend(r.output)
        frontier = nxt
    return None

