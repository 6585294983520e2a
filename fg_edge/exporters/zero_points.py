"""Float zero points of MatMulNBits weights moved onto ONNX Runtime's fast integer-zero-point kernels, exactly.

A calibration-free optimiser such as HQQ finds, per block of `block_size` inputs of one output column, a scale
s and a float zero point z: W[k, n] = (q[k, n] - z[b, n]) * s[b, n]. ORT's CPU kernel only takes its fast path
(MLAS, int8 compute at accuracy level 4) with integer zero points; float ones run a slow fallback (measured 15x
slower per decoded token on SmolLM2-135M with onnxruntime 1.32). Split z into an integer part and a residual,
z = z_int + r with z_int = clip(round(z), 0, 2^bits - 1); then

    W[k, n] = (q[k, n] - z_int[b, n]) * s[b, n]  -  r[b, n] * s[b, n]

and for an input x the second term contributes sum_b (sum_{k in b} x[k]) * C[b, n] with C = -r * s. The
per-block sums are x @ S with S the (K, K / block_size) 0/1 block-membership matrix (shared by every node of the
same K), so the correction is (x @ S) @ C: two small MatMuls (K^2 / block_size + K N / block_size
multiply-adds, 3-8 % of the original at block 32), for inputs of any rank. The rewritten node keeps q and s,
takes the packed integer zero points, and adds the correction to its output. In exact arithmetic nothing
changes; in float32 the outputs agree to rounding (the compile's parity check measures it).

The correction costs one float32 per block and column (1 bit per weight at block 32), the same as the float
zero points it replaces.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

#: name suffixes of the two MatMuls a rewritten node gains (op counts report them apart from the model's MatMuls)
CORRECTION_SUFFIXES = ("/BlockSums", "/Correction")


def op_kind(node) -> str:
    """The node's op type, or 'ZeroPointCorrection' for the MatMuls this module adds."""
    if node.op_type == "MatMul" and node.name.endswith(CORRECTION_SUFFIXES):
        return "ZeroPointCorrection"
    return node.op_type


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pack_zero_points(z: np.ndarray, bits: int) -> np.ndarray:
    """(N, n_blocks) integer zero points -> MatMulNBits' uint8 layout: per column, low bits first, each column
    padded to whole bytes."""
    n, blocks = z.shape
    per = 8 // bits
    padded = np.zeros((n, -(-blocks // per) * per), dtype=np.uint8)
    padded[:, :blocks] = z
    padded = padded.reshape(n, -1, per)
    out = np.zeros(padded.shape[:2], dtype=np.uint8)
    for j in range(per):
        out |= (padded[:, :, j] << (bits * j)).astype(np.uint8)
    return out.reshape(-1)


def integer_zero_points(proto) -> dict:
    """Rewrite every MatMulNBits node of `proto` whose zero points are float (see the module docstring);
    returns {"nodes": how many, "correction_params": floats added}."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    done = added = 0
    for node in list(graph.node):
        if node.op_type != "MatMulNBits" or len(node.input) < 4 or node.input[3] not in inits:
            continue
        zp_init = inits[node.input[3]]
        if zp_init.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            continue
        a = _attrs(node)
        k, n, bits, bs = int(a["K"]), int(a["N"]), int(a.get("bits", 4)), int(a["block_size"])
        blocks = -(-k // bs)
        scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, blocks)
        z = numpy_helper.to_array(zp_init).astype(np.float32).reshape(n, blocks)
        z_int = np.clip(np.rint(z), 0, 2 ** bits - 1)
        corr = (-(z - z_int) * scales).T.astype(np.float32)          # (blocks, N)
        name = node.name or node.output[0]
        zp = numpy_helper.from_array(_pack_zero_points(z_int.astype(np.uint8), bits), name + "/zero_points_int")
        c = numpy_helper.from_array(np.ascontiguousarray(corr), name + "/zero_point_correction")
        member = f"fg_edge/block_membership_{k}x{bs}"
        if member not in inits:
            s_matrix = np.zeros((k, blocks), dtype=np.float32)    # the last block may be partial (pruned K)
            s_matrix[np.arange(k), np.arange(k) // bs] = 1.0
            inits[member] = numpy_helper.from_array(s_matrix, member)
            graph.initializer.append(inits[member])
        graph.initializer.extend([zp, c])
        out = node.output[0]
        main = out + "/int_zp"
        node.input[3] = zp.name
        node.output[0] = main
        new = [helper.make_node("MatMul", [node.input[0], member], [out + "/block_sums"], name=name + "/BlockSums"),
               helper.make_node("MatMul", [out + "/block_sums", c.name], [out + "/correction"],
                                name=name + "/Correction"),
               helper.make_node("Add", [main, out + "/correction"], [out], name=name + "/Add")]
        idx = list(graph.node).index(node)
        for j, extra in enumerate(new, start=1):
            graph.node.insert(idx + j, extra)
        graph.initializer.remove(zp_init)
        done += 1
        added += corr.size
    if done:
        log.info("integer zero points: %d MatMulNBits node(s) rewritten, %d correction weights", done, added)
    return {"nodes": done, "correction_params": added}
