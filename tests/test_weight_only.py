"""Weight-only quantization (int4 / int8-wo, MatMulNBits) of fg-edge's non-uniform graphs, and its options."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fg_edge.arch import ARCHITECTURES
from fg_edge.compiler import compile_model
from fg_edge.compiler.shapes import layer_shapes
from fg_edge.errors import ConfigError
from fg_edge.exporters import check_onnx_parity, export_onnx, quantized_op_counts
from fg_edge.exporters.graph_rewrites import LM_HEAD_NODE
from fg_edge.exporters.pipeline import CompileOptions
from fg_edge.exporters.weight_only import WeightOnlyConfig, quantize_embedding, quantize_weight_only
from fg_edge.testing import gated_tiny_model

#: stated bounds on these tiny random models (logits up to ~1): max |logit diff| vs the gated model over prefill
#: and 4 cached greedy steps (measured: int4 0.04-0.05, int8-wo 0.004)
BOUND = {4: 0.15, 8: 0.015}


def _exported(tmp_path, model_type: str, tied: bool = False):
    """A tiny decoder with non-uniform layers (layer 0 loses head 0, layer 1 keeps one kv group), exported."""
    kw = {"tie_word_embeddings": True} if tied else {}
    gated, _ = gated_tiny_model(model_type, {0: [0], 1: slice(2, None)}, {0: slice(None, None, 3)}, **kw)
    compiled, plan, _ = compile_model(gated, decoder_steps=4)
    compiled.config.fg_edge_layers = layer_shapes(plan, ARCHITECTURES[model_type])
    info = export_onnx(compiled, tmp_path / "model.onnx")
    return gated, info


def _const_matmuls(path) -> int:
    proto = onnx.load(str(path))
    inits = {t.name for t in proto.graph.initializer}
    transposed = {n.output[0] for n in proto.graph.node if n.op_type == "Transpose" and n.input[0] in inits}
    return sum(1 for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and (n.input[1] in inits | transposed))


@pytest.mark.parametrize("model_type,bits,tied", [("llama", 4, False), ("llama", 8, True), ("qwen2", 4, True),
                                                  ("gpt2", 4, True)])
def test_matmulnbits_on_non_uniform_decoders(tmp_path, model_type, bits, tied):
    gated, info = _exported(tmp_path, model_type, tied)
    expected = _const_matmuls(tmp_path / "model.onnx")        # every projection (GPT-2: Gemm) + the LM head
    settings = quantize_weight_only(tmp_path / "model.onnx", tmp_path / "q.onnx", bits=bits)
    ops = quantized_op_counts(tmp_path / "q.onnx")
    assert ops["MatMulNBits"] == expected >= 7 and settings["mode"] == ("int4" if bits == 4 else "int8-wo")
    assert settings["lm_head"].startswith("quantized") and ("tied" in settings["lm_head"]) is tied
    nodes = {n.name: n for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    head = nodes[LM_HEAD_NODE + "_Q8"]                          # the LM head is 8-bit by default
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    assert attrs["bits"] == 8 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
    body = [n for n in nodes.values() if n.op_type == "MatMulNBits" and n is not head]
    assert all({a.name: helper.get_attribute_value(a) for a in n.attribute}["bits"] == bits for n in body)
    # the defaults: hqq (asymmetric, integer zero points + correction) for 4 bits, rtn symmetric for 8
    assert (settings["method"], settings["symmetric"]) == (("hqq", False) if bits == 4 else ("rtn", True))
    if bits == 4:
        assert settings["zero_points"].startswith("integer") and any(n.endswith("/Correction") for n in nodes)
    res = check_onnx_parity(gated, tmp_path / "q.onnx", kind=info.kind, steps=4, raise_on_fail=False)
    assert res["max_abs_diff"] < BOUND[bits], res


def test_weight_only_options(tmp_path):
    gated, info = _exported(tmp_path, "llama", tied=True)
    src = tmp_path / "model.onnx"
    quantize_weight_only(src, tmp_path / "sym.onnx", method="rtn", symmetric=True, block_size=16,
                         accuracy_level=0, include_lm_head=False)
    proto = onnx.load(str(tmp_path / "sym.onnx"))
    nbits = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(len(n.input) == 3 for n in nbits)           # symmetric: no zero points
    assert all({a.name: helper.get_attribute_value(a) for a in n.attribute}["block_size"] == 16 for n in nbits)
    assert not any(a.name == "accuracy_level" for n in nbits for a in n.attribute)
    assert any(n.name == LM_HEAD_NODE and n.op_type == "MatMul" for n in proto.graph.node)   # head kept fp32
    hqq = quantize_weight_only(src, tmp_path / "hqq.onnx", method="hqq")
    assert hqq["method"] == "hqq" and "HQQ" in hqq["quantizer"] and hqq["symmetric"] is False
    rtn = quantize_weight_only(src, tmp_path / "asym.onnx", method="rtn", symmetric=False, lm_head_bits=4)
    asym = [n for n in onnx.load(str(tmp_path / "asym.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert rtn["symmetric"] is False and all(len(n.input) == 4 for n in asym)       # zero points
    assert LM_HEAD_NODE + "_Q4" in {n.name for n in asym} and rtn["lm_head"].startswith("quantized, 4-bit")
    assert WeightOnlyConfig(method="rtn").validate().symmetric is True      # rtn's default
    assert WeightOnlyConfig().validate().method == "hqq" and WeightOnlyConfig(bits=8).validate().method == "rtn"
    assert WeightOnlyConfig(symmetric=True).validate().method == "rtn"      # --symmetric exists for rtn only
    res = check_onnx_parity(gated, tmp_path / "hqq.onnx", kind=info.kind, steps=4, raise_on_fail=False)
    assert res["max_abs_diff"] < BOUND[4]
    emb = quantize_weight_only(src, tmp_path / "emb.onnx", include_embedding=True)
    assert quantized_op_counts(tmp_path / "emb.onnx")["GatherBlockQuantized"] == 1
    assert emb["embedding"].startswith("quantized")
    res = check_onnx_parity(gated, tmp_path / "emb.onnx", kind=info.kind, steps=4, raise_on_fail=False)
    assert res["max_abs_diff"] < BOUND[4]


def _gptq_node_model(k, n, bits, bs, symmetric, codes, scales, zeros):
    from fg_edge.exporters.gptq import _matmul_nbits

    mm = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    node, tensors = _matmul_nbits(mm, k, n, codes, scales, zeros, bits, bs, symmetric, 0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, name) for name, v in tensors.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("k,n,bits,bs,symmetric", [(96, 24, 4, 32, False), (77, 5, 4, 32, False),
                                                   (64, 16, 4, 16, True), (130, 40, 8, 64, True)])
def test_gptq_codes_are_packed_the_way_matmulnbits_reads_them(k, n, bits, bs, symmetric):
    """ORT's MatMulNBits on the packed GPTQ codes / scales / zero points computes x @ ((codes - z) * s) (partial
    last blocks included); with an identity Hessian GPTQ is round-to-nearest."""
    import onnxruntime as ort

    from fg_edge.exporters.gptq import gptq_quantize_weight

    rng = np.random.default_rng(0)
    w = rng.normal(size=(k, n)).astype(np.float32)
    codes, scales, zeros = gptq_quantize_weight(w, np.eye(k), bits, bs, symmetric, percdamp=0.0, clip_search=False)
    blk = np.arange(k) // bs
    deq = (codes.astype(np.float64) - zeros[:, blk]) * scales[:, blk]             # (N, K)
    # half a step; symmetric: the extreme of the short side is a full step off (MLAS's grid: -2^(b-1) .. 2^(b-1)-1)
    step = np.abs(scales[:, blk]).T * (1.0 if symmetric else 0.5)
    assert np.all(np.abs(deq.T - w) <= step + 1e-6)
    x = rng.normal(size=(3, k)).astype(np.float32)
    y = ort.InferenceSession(_gptq_node_model(k, n, bits, bs, symmetric, codes, scales, zeros).SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(y - x @ deq.T).max() < 1e-4


def test_gptq_beats_round_to_nearest_on_correlated_activations():
    """On inputs with correlated features (as real activations are) GPTQ's output error is well below RTN's on
    the calibration rows and on fresh rows from the same distribution."""
    from fg_edge.exporters.gptq import gptq_quantize_weight

    rng = np.random.default_rng(0)
    k, n, bs = 128, 64, 32
    mix = rng.normal(size=(k, k)) * np.linspace(2.0, 0.1, k)[:, None]
    calib, fresh = (rng.normal(size=(rows, k)) @ mix for rows in (2048, 512))
    w = rng.normal(size=(k, n)).astype(np.float32)
    blk = np.arange(k) // bs

    def err(codes, scales, zeros, x):
        deq = ((codes.astype(np.float64) - zeros[:, blk]) * scales[:, blk]).T
        return np.linalg.norm(x @ deq - x @ w) / np.linalg.norm(x @ w)

    rtn = gptq_quantize_weight(w, np.eye(k), 4, bs, False, percdamp=0.0, clip_search=False)
    gq = gptq_quantize_weight(w, calib.T @ calib, 4, bs, False)
    for x in (calib, fresh):
        assert err(*gq, x) < 0.7 * err(*rtn, x), (err(*gq, x), err(*rtn, x))


@pytest.mark.parametrize("k", [1, 7, 128, 129, 300, 577])
def test_upper_cholesky_of_inverse(k):
    """U upper triangular with H^-1 = U^T U, the factor the textbook gets from inv() then cholesky(); a matrix
    that is not positive definite raises LinAlgError (GPTQ turns it into an ExportError)."""
    from fg_edge.exporters.gptq import upper_cholesky_of_inverse

    rng = np.random.default_rng(k)
    x = rng.normal(size=(2 * k + 8, k))
    h = x.T @ x + 0.01 * np.eye(k)
    u = upper_cholesky_of_inverse(h)
    assert np.array_equal(u, np.triu(u))
    np.testing.assert_allclose(u, np.linalg.cholesky(np.linalg.inv(h)).T, rtol=1e-8, atol=1e-10 * np.abs(u).max())
    with pytest.raises(np.linalg.LinAlgError):
        upper_cholesky_of_inverse(h - 2 * np.linalg.eigvalsh(h).max() * np.eye(k))


def _block_grid(block, bits, symmetric, importance=None):
    """The grid rule of one block (N, <=bs), in float64: min/max including 0 (symmetric: the signed value of
    largest magnitude on the most negative code), shrunk by the CLIP_FACTORS factor of least importance-weighted
    squared error per column."""
    from fg_edge.exporters.gptq import CLIP_FACTORS

    maxq, best = 2**bits - 1, None
    for factor in (CLIP_FACTORS if importance is not None else (1.0,)):
        if symmetric:
            peak = block[np.arange(len(block)), np.abs(block).argmax(axis=1)] * factor
            scale, zero = peak / -(2 ** (bits - 1)), np.full(len(block), 2.0 ** (bits - 1))
        else:
            lo, hi = np.minimum(block.min(axis=1), 0) * factor, np.maximum(block.max(axis=1), 0) * factor
            scale = (hi - lo) / maxq
            zero = np.clip(np.round(-lo / np.where(scale == 0, 1, scale)), 0, maxq)
        scale = np.where(scale == 0, 1.0, scale)
        if importance is None:
            return scale, zero
        q = np.clip(np.round(block / scale[:, None]) + zero[:, None], 0, maxq)
        err = ((((q - zero[:, None]) * scale[:, None]) - block) ** 2 * importance).sum(axis=1)
        if best is None:
            best = [err, scale, zero]
        else:
            better = err < best[0]
            best = [np.where(better, v, b) for v, b in zip((err, scale, zero), best)]
    return best[1], best[2]


@pytest.mark.parametrize("symmetric,clip", [(False, True), (True, True), (False, False), (True, False)])
def test_gptq_grids_follow_the_block_rule(symmetric, clip, monkeypatch):
    """_grids (every block at once, in chunks, float32, the last block padded) chooses what the one-block rule
    chooses: scales to float32 rounding, the same zero points, on nearly every block."""
    import fg_edge.exporters.gptq as gptq

    monkeypatch.setattr(gptq, "GRID_CHUNK_ELEMENTS", 40 * 32 * 3)      # chunks of 3 blocks: 4 chunks, one short
    rng = np.random.default_rng(3)
    n, k, bs = 40, 330, 32                                              # 11 blocks, the last one of 10 inputs
    w = (rng.normal(size=(n, k)) * rng.uniform(0.2, 2.0, size=(n, 1))).astype(np.float32)
    w[:, 5] = 0.0
    w[0, :] = 0.0                                                       # an all-zero row: scale 1
    imp = rng.uniform(0.1, 5.0, size=k) if clip else None
    scales, zeros = gptq._grids(w, 4, symmetric, bs, imp)
    assert scales.shape == zeros.shape == (n, 11) and scales.dtype == np.float32
    ref = [_block_grid(w[:, g * bs:(g + 1) * bs].astype(np.float64), 4, symmetric,
                       None if imp is None else imp[g * bs:(g + 1) * bs]) for g in range(11)]
    ref_s, ref_z = np.stack([r[0] for r in ref], 1), np.stack([r[1] for r in ref], 1)
    same = np.isclose(scales, ref_s, rtol=1e-6) & (zeros == ref_z)
    assert same.mean() > 0.98 and same[:, -1].all() and np.all(scales[0] == 1.0), same.mean()


def _textbook_gptq(w, h, bits, bs, symmetric, act_order):
    """GPTQ as the paper writes it (float64, one input at a time, no lazy batches), on fg-edge's grid rule."""
    from fg_edge.exporters.gptq import PERCDAMP, _grids

    k = w.shape[0]
    w, h = w.T.astype(np.float64), h.astype(np.float64).copy()
    h[np.diag_indices(k)] += PERCDAMP * np.mean(np.diag(h))
    blocks = -(-k // bs)
    scales, zeros = np.zeros((w.shape[0], blocks)), np.zeros((w.shape[0], blocks))
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    if act_order:
        scales, zeros = _grids(w, bits, symmetric, bs, np.diag(h))
    w, h = w[:, order], h[np.ix_(order, order)]
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    codes = np.zeros(w.shape, dtype=np.int64)
    for j in range(k):
        g = order[j] // bs
        if not act_order and j % bs == 0:
            grid = _grids(w[:, j:j + bs], bits, symmetric, bs)
            scales[:, g], zeros[:, g] = grid[0][:, 0], grid[1][:, 0]
        q = np.clip(np.round(w[:, j] / scales[:, g]) + zeros[:, g], 0, 2**bits - 1)
        codes[:, order[j]] = q
        e = (w[:, j] - (q - zeros[:, g]) * scales[:, g]) / u[j, j]
        w[:, j:] -= np.outer(e, u[j, j:])
    return codes, scales, zeros


@pytest.mark.parametrize("symmetric,act_order", [(False, True), (True, True), (False, False)])
def test_gptq_sweep_matches_the_textbook_algorithm(symmetric, act_order):
    """The lazy-batched, input-major float32 sweep computes what one-input-at-a-time float64 GPTQ computes: the
    same grids and all but a few codes (float32 rounding may flip a value that sits on a rounding boundary),
    and the same output error on the calibration rows."""
    from fg_edge.exporters.gptq import gptq_quantize_weight

    rng = np.random.default_rng(1)
    k, n, bs = 200, 48, 32                       # two lazy batches, a partial last block
    x = rng.normal(size=(1024, k)) @ (rng.normal(size=(k, k)) * np.linspace(2.0, 0.1, k)[:, None])
    w = rng.normal(size=(k, n)).astype(np.float32)
    h = x.T @ x
    codes, scales, zeros = gptq_quantize_weight(w, h, 4, bs, symmetric, act_order=act_order)
    ref_codes, ref_scales, ref_zeros = _textbook_gptq(w, h, 4, bs, symmetric, act_order)
    assert (codes == ref_codes).mean() > 0.99
    if act_order:                                # set from the weights before the sweep: identical
        assert np.array_equal(scales, ref_scales) and np.array_equal(zeros, ref_zeros)
    blk = np.arange(k) // bs

    def out_err(c, s, z):
        deq = ((c.astype(np.float64) - z[:, blk]) * s[:, blk]).T
        return np.linalg.norm(x @ deq - x @ w) / np.linalg.norm(x @ w)

    assert abs(out_err(codes, scales, zeros) - out_err(ref_codes, ref_scales, ref_zeros)) < 0.02 * out_err(
        ref_codes, ref_scales, ref_zeros)


class _WordTokenizer:
    """A tokenizer stand-in for calibration packing: one id in [3, 43) per word."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [3 + (sum(map(ord, word)) % 40) for word in text.split()]}


def _kv_shapes(path):
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return [(int(h), int(d)) for h, d in json.loads(meta["fg_edge.kv_shapes"])]


def test_gptq_on_a_non_uniform_decoder(tmp_path):
    """--quant-method gptq: every projection becomes MatMulNBits with integer zero points (no correction
    MatMuls), the head 8-bit RTN, outputs within the int4 bound; no feeds is a ConfigError naming the option."""
    from fg_edge.exporters.gptq import packed_decoder_feeds, save_feeds

    gated, info = _exported(tmp_path, "llama")
    texts = [" ".join(f"w{(i * 7 + j) % 31}" for j in range(12)) for i in range(40)]
    kv = _kv_shapes(tmp_path / "model.onnx")
    feeds = packed_decoder_feeds(texts, _WordTokenizer(), info.input_names, kv, chunk=32, max_tokens=400)
    assert len(feeds) == 13 and all(f["input_ids"].shape[1] <= 32 for f in feeds)
    expected = _const_matmuls(tmp_path / "model.onnx")
    settings = quantize_weight_only(tmp_path / "model.onnx", tmp_path / "q.onnx", method="gptq",
                                    calibration=save_feeds(feeds, tmp_path / "cal.npz"))
    assert settings["method"] == "gptq" and settings["symmetric"] is False and "GPTQ" in settings["quantizer"]
    assert settings["gptq"]["calibration_tokens"] == 400 and settings["gptq"]["nodes"] == expected - 1
    nodes = onnx.load(str(tmp_path / "q.onnx")).graph.node
    ops = quantized_op_counts(tmp_path / "q.onnx")
    assert ops["MatMulNBits"] == expected and "ZeroPointCorrection" not in ops
    assert all(len(n.input) == 4 for n in nodes if n.op_type == "MatMulNBits" and n.name != LM_HEAD_NODE + "_Q8")
    res = check_onnx_parity(gated, tmp_path / "q.onnx", kind=info.kind, steps=4, raise_on_fail=False)
    assert res["max_abs_diff"] < BOUND[4], res
    with pytest.raises(ConfigError, match="--quant-method gptq needs calibration"):
        quantize_weight_only(tmp_path / "model.onnx", tmp_path / "x.onnx", method="gptq")


def test_gptq_calibration_runs_stack_sequences_without_changing_the_hessians(tmp_path):
    """Packed calibration sequences run side by side in the batch (stack_feeds): the Hessians equal those of one
    run per sequence; runs hold at most the token budget; shapes that differ after the batch axis, or an input
    without a dynamic batch axis, are never stacked."""
    from fg_edge.exporters.gptq import (collect_hessians, detach_initializers, gptq_targets, packed_decoder_feeds,
                                        stack_feeds)

    _, info = _exported(tmp_path, "llama")
    texts = [" ".join(f"w{(i * 5 + j) % 29}" for j in range(12)) for i in range(40)]
    kv = _kv_shapes(tmp_path / "model.onnx")
    feeds = packed_decoder_feeds(texts, _WordTokenizer(), info.input_names, kv, chunk=32, max_tokens=400)   # 12 x 32 + 16
    runs = stack_feeds(feeds, set(feeds[0]), max_tokens=128)
    assert [r["input_ids"].shape for r in runs] == [(4, 32)] * 3 + [(1, 16)]
    alone = stack_feeds(feeds, set(feeds[0]) - {"attention_mask"}, 128)             # an input of fixed batch
    assert len(alone) == len(feeds) and all(a is f for a, f in zip(alone, feeds))
    proto, weights = detach_initializers(onnx.load(str(tmp_path / "model.onnx")))
    acts = list(dict.fromkeys(n.input[0] for n in gptq_targets(proto, weights=weights)))
    one = collect_hessians(proto, feeds, acts, weights, run_tokens=1)
    stacked = collect_hessians(proto, feeds, acts, weights, run_tokens=128)
    assert set(one) == set(stacked) == set(acts)
    for name in acts:
        assert one[name][1] == stacked[name][1] == 400
        np.testing.assert_allclose(stacked[name][0], one[name][0], rtol=1e-4,
                                   atol=1e-5 * float(np.abs(one[name][0]).max()))


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_gptq_baseline_borrows_the_compiled_graphs_hessian_factors(tmp_path, model_type):
    """The dense baseline's Hessian factors taken from the compiled graph's (borrow_factors) are the factors of
    its own calibration Hessians on the inputs the compiled graph kept; the removed inputs it leaves out are
    never active in the baseline or meet zero weight rows (so GPTQ may drop them); a MatMul whose weight is no
    sub-matrix of the compiled one's is not borrowed."""
    from fg_edge.exporters.baseline import dense_baseline
    from fg_edge.exporters.gptq import (FactorWriter, borrow_factors, collect_hessians, detach_initializers,
                                        factor_hessian, gptq_targets, packed_decoder_feeds)
    from fg_edge.exporters.weight_only import gemm_to_matmul

    gated, info = _exported(tmp_path, model_type)
    export_onnx(dense_baseline(gated), tmp_path / "baseline.onnx")
    texts = [" ".join(f"w{(i * 5 + j) % 29}" for j in range(12)) for i in range(20)]

    def hessians(graph):
        proto = onnx.load(str(tmp_path / graph))
        gemm_to_matmul(proto)                               # as quantize_weight_only does first (gpt2's Gemm)
        proto, weights = detach_initializers(proto)
        feeds = packed_decoder_feeds(texts, _WordTokenizer(), info.input_names, _kv_shapes(tmp_path / graph),
                                     chunk=32, max_tokens=200)
        targets = gptq_targets(proto, weights=weights)
        return proto, weights, targets, collect_hessians(proto, feeds, [n.input[0] for n in targets], weights)

    *_, compiled = hessians("model.onnx")
    writer = FactorWriter(tmp_path / "f.npz")
    for name, (h, _) in compiled.items():
        writer.add(name, factor_hessian(h))
    saved = writer.finish(7, 200)
    proto, weights, targets, own = hessians("baseline.onnx")
    narrowed = 0
    with borrow_factors(proto, weights, targets, tmp_path / "model.onnx", saved) as borrowed:
        assert len(borrowed) == len(own) and all(a in borrowed for a in own)   # every activation shown
        assert borrowed.calibration == {"calibration_feeds": 7, "calibration_tokens": 200}
        for activation, (ref, _) in own.items():
            f, _ = borrowed.take(activation, [])
            assert f.k_dim == ref.shape[0]
            live = np.zeros(f.k_dim, dtype=bool)
            live[f.active] = True
            kept = np.where(np.outer(live, live), ref, 0.0)
            want = factor_hessian(kept)                     # the baseline's own H on the kept inputs
            assert np.array_equal(want.active, f.active)
            np.testing.assert_allclose(f.importance, want.importance, rtol=1e-3)

            def inverse(x):                                 # H^-1 on `active`, undoing the visiting order
                u = x.hinv.astype(np.float64)
                inv = np.empty_like(u)
                inv[np.ix_(x.order, x.order)] = u.T @ u
                return inv

            np.testing.assert_allclose(inverse(f), inverse(want), rtol=2e-2,
                                       atol=2e-3 * float(np.abs(inverse(want)).max()))
            dead = ~live & (np.diag(ref) != 0)              # removed inputs still active in the baseline ...
            for node in targets:
                if node.input[0] == activation:
                    assert not weights[node.input[1]][dead].any()   # ... meet zero weight rows
            narrowed += int((~live).sum())
    assert narrowed > 0                                     # the test model's removals were seen as such
    other = next(iter(own))
    victim = next(n for n in targets if n.input[0] == other)
    weights[victim.input[1]] = weights[victim.input[1]] + np.float32(1e-3)
    with borrow_factors(proto, weights, targets, tmp_path / "model.onnx", saved) as borrowed:
        assert other not in borrowed


def test_gptq_on_an_encoder(tmp_path):
    """The option for encoders: a tiny BERT's projections quantized by GPTQ on token feeds stay within the int4
    bound of the gated model."""
    from fg_edge.exporters.gptq import save_feeds
    from fg_edge.exporters.quantize import token_feed

    gated, info = _exported(tmp_path, "bert")
    rng = np.random.default_rng(0)
    feeds = [token_feed(rng.integers(5, 90, size=(1, 24)), info.input_names) for _ in range(12)]
    settings = quantize_weight_only(tmp_path / "model.onnx", tmp_path / "q.onnx", method="gptq",
                                    calibration=save_feeds(feeds, tmp_path / "cal.npz"))
    assert settings["gptq"]["calibration_tokens"] == 12 * 24
    assert quantized_op_counts(tmp_path / "q.onnx")["MatMulNBits"] == _const_matmuls(tmp_path / "model.onnx")
    res = check_onnx_parity(gated, tmp_path / "q.onnx", kind=info.kind, raise_on_fail=False)
    assert res["max_abs_diff"] < BOUND[4], res


def _nbits_graph(k, n, bs, zp_tensor):
    """One MatMulNBits node (4 bits, accuracy level 1 = fp32 compute) with random packed weights; returns the
    model, the unpacked levels q (N, K) and the scales (N, blocks)."""
    rng = np.random.default_rng(1)
    blocks = -(-k // bs)
    q = rng.integers(0, 16, size=(n, blocks * bs)).astype(np.uint8)     # a partial last block is padded
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, blocks, bs // 2)
    q = q[:, :k]
    scales = rng.uniform(0.01, 0.1, size=(n, blocks)).astype(np.float32)
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales.reshape(-1), "S"), zp_tensor]
    node = helper.make_node("MatMulNBits", ["x", "B", "S", zp_tensor.name], ["y"], name="mm", domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=bs, accuracy_level=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return model, q, scales


@pytest.mark.parametrize("k", [128, 120])       # 120: a pruned FFN width, the last block of 32 partial
def test_integer_zero_points_rewrite_is_exact(k):
    """Float zero points (HQQ's; some outside the 4-bit range) -> packed integer ones + the correction MatMul:
    the output equals both the float-zero-point node and x @ ((q - z) * s) to float32 rounding."""
    import onnxruntime as ort

    from fg_edge.exporters.zero_points import integer_zero_points

    n, bs = 24, 32
    blocks = -(-k // bs)
    z = np.random.default_rng(2).uniform(-2.0, 17.0, size=(n, blocks)).astype(np.float32)
    model, q, scales = _nbits_graph(k, n, bs, numpy_helper.from_array(z.reshape(-1), "Z"))
    x = np.random.default_rng(3).normal(size=(2, 3, k)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    before = run(model)
    assert integer_zero_points(model) == {"nodes": 1, "correction_params": n * blocks}
    zp = next(t for t in model.graph.initializer if t.name.endswith("zero_points_int"))
    assert zp.data_type == TensorProto.UINT8 and {nd.op_type for nd in model.graph.node} == {"MatMulNBits", "MatMul",
                                                                                            "Add"}
    after = run(model)
    w = ((q.astype(np.float32) - np.repeat(z, bs, axis=1)[:, :k]) * np.repeat(scales, bs, axis=1)[:, :k])  # (N, K)
    ref = x @ w.T
    scale = np.abs(ref).max()
    assert np.abs(after - ref).max() < 1e-5 * scale and np.abs(after - before).max() < 1e-5 * scale


@pytest.mark.parametrize("bits,symmetric", [(4, False), (4, True), (8, False)])
def test_embedding_gather_block_quantized_dequantizes_within_half_a_step(bits, symmetric):
    """GatherBlockQuantized rows equal the table up to half a quantization step of their block."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    vocab, hidden, block = 40, 64, 32
    table = rng.normal(size=(vocab, hidden)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "input_ids"], ["out"], name="emb")], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, hidden])],
        [numpy_helper.from_array(table, "E")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    info = quantize_embedding(proto, WeightOnlyConfig(bits=bits, symmetric=symmetric, block_size=block,
                                                      method="rtn"))
    assert info["embedding"].startswith("quantized") and proto.graph.node[0].op_type == "GatherBlockQuantized"
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    ids = np.array([0, 7, 39, 7], dtype=np.int64)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids})[0]
    blocks = table[ids].reshape(len(ids), hidden // block, block)
    levels = 2 ** bits - 1
    if symmetric:
        step = np.abs(blocks).max(-1, keepdims=True) * 2 / levels
    else:
        step = (np.maximum(blocks.max(-1, keepdims=True), 0) - np.minimum(blocks.min(-1, keepdims=True), 0)) / levels
    err = np.abs(got.reshape(blocks.shape) - blocks)
    assert (err <= step / 2 + 1e-5).all(), float((err - step / 2).max())


def test_embedding_left_fp32_when_hidden_does_not_fit_blocks():
    table = np.zeros((8, 24), np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["E", "input_ids"], ["out"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 24])],
                              [numpy_helper.from_array(table, "E")])
    info = quantize_embedding(helper.make_model(graph), WeightOnlyConfig(block_size=16))
    assert info["embedding"].startswith("fp32") and "not a multiple of --block-size 16" in info["embedding"]


@pytest.mark.parametrize("settings,match", [
    (dict(block_size=48), "--block-size 48"), (dict(block_size=8), "power of 2 >= 16"),
    (dict(accuracy_level=5), "--accuracy-level 5"), (dict(method="awq"), "--quant-method 'awq'"),
    (dict(method="hqq", symmetric=True), "drop --symmetric"),
    (dict(bits=3), "use 4"), (dict(lm_head_bits=2), "--lm-head-bits 2"),
    (dict(mixed_bits="all"), "--mixed-bits 'all'"),
])
def test_bad_weight_only_settings_name_the_option(settings, match):
    with pytest.raises(ConfigError, match=match):
        WeightOnlyConfig(**settings).validate()


@pytest.mark.parametrize("options,match", [
    (dict(quantize="int4", block_size=100), "--block-size 100"),
    (dict(quantize="int8", quantize_embedding=True), "--quantize-embedding needs a weight-only mode"),
    (dict(quantize="int4", quality_tokens=0), "--quality-tokens"),
    (dict(quantize="int2"), "--quantize 'int2'"),
])
def test_bad_compile_options(options, match):
    with pytest.raises(ConfigError, match=match):
        CompileOptions(**options).validate()


def test_lm_head_default_follows_the_mode():
    assert CompileOptions(quantize="int4").lm_head_quantized and CompileOptions(quantize="int8-wo").lm_head_quantized
    assert not CompileOptions(quantize="int8").lm_head_quantized
    assert not CompileOptions(quantize="int4", quantize_lm_head=False).weight_only_config().include_lm_head


def test_calibration_feeds_round_trip(tmp_path):
    """save_feeds / load_feeds (the GPTQ worker's calibration file) give back every feed's arrays, dtypes and
    shapes, including a decoder's empty past inputs (listed, not stored) and a 0-d input."""
    from fg_edge.exporters.gptq import load_feeds, save_feeds
    from fg_edge.exporters.quantize import token_feed

    feeds = [token_feed(np.arange(5 + i)[None], ["input_ids", "attention_mask", "position_ids"], [(3, 8), (1, 8)])
             for i in range(4)]
    feeds[2]["scalar"] = np.array(1.5, dtype=np.float32)
    back = load_feeds(save_feeds(feeds, tmp_path / "cal.npz"))
    assert [sorted(f) for f in back] == [sorted(f) for f in feeds]
    for mine, theirs in zip(feeds, back):
        for name, value in mine.items():
            assert theirs[name].dtype == value.dtype and theirs[name].shape == value.shape, name
            assert np.array_equal(theirs[name], value), name
    with np.load(tmp_path / "cal.npz") as z:
        assert not any(z[k].size == 0 for k in z.files if k)      # empty arrays are listed, not stored


def test_index_map_finds_rows_bitwise_unique_and_in_order():
    """_index_map (which weights the baseline may borrow for): each row of the small matrix must occur exactly
    once in the big one, bitwise (-0.0 is not 0.0), at increasing positions."""
    from fg_edge.exporters.gptq import _index_map

    rng = np.random.default_rng(0)
    big = rng.normal(size=(40, 6)).astype(np.float32)
    keep = np.array([1, 4, 5, 30])
    assert np.array_equal(_index_map(big, big[keep]), keep)
    assert _index_map(big, big[[5, 4]]) is None                     # out of order
    assert _index_map(big, big[[4]] + np.float32(1e-3)) is None     # not there
    twin = big.copy()
    twin[7] = twin[4]
    assert _index_map(twin, twin[[4]]) is None                      # ambiguous
    zero = np.zeros((3, 6), dtype=np.float32)
    zero[1, 0] = 1.0
    assert _index_map(zero, -zero[[0]]) is None                     # -0.0 rows are other bytes
    assert _index_map(big, big[:, :5]) is None and len(_index_map(big, big[:0])) == 0


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_gptq_baseline_takes_the_compiled_graphs_codes_for_kept_columns(tmp_path, model_type):
    """gptq_quantize_graph on the dense baseline, borrowing from the compiled graph's run (save_to / borrow): the
    output columns the compiler kept get the compiled graph's codes and scales as they are."""
    from fg_edge.exporters.baseline import dense_baseline
    from fg_edge.exporters.gptq import _index_map, detach_initializers, gptq_quantize_graph, packed_decoder_feeds
    from fg_edge.exporters.weight_only import gemm_to_matmul

    gated, info = _exported(tmp_path, model_type)
    export_onnx(dense_baseline(gated), tmp_path / "baseline.onnx")
    texts = [" ".join(f"w{(i * 5 + j) % 29}" for j in range(12)) for i in range(20)]
    floats, nbits = {}, {}
    for graph, share in (("model.onnx", {"save_to": str(tmp_path / "f.npz")}),
                         ("baseline.onnx", {"borrow": (str(tmp_path / "model.onnx"), str(tmp_path / "f.npz"))})):
        proto = onnx.load(str(tmp_path / graph))
        gemm_to_matmul(proto)
        proto, weights = detach_initializers(proto)
        floats[graph] = {n.name: weights[n.input[1]] for n in proto.graph.node if n.op_type == "MatMul"
                         and n.input[1] in weights}
        feeds = packed_decoder_feeds(texts, _WordTokenizer(), info.input_names, _kv_shapes(tmp_path / graph),
                                     chunk=32, max_tokens=200)
        result = gptq_quantize_graph(proto, weights, feeds, bits=4, block_size=16, symmetric=False,
                                     accuracy_level=4, exclude=["fg_edge/lm_head"], **share)
        nbits[graph] = {n.name: (weights[n.input[1]], weights[n.input[2]], weights[n.input[3]])
                        for n in proto.graph.node if n.op_type == "MatMulNBits"}
    assert result["hessians"]["borrowed"] == result["hessians"]["activations"] and result["hessians"]["columns_reused"]
    checked = 0
    for name, w_base in floats["baseline.onnx"].items():
        w_model = floats["model.onnx"].get(name)
        if w_model is None or w_model.shape[0] != w_base.shape[0] or w_model.shape == w_base.shape:
            continue
        cols = _index_map(w_base.T, w_model.T)                 # the columns the compiler kept
        (b_m, s_m, z_m), (b_b, s_b, z_b) = nbits["model.onnx"][name + "_Q4"], nbits["baseline.onnx"][name + "_Q4"]
        n_b = w_base.shape[1]
        assert np.array_equal(b_b[cols], b_m)
        assert np.array_equal(s_b.reshape(n_b, -1)[cols], s_m.reshape(len(cols), -1))
        checked += 1
    assert checked                                           # q / k / v or gate / up lost columns in the test model


def test_gptq_columns_are_independent_given_the_factor():
    """What lets the baseline take the compiled graph's codes for the columns both have: a sweep over a subset of
    the columns gives them the same grids and, all but float-rounding ties, the same codes as the sweep over all."""
    from fg_edge.exporters.gptq import factor_hessian, gptq_sweep

    rng = np.random.default_rng(3)
    k, n = 200, 96
    x = rng.normal(size=(1024, k)) @ (rng.normal(size=(k, k)) * np.linspace(2.0, 0.1, k)[:, None])
    w = rng.normal(size=(k, n)).astype(np.float32)
    factor = factor_hessian(x.T @ x)
    cols = np.sort(rng.choice(n, 40, replace=False))
    full, part = gptq_sweep(w, factor, 4, 32, False), gptq_sweep(w[:, cols], factor, 4, 32, False)
    assert np.array_equal(full[1][cols], part[1]) and np.array_equal(full[2][cols], part[2])
    assert (full[0][cols] == part[0]).mean() > 0.995


# -- mixed precision (fg_edge.exporters.mixed_bits) ---------------------------------------------------------
def test_mixed_bits_layers_follow_the_llama_cpp_rule():
    from fg_edge.exporters.mixed_bits import promoted_layers

    assert promoted_layers(30, "edges") == [0, 1, 2, 3, 27, 28, 29]
    assert promoted_layers(32, "edges") == [0, 1, 2, 3, 28, 29, 30, 31]
    # ORT GenAI's mixed_layers / llama.cpp's use_more_bits, written out for 32 layers
    assert promoted_layers(32, "llama.cpp") == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert promoted_layers(2, "edges") == [0] and promoted_layers(30, "none") == [] == promoted_layers(0, "edges")


def test_mixed_bits_picks_value_and_ffn_output_matmuls_by_module_path():
    """Named by `/<layers>.<i>/<module>/` with a constant weight; the layer count from the names."""
    from fg_edge.exporters.mixed_bits import layer_modules, promoted_nodes

    layout = layer_modules(ARCHITECTURES["llama"].to_dict())
    assert layout == {"layers": "layers", "modules": ["self_attn.v_proj", "mlp.down_proj"]}
    assert layer_modules(ARCHITECTURES["gpt2"].to_dict())["modules"] == ["attn.c_attn", "mlp.c_proj"]
    assert layer_modules(None) is None
    nodes, inits = [], []
    for i in range(16):
        for module in ("self_attn/q_proj", "self_attn/v_proj", "mlp/down_proj", "mlp/up_proj"):
            w = f"w{i}{module}"
            inits.append(numpy_helper.from_array(np.zeros((2, 2), np.float32), w))
            nodes.append(helper.make_node("MatMul", ["x", w], [f"y{i}{module}"],
                                          name=f"/model/model/layers.{i}/{module}/MatMul"))
    nodes.append(helper.make_node("MatMul", ["x", "x"], ["z"], name="/model/model/layers.0/mlp/down_proj/MatMul_1"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 2])], initializer=inits)
    got = promoted_nodes(helper.make_model(graph), "edges", layout)
    assert got["n_layers"] == 16 and got["layers"] == [0, 1, 14, 15]
    assert got["names"] == [f"/model/model/layers.{i}/{m}/MatMul" for i in (0, 1, 14, 15)
                            for m in ("self_attn/v_proj", "mlp/down_proj")]
    assert promoted_nodes(helper.make_model(graph), "none", layout)["names"] == []
    assert promoted_nodes(helper.make_model(graph), "edges", None)["names"] == []


@pytest.mark.parametrize("model_type,method", [("llama", "hqq"), ("llama", "gptq"), ("gpt2", "rtn")])
def test_mixed_bits_keeps_promoted_matmuls_in_8_bits(tmp_path, model_type, method):
    """The promoted MatMuls are 8-bit RTN symmetric (the LM head's pass), every other projection in the int4
    method; `none` or no layout keeps the whole body in 4 bits."""
    from fg_edge.exporters.gptq import packed_decoder_feeds, save_feeds
    from fg_edge.exporters.mixed_bits import layer_modules

    gated, info = _exported(tmp_path, model_type)
    layout = layer_modules(ARCHITECTURES[model_type].to_dict())
    extra = {}
    if method == "gptq":
        texts = [" ".join(f"w{(i * 7 + j) % 31}" for j in range(12)) for i in range(40)]
        feeds = packed_decoder_feeds(texts, _WordTokenizer(), info.input_names, _kv_shapes(tmp_path / "model.onnx"),
                                     chunk=32, max_tokens=400)
        extra["calibration"] = save_feeds(feeds, tmp_path / "cal.npz")

    def bits(path):
        return {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute}["bits"]
                for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"}

    settings = quantize_weight_only(tmp_path / "model.onnx", tmp_path / "q.onnx", method=method, layout=layout,
                                    **extra)
    mixed = settings["mixed_bits"]
    assert mixed["policy"] == "edges" and mixed["layers"] == [0] and mixed["of_layers"] == 2    # 1 >= 7 * 2 / 8
    assert len(mixed["nodes"]) == 2 and "skipped" not in mixed                  # v (or qkv) and FFN out
    got = bits(tmp_path / "q.onnx")
    promoted = {n + "_Q8" for n in mixed["nodes"]}
    assert promoted <= set(got) and all(got[n] == 8 for n in promoted)
    assert {b for n, b in got.items() if n not in promoted and n != LM_HEAD_NODE + "_Q8"} == {4}
    if method == "gptq":
        assert settings["gptq"]["nodes"] == len(got) - 1 - len(promoted)     # GPTQ leaves them to the 8-bit pass
    res = check_onnx_parity(gated, tmp_path / "q.onnx", kind=info.kind, steps=4, raise_on_fail=False)
    assert res["max_abs_diff"] < BOUND[4], res
    for kwargs in (dict(mixed_bits="none", layout=layout), dict()):
        settings = quantize_weight_only(tmp_path / "model.onnx", tmp_path / "n.onnx", method=method, **kwargs,
                                        **extra)
        assert settings["mixed_bits"]["nodes"] == [] and ("skipped" in settings["mixed_bits"]) is \
            ("layout" not in kwargs)
        assert {b for n, b in bits(tmp_path / "n.onnx").items() if n != LM_HEAD_NODE + "_Q8"} == {4}


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_mixed_bits_finds_the_value_and_ffn_output_matmuls_of_every_table_architecture(tmp_path, model_type):
    """The exported node names carry the spec's module paths in every family of the table (fused qkv for
    Phi-3 / ModernBERT / GPT-2, whose Conv1D Gemm is rewritten to MatMul first)."""
    from fg_edge.exporters.baseline import dense_baseline
    from fg_edge.exporters.mixed_bits import layer_modules, promoted_nodes
    from fg_edge.exporters.weight_only import gemm_to_matmul

    spec = ARCHITECTURES[model_type]
    gated, _ = gated_tiny_model(model_type, {}, {})
    export_onnx(dense_baseline(gated), tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    gemm_to_matmul(proto)
    got = promoted_nodes(proto, "edges", layer_modules(spec.to_dict()))
    assert got["n_layers"] == 2 and got["layers"] == [0] and len(got["names"]) == 2, got
    value, ffn_out = ((spec.v or spec.qkv), spec.ffn_out)
    assert value.replace(".", "/") in got["names"][0] and ffn_out.replace(".", "/") in got["names"][1]
