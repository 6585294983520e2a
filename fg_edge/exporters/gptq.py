"""GPTQ for MatMulNBits: block-quantized weights that compensate their rounding error on calibration activations.

Round to nearest (RTN) and HQQ choose each block's grid from the weights alone. GPTQ (Frantar et al., 2023) also
looks at what the layer is fed: with X the calibration inputs of one MatMul (rows = tokens) and H = X^T X, it
quantizes the weight one input row k at a time and spreads that row's rounding error over the rows not yet
quantized, along H^-1, so that ||X W - X Q|| stays small rather than ||W - Q||. Here:

* H is accumulated for every targeted MatMul from ONNX Runtime runs of the part of the float graph that computes
  the MatMul inputs (its initializers fed from numpy, so the weights are not held in a second proto), so every
  layer sees full-precision activations, as in ORT's own GPTQ (onnxruntime.quantization.neural_compressor).
  ORT's version runs the whole graph once per MatMul input and calibration sample and re-quantizes its result
  by RTN; this one needs one run per GPTQ_RUN_TOKENS calibration tokens (calibration sequences side by side in
  the batch) and writes the integer codes, scales and zero points GPTQ chose. MatMuls that read the same input
  (q / k / v, gate / up) are quantized in one run over their weights side by side: output columns are
  independent given H.
* act-order with static blocks (default): inputs are visited by decreasing H[k, k], and each block of
  `block_size` inputs gets its scale (and integer zero point when asymmetric) before the sweep, from its
  weights: the min/max grid including 0 (ORT's RTN rule) shrunk by the factor of CLIP_FACTORS with the least
  H[k, k]-weighted squared rounding error, per output column. Measured on SmolLM2-135M with off-grid weights
  (input rows scaled by U(0.85, 1.15), as folded gates do), int4 blocks of 32, SST-2 dev perplexity against the
  fp32 graph (benchmarks/gptq_offgrid.py; 4,096 calibration tokens in 256-token chunks unless said): HQQ
  +20.1 %; in-order GPTQ +29.5 %; act-order +8.9 %; act-order and the clipped grid +5.4 % (8,192 tokens:
  +5.3 %), in 64-token chunks +2.9 %, in 32-token chunks (the default, GPTQ_CHUNK_TOKENS) +2.6 % (+2.4 % measured
  again since; benchmarks/results/decoder/smollm2_gptq_chunks.json).
* the lazy-batch width is 128 inputs (or one block when blocks are larger), swept in sub-batches of 16;
  dampening adds 1 % of the mean diagonal of H; inputs never active in calibration (H[k, k] = 0) get weight 0.
* the node written is the standard `com.microsoft::MatMulNBits` (uint8-packed codes, float scales, packed uint8
  zero points), so it runs on the same fast kernels as RTN files (no zero-point correction as for HQQ).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from fg_edge.errors import ConfigError, ExportError

log = logging.getLogger(__name__)

#: calibration texts a GPTQ compile reads (more than static QDQ: H needs many rows) and the most tokens used
GPTQ_CALIBRATION_TEXTS = 4096
GPTQ_CALIBRATION_TOKENS = 4096
#: decoders: tokens per packed calibration sequence. Every sequence a decoder runs starts with a position-0 token
#: whose activations are extreme (the "attention sink" every later token attends to), so the Hessians need many
#: starts, not only long contexts: on off-grid SmolLM2-135M, 4,096 tokens in chunks of 256 / 64 / 32 gave
#: +5.4 / +2.9 / +2.6 % int4 perplexity on SST-2 dev (benchmarks/gptq_offgrid.py); re-measured with runs of
#: stacked sequences, chunks of 64 / 32 / 16 gave +2.9 / +2.4 / +2.3 % on SST-2 dev and +11.7 / +10.6 / +10.2 %
#: on Python documentation prose (--python-docs; longer texts, another domain). Runs stack sequences up to
#: GPTQ_RUN_TOKENS, so shorter chunks cost no more runs; 32 takes most of the gain while each sequence still
#: sees some context (16 would make every 16th calibration token a position-0 one).
GPTQ_CHUNK_TOKENS = 32
#: tokens per calibration run: several packed sequences side by side in the batch, so the MatMuls and the
#: X^T X updates work on 512 rows rather than 64 (SmolLM2-135M, 30 % removed, 4,096 tokens: activations and
#: Hessians 33 s in 64 runs, 9.5 s in 8; the run's outputs, every targeted activation, are ~150 MB)
GPTQ_RUN_TOKENS = 512
PERCDAMP = 0.01
LAZY_BATCH = 128
#: inside a lazy batch, rows are swept in sub-batches of this many: each row's error is spread by rank-1 updates
#: only over its own sub-batch, and a sub-batch's errors over the rest of the lazy batch by one matrix product
#: (the same sums in another order; 1536 x 576 weight 0.33 -> 0.27 s)
SUB_BATCH = 16


# -- calibration feeds, passed to the quantizer's worker process as an .npz (np.load without pickle) ---------------
def save_feeds(feeds: Sequence[dict], path: str | Path) -> str:
    arrays = {f"{i}|{name}": np.ascontiguousarray(v) for i, feed in enumerate(feeds) for name, v in feed.items()}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return str(path)


def packed_decoder_feeds(texts: Sequence[str], tokenizer, input_names: Sequence[str],
                         kv_shapes: Sequence[tuple[int, int]], chunk: int = GPTQ_CHUNK_TOKENS,
                         max_tokens: int = GPTQ_CALIBRATION_TOKENS) -> list[dict]:
    """A causal LM's calibration feeds: the texts joined (blank lines between) and cut into `chunk`-token
    sequences, at most `max_tokens` in all (batch 1, past length 0): the same number of tokens and of sequence
    starts whatever the texts' lengths."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text + "\n\n", add_special_tokens=not ids)["input_ids"]
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    from fg_edge.exporters.quantize import token_feed

    pieces = (ids[start:start + chunk] for start in range(0, len(ids), chunk))
    return [token_feed([piece], input_names, kv_shapes) for piece in pieces if len(piece) >= 2]


def load_feeds(path: str | Path) -> list[dict]:
    feeds: dict[int, dict] = {}
    with np.load(str(path), allow_pickle=False) as z:
        for key in z.files:
            i, _, name = key.partition("|")
            feeds.setdefault(int(i), {})[name] = z[key]
    return [feeds[i] for i in sorted(feeds)]


# -- the targets and their Hessians ----------------------------------------------------------------------------
def gptq_targets(proto, exclude: Sequence[str] = (), weights: Optional[Mapping[str, np.ndarray]] = None) -> list:
    """MatMul nodes of the main graph with a constant 2-D float weight (what MatMulNBits replaces); `weights`:
    the initializers as numpy when `proto` is detached from them (detach_initializers)."""
    from onnx import TensorProto

    if weights is None:
        consts = {t.name: (len(t.dims), t.data_type == TensorProto.FLOAT) for t in proto.graph.initializer}
    else:
        consts = {k: (v.ndim, v.dtype == np.float32) for k, v in weights.items()}
    return [node for node in proto.graph.node
            if node.op_type == "MatMul" and node.name not in exclude and consts.get(node.input[1]) == (2, True)]


def detach_initializers(proto):
    """(a copy of `proto` without its initializers, {name: numpy value} in their order). Protobuf (upb) gives a
    message's memory back only with the whole message, so a caller that drops `proto` afterwards holds the
    weights once, as numpy, instead of twice while GPTQ reads them (about the fp32 weights less at the peak)."""
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    del proto.graph.initializer[:]
    return type(proto).FromString(proto.SerializeToString()), arrays


def attach_initializers(proto, arrays: dict) -> None:
    """Give detached `proto` its initializers back from `arrays` (emptied on the way): the ones a node, a
    subgraph or a graph output reads."""
    from onnx import numpy_helper

    from fg_edge.exporters.shape_folding import subgraph_reads

    graph = proto.graph
    used = {i for n in graph.node for i in n.input} | subgraph_reads(graph) | {o.name for o in graph.output}
    for name in list(arrays):
        value = arrays.pop(name)
        if name in used:
            graph.initializer.append(numpy_helper.from_array(value, name))


def _skeleton(proto, wanted: Sequence[str], weights: Mapping[str, np.ndarray]):
    """The part of `proto`'s graph that computes `wanted`, with outputs `wanted` and every initializer it reads
    (`weights`: all of them, as numpy) turned into a graph input fed from numpy at run time, so the weights are
    not copied into a second proto; also the names of those initializers."""
    from onnx import TensorProto, helper

    from fg_edge.exporters.shape_folding import subgraph_reads

    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    need, stack, nodes = set(), list(wanted), []
    seen: set[int] = set()
    while stack:
        name = stack.pop()
        if name in need:
            continue
        need.add(name)
        node = producer.get(name)
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            nodes.append(node)
            stack += [i for i in node.input if i]
            if any(a.HasField("g") or a.graphs for a in node.attribute):    # If / Loop: outer-scope reads
                stack += list(subgraph_reads(helper.make_graph([node], "n", [], [])))
    order = {id(n): k for k, n in enumerate(graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    inits = [name for name in weights if name in need]
    inputs = [vi for vi in graph.input if vi.name in need and vi.name not in weights]
    inputs += [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(weights[name].dtype),
                                             list(weights[name].shape)) for name in inits]
    outputs = [helper.make_tensor_value_info(a, TensorProto.FLOAT, None) for a in wanted]
    skeleton = helper.make_model(helper.make_graph(nodes, graph.name, inputs, outputs),
                                 opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    return skeleton, inits


def stack_feeds(feeds: Sequence[dict], batched: set, max_tokens: int = GPTQ_RUN_TOKENS) -> list[dict]:
    """`feeds` joined along the batch axis into runs of at most `max_tokens` tokens (input_ids elements): runs of
    consecutive feeds whose inputs all have a dynamic batch axis (`batched`) and equal shapes after it, so every
    sequence sees exactly what it saw alone. A feed with a fixed-batch input, or shaped unlike its neighbours,
    runs as it is."""
    out: list[dict] = []
    group: list[dict] = []
    group_tokens = 0

    def flush():
        if group:
            out.append(group[0] if len(group) == 1 else
                       {k: np.concatenate([g[k] for g in group], axis=0) for k in group[0]})
            group.clear()

    def key(feed):
        return sorted((k, np.shape(v)[1:], np.asarray(v).dtype.str) for k, v in feed.items())

    for feed in feeds:
        stackable = "input_ids" in feed and all(k in batched and np.ndim(v) >= 1 for k, v in feed.items())
        tokens = int(np.size(feed["input_ids"])) if stackable else max_tokens
        if group and (not stackable or key(group[0]) != key(feed) or group_tokens + tokens > max_tokens):
            flush()
            group_tokens = 0
        if not stackable:
            out.append(feed)
            continue
        group.append(feed)
        group_tokens += tokens
    flush()
    return out


def collect_hessians(proto, feeds: Sequence[dict], activations: Sequence[str],
                     weights: Mapping[str, np.ndarray],
                     run_tokens: int = GPTQ_RUN_TOKENS) -> dict[str, tuple[np.ndarray, int]]:
    """{activation: (X^T X summed over every calibration row, rows)} for the float inputs `activations` of
    detached graph `proto` (`weights`: its initializers, detach_initializers), from ORT runs of the subgraph that
    computes them, one per stack of feeds of at most `run_tokens` tokens (stack_feeds)."""
    import onnxruntime as ort

    wanted = list(dict.fromkeys(activations))
    skeleton, names = _skeleton(proto, wanted, weights)
    so = ort.SessionOptions()
    # fusions never swallow a graph output, so the requested activations survive the optimizer
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    session = ort.InferenceSession(skeleton.SerializeToString(), so, providers=["CPUExecutionProvider"])
    batched = {i.name for i in session.get_inputs() if i.shape and not isinstance(i.shape[0], int)}
    feed_names = {i.name for i in session.get_inputs()} - set(names)
    hessians: dict[str, list] = {}
    for feed in stack_feeds([{k: v for k, v in f.items() if k in feed_names} for f in feeds], batched, run_tokens):
        values = session.run(wanted, {**feed, **{k: weights[k] for k in names}})
        for name, x in zip(wanted, values):
            x = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
            acc = hessians.get(name)
            if acc is None:
                hessians[name] = [x.T @ x, x.shape[0]]
            else:
                acc[0] += x.T @ x
                acc[1] += x.shape[0]
        del values
    del session
    return {k: (v[0], v[1]) for k, v in hessians.items()}


def save_hessians(hessians: Mapping[str, tuple[np.ndarray, int]], path: str | Path) -> str:
    """Write collect_hessians' result to an .npz (np.load without pickle), for `borrow_hessians`."""
    names = list(hessians)
    arrays = {f"h{i}": hessians[n][0] for i, n in enumerate(names)}
    with open(path, "wb") as fh:
        np.savez(fh, activations=np.array(names, dtype=str),
                 rows=np.array([hessians[n][1] for n in names], dtype=np.int64), **arrays)
    return str(path)


def _index_map(big: np.ndarray, small: np.ndarray) -> Optional[np.ndarray]:
    """Increasing indices m with big[m] == small (rows, bitwise), or None when some row of `small` is not in
    `big` or matches more than one row there (ambiguous)."""
    where: dict[bytes, list[int]] = {}
    for i, row in enumerate(np.ascontiguousarray(big)):
        where.setdefault(row.tobytes(), []).append(i)
    out = []
    for row in np.ascontiguousarray(small):
        hits = where.get(row.tobytes(), [])
        if len(hits) != 1 or (out and hits[0] <= out[-1]):
            return None
        out.append(hits[0])
    return np.array(out, dtype=np.int64)


def _input_map(weight: np.ndarray, source: np.ndarray) -> Optional[np.ndarray]:
    """For a (K, N) MatMul weight and the same MatMul's weight `source` (K', N') in a graph the compiler pruned
    from the same folded model: the inputs k of `weight` that `source`'s inputs are, in order (source ==
    weight[map][:, cols] bitwise for some increasing cols), or None when that cannot be shown. Only one of the
    two dimensions may differ (o_proj / down_proj lose inputs, q / k / v / gate / up outputs)."""
    if weight.shape == source.shape:
        return np.arange(weight.shape[0]) if np.array_equal(weight, source) else None
    if weight.shape[1] == source.shape[1]:
        return _index_map(weight, source)
    if weight.shape[0] == source.shape[0]:
        cols = _index_map(weight.T, source.T)
        return None if cols is None else np.arange(weight.shape[0])
    return None


def borrow_hessians(proto, weights: Mapping[str, np.ndarray], targets: Sequence, source: str | Path,
                    saved: str | Path) -> dict[str, tuple[np.ndarray, int]]:
    """Hessians of `targets`' activations in detached graph `proto` taken from the GPTQ run of graph `source`
    (`saved`: its save_hessians file), without running this graph: for the dense baseline, whose every MatMul
    reads what the same MatMul of the compiled graph reads plus the inputs the compiler removed (a removed input
    is exactly 0, or its weight row is: parity-checked). A target is borrowed when the same-named MatMul of
    `source` holds a sub-matrix of its weight (`_input_map`); its Hessian is the source's with zeros at the
    removed inputs, which GPTQ then treats as never active (weight 0: the same function). Returns {activation:
    (H, rows)} for the activations all of whose MatMuls were shown so; the rest are left to collect_hessians."""
    import onnx
    from onnx import numpy_helper

    source = Path(source)
    src = onnx.load(str(source), load_external_data=False)
    inits = {t.name: t for t in src.graph.initializer}
    # the source's MatMuls by name as quantize_weight_only sees them: a Gemm becomes "<name>/MatMul" there
    # (weight_only.gemm_to_matmul), reading its weight transposed when transB is set
    src_nodes: dict[str, tuple[str, str, bool]] = {}
    for n in src.graph.node:
        if n.op_type == "MatMul" and n.name:
            src_nodes[n.name] = (n.input[0], n.input[1], False)
        elif n.op_type == "Gemm" and n.name:
            trans_b = any(a.name == "transB" and a.i for a in n.attribute)
            src_nodes[n.name + "/MatMul"] = (n.input[0], n.input[1], trans_b)
    by_input: dict[str, list] = {}
    for node in targets:
        by_input.setdefault(node.input[0], []).append(node)
    out: dict[str, tuple[np.ndarray, int]] = {}
    with np.load(str(saved), allow_pickle=False) as z:
        index = {str(n): i for i, n in enumerate(z["activations"])}
        rows = z["rows"]
        for activation, nodes in by_input.items():
            found = set()
            for node in nodes:
                src_activation, src_weight, trans_b = src_nodes.get(node.name, ("", "", False))
                if src_activation not in index or src_weight not in inits:
                    break
                w_src = numpy_helper.to_array(inits[src_weight], base_dir=str(source.parent))
                mapped = _input_map(weights[node.input[1]], w_src.T if trans_b else w_src)
                if mapped is None:
                    break
                found.add((src_activation, mapped.tobytes()))
            else:
                if len(found) == 1:
                    src_activation, mapped = next(iter(found))
                    mapped = np.frombuffer(mapped, dtype=np.int64)
                    h_src = z[f"h{index[src_activation]}"]
                    k_dim = weights[nodes[0].input[1]].shape[0]
                    if h_src.shape == (len(mapped), len(mapped)):
                        h = np.zeros((k_dim, k_dim), dtype=h_src.dtype)
                        h[np.ix_(mapped, mapped)] = h_src
                        out[activation] = (h, int(rows[index[src_activation]]))
    return out


# -- GPTQ on one weight ------------------------------------------------------------------------------------------
#: shrink factors of a block's range tried by the clipped grid search (1.0: the plain min/max grid)
CLIP_FACTORS = tuple(1.0 - 0.05 * i for i in range(8))


#: elements of the weight whose grids one vectorized pass of _grids searches: its float32 temporaries (256 KiB)
#: stay in cache (a 3072 x 576 weight: 0.12 s; in chunks of 2^21 elements 0.14 s)
GRID_CHUNK_ELEMENTS = 1 << 16


def _grids(w: np.ndarray, bits: int, symmetric: bool, block_size: int,
           importance=None) -> tuple[np.ndarray, np.ndarray]:
    """Scale and integer zero point (float32, (N, blocks)) of every block of `block_size` inputs of `w` (N, K),
    per output column: ORT's RTN rule (min/max including 0; symmetric: the value of largest magnitude maps to the
    most negative code, like MLAS). With `importance` (K,) (the inputs' H[k, k]), the range is also shrunk by
    each of CLIP_FACTORS and the factor with the least importance-weighted squared rounding error is kept, per
    column and block. A partial last block is padded with zeros of importance 0 (they change neither its range,
    which includes 0, nor its error); the search runs over chunks of blocks, in float32 like the sweep."""
    n_dim, k_dim = w.shape
    blocks = -(-k_dim // block_size)
    padded = np.zeros((n_dim, blocks * block_size), dtype=np.float32)
    padded[:, :k_dim] = w
    padded = padded.reshape(n_dim, blocks, block_size)
    imp = None
    if importance is not None:
        imp = np.zeros(blocks * block_size, dtype=np.float32)
        imp[:k_dim] = importance
        imp = imp.reshape(blocks, block_size)
    scales = np.empty((n_dim, blocks), dtype=np.float32)
    zeros = np.empty((n_dim, blocks), dtype=np.float32)
    step = max(1, GRID_CHUNK_ELEMENTS // (n_dim * block_size))
    for b0 in range(0, blocks, step):
        part = slice(b0, b0 + step)
        scales[:, part], zeros[:, part] = _grid_search(padded[:, part], bits, symmetric,
                                                       None if imp is None else imp[part])
    return scales, zeros


def _grid_search(blk: np.ndarray, bits: int, symmetric: bool, imp) -> tuple[np.ndarray, np.ndarray]:
    """_grids on blocks `blk` (N, C, block_size) float32, importance `imp` (C, block_size) or None."""
    maxq = 2**bits - 1
    if symmetric:
        idx = np.abs(blk).argmax(axis=2)[..., None]
        peak = np.take_along_axis(blk, idx, axis=2)[..., 0]
        zero = np.full(peak.shape, 2 ** (bits - 1), dtype=np.float32)
    else:
        lo0, hi0 = np.minimum(blk.min(axis=2), 0.0), np.maximum(blk.max(axis=2), 0.0)
    best = None
    err = np.empty(blk.shape, dtype=np.float32)
    for factor in (CLIP_FACTORS if imp is not None else (1.0,)):
        f = np.float32(factor)
        if symmetric:
            scale = peak * f / np.float32(-(2 ** (bits - 1)))
        else:
            lo = lo0 * f
            scale = (hi0 * f - lo) / np.float32(maxq)
            zero = np.clip(np.round(-lo / np.where(scale == 0, np.float32(1), scale)), 0, maxq)
        scale = np.where(scale == 0, np.float32(1), scale)
        if imp is None:
            return scale, zero
        # the sweep's code q = clip(round(w / s) + z, 0, maxq) dequantizes to (q - z) s; in units of s, with
        # t = w / s: q - z = clip(round(t), -z, maxq - z), and the squared error is s^2 (q - z - t)^2
        t = blk / scale[..., None]
        np.round(t, out=err)
        np.clip(err, -zero[..., None], maxq - zero[..., None], out=err)
        err -= t
        err *= err
        total = np.einsum("ncb,cb->nc", err, imp) * scale**2
        if best is None:
            best = [total, scale, zero]
        else:
            better = total < best[0]
            for k, v in enumerate((total, scale, zero)):
                best[k] = np.where(better, v, best[k])
    return best[1], best[2]


def _upper_triangular_inverse(r: np.ndarray) -> np.ndarray:
    """Inverse of upper-triangular `r`, by halves: [[A, B], [0, D]]^-1 = [[A^-1, -A^-1 B D^-1], [0, D^-1]]
    (about n^3 / 3 multiply-adds in matrix products; np.linalg.inv does a general LU, about 2 n^3)."""
    n = r.shape[0]
    if n <= 128:
        return np.triu(np.linalg.inv(r))
    m = n // 2
    a_inv, d_inv = _upper_triangular_inverse(r[:m, :m]), _upper_triangular_inverse(r[m:, m:])
    out = np.zeros_like(r)
    out[:m, :m], out[m:, m:] = a_inv, d_inv
    out[:m, m:] = -(a_inv @ r[:m, m:]) @ d_inv
    return out


def upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """Upper-triangular U with H^-1 = U^T U (what the GPTQ sweep reads), without forming H^-1: with J the order
    reversal, J H J = L L^T gives H = R R^T for upper R = J L J, so H^-1 = R^-T R^-1 and U = R^-1. One
    Cholesky and one triangular inverse instead of a general inverse and a Cholesky: 1536 inputs 0.43 -> 0.17 s.
    Raises np.linalg.LinAlgError when H is not positive definite."""
    lower = np.linalg.cholesky(h[::-1, ::-1])
    return _upper_triangular_inverse(np.ascontiguousarray(lower[::-1, ::-1]))


def gptq_quantize_weight(weight: np.ndarray, hessian: np.ndarray, bits: int, block_size: int, symmetric: bool,
                         percdamp: float = PERCDAMP, act_order: bool = True,
                         clip_search: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ of a (K, N) MatMul weight with input Hessian (K, K). Returns codes (N, K) uint8, scales and zero
    points (N, ceil(K / block_size)); dequantized W[k, n] = (codes[n, k] - zero[n, b]) * scale[n, b].

    act_order: quantize the inputs by decreasing H[k, k] (the most active first, while the most rows are left to
    absorb their error), each block's grid set beforehand from its weights ("static groups": the blocks of
    MatMulNBits are contiguous, not in the visiting order). Without it, inputs go in order and each block's grid
    is set from its weights as updated when GPTQ reaches it."""
    k_dim, n_dim = weight.shape
    maxq = 2**bits - 1
    # the sweep holds the weight input-major, (K, N): each step reads and updates whole contiguous rows (one
    # input's weights across all outputs), the same arithmetic as column access on (N, K) without strided access
    w_in = np.array(weight, dtype=np.float32)        # GPTQ walks the input dimension
    h = hessian.astype(np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w_in[dead] = 0.0
    h[np.diag_indices(k_dim)] += percdamp * float(np.mean(np.diag(h)))
    blocks = -(-k_dim // block_size)
    order = np.arange(k_dim)
    if act_order:
        scales, zeros = _grids(w_in.T, bits, symmetric, block_size, np.diag(h) if clip_search else None)
        order = np.argsort(-np.diag(h), kind="stable")
        w_in, h = w_in[order], h[np.ix_(order, order)]    # rows in visiting order
    else:                                            # set during the sweep
        scales = np.zeros((n_dim, blocks), dtype=np.float32)
        zeros = np.zeros((n_dim, blocks), dtype=np.float32)
    try:
        hinv = upper_cholesky_of_inverse(h)              # upper U with H^-1 = U^T U
    except np.linalg.LinAlgError as exc:
        raise ExportError(f"GPTQ: the calibration Hessian of a ({k_dim}, {n_dim}) weight is not positive "
                          f"definite ({exc}); use more calibration text or --quant-method hqq") from None
    # the factorisation in float64, the sweep in float32 (like the reference implementation)
    hinv = hinv.astype(np.float32)
    scales_in = np.ascontiguousarray(scales.T, dtype=np.float32)             # (blocks, N)
    zeros_in = np.ascontiguousarray(zeros.T, dtype=np.float32)
    group = order // block_size                     # the block of each visited input
    codes_in = np.zeros((k_dim, n_dim), dtype=np.uint8)
    lazy = max(LAZY_BATCH, block_size)               # a multiple of block_size: in order, a block lies in one batch
    # in order, a block's grid is set from its rows as updated so far: a sub-batch must not straddle a block start
    sub = SUB_BATCH if act_order or block_size % SUB_BATCH == 0 else block_size
    for b0 in range(0, k_dim, lazy):
        b1 = min(b0 + lazy, k_dim)
        w1 = w_in[b0:b1].copy()
        err = np.zeros_like(w1)
        u1 = hinv[b0:b1, b0:b1]
        for s0 in range(0, b1 - b0, sub):
            s1 = min(s0 + sub, b1 - b0)
            for j in range(s0, s1):
                g = group[b0 + j]
                if not act_order and (b0 + j) % block_size == 0:
                    grid = _grids(w1[j:j + block_size].T, bits, symmetric, block_size)
                    scales[:, g], zeros[:, g] = grid[0][:, 0], grid[1][:, 0]
                    scales_in[g], zeros_in[g] = scales[:, g], zeros[:, g]
                q = np.clip(np.round(w1[j] / scales_in[g]) + zeros_in[g], 0, maxq)
                codes_in[order[b0 + j]] = q
                e = (w1[j] - (q - zeros_in[g]) * scales_in[g]) / u1[j, j]
                w1[j:s1] -= u1[j, j:s1, None] * e[None, :]
                err[j] = e
            w1[s1:] -= u1[s0:s1, s1:].T @ err[s0:s1]     # the sub-batch's errors, spread in one product
        w_in[b1:] -= hinv[b0:b1, b1:].T @ err
    codes = np.ascontiguousarray(codes_in.T)
    return codes, scales, zeros.astype(np.uint8)


def _pack_codes(codes: np.ndarray, bits: int, block_size: int, zeros: np.ndarray) -> np.ndarray:
    """(N, K) codes -> MatMulNBits' B (N, blocks, block_size * bits / 8): low bits first (the zero points'
    packing, one block per row); K padded with each block's zero point (dequantizes to 0)."""
    from fg_edge.exporters.zero_points import _pack_zero_points

    n_dim, k_dim = codes.shape
    blocks = zeros.shape[1]
    padded = np.repeat(zeros, block_size, axis=1)[:, :blocks * block_size].astype(np.uint8)
    padded[:, :k_dim] = codes
    packed = _pack_zero_points(padded.reshape(n_dim * blocks, block_size), bits)
    return packed.reshape(n_dim, blocks, block_size * bits // 8)


def _matmul_nbits(node, k_dim: int, n_dim: int, codes, scales, zeros, bits: int, block_size: int, symmetric: bool,
                  accuracy_level: int):
    """The MatMulNBits node replacing MatMul `node`, and its initializers ({name: numpy value})."""
    from onnx import helper

    from fg_edge.exporters.zero_points import _pack_zero_points

    prefix = (node.name or node.output[0]) + f"_Q{bits}"
    tensors = {prefix + "/B": _pack_codes(codes, bits, block_size, zeros),
               prefix + "/scales": scales.astype(np.float32).reshape(-1)}
    if not symmetric:
        tensors[prefix + "/zero_points"] = _pack_zero_points(zeros, bits)
    attrs = {"K": k_dim, "N": n_dim, "bits": bits, "block_size": block_size}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    q = helper.make_node("MatMulNBits", [node.input[0], *tensors], list(node.output),
                         name=prefix, domain="com.microsoft", **attrs)
    return q, tensors


def gptq_quantize_graph(proto, weights: dict, feeds: Sequence[dict], *, bits: int, block_size: int,
                        symmetric: bool, accuracy_level: int, exclude: Sequence[str] = (), act_order: bool = True,
                        clip_search: bool = True, save_to: Optional[str] = None,
                        borrow: Optional[tuple[str, str]] = None) -> dict:
    """Replace every targeted MatMul of detached graph `proto` (gptq_targets) by a GPTQ MatMulNBits node, in
    place; `weights` (its initializers, detach_initializers) loses the targets' float weights and gains the new
    nodes' codes, scales and zero points. Returns counts for the report.

    save_to: also write the Hessians to this .npz (save_hessians); borrow: (source graph, its saved Hessians):
    take what borrow_hessians can show from there and collect only the rest."""
    import time

    from onnx import helper

    if not feeds:
        raise ConfigError("--quant-method gptq needs calibration text: pass --calibration FILE (plain text, or a "
                          "TSV/CSV/JSONL file with a 'text' column), or train from a data file training.json records")
    t0 = time.perf_counter()
    targets = gptq_targets(proto, exclude, weights)
    hessians = borrow_hessians(proto, weights, targets, *borrow) if borrow else {}
    borrowed = len(hessians)
    rest = [n.input[0] for n in targets if n.input[0] not in hessians]
    if rest:
        hessians.update(collect_hessians(proto, feeds, rest, weights))
    if save_to:
        save_hessians(hessians, save_to)
    t1 = time.perf_counter()
    graph = proto.graph
    by_input: dict[str, list] = {}
    for node in targets:
        by_input.setdefault(node.input[0], []).append(node)
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    for activation, nodes in by_input.items():
        # the MatMuls that read one activation share its Hessian, and GPTQ treats output columns independently:
        # one run over their weights side by side (q / k / v, gate / up) gives each what its own run would
        mats = [weights[n.input[1]] for n in nodes]
        h, _ = hessians.pop(activation)
        codes, scales, zeros = gptq_quantize_weight(np.concatenate(mats, axis=1), h, bits, block_size, symmetric,
                                                    act_order=act_order, clip_search=clip_search)
        start = 0
        for node, weight in zip(nodes, mats):
            n_dim = weight.shape[1]
            part = slice(start, start + n_dim)
            start += n_dim
            q, tensors = _matmul_nbits(node, weight.shape[0], n_dim, codes[part], scales[part], zeros[part], bits,
                                       block_size, symmetric, accuracy_level)
            graph.node.insert(list(graph.node).index(node), q)
            graph.node.remove(node)
            readers[node.input[1]] -= 1
            if not readers[node.input[1]]:
                weights.pop(node.input[1])     # a weight nothing else reads: its memory goes now
            weights.update(tensors)
    t2 = time.perf_counter()
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    tokens = int(sum(np.asarray(f["input_ids"]).size for f in feeds))
    activations = len({n.input[0] for n in targets})
    log.info("GPTQ: %d MatMul(s) quantized to %d bits on %d calibration feed(s), %d tokens (activations %.1f s, "
             "%d of %d Hessians borrowed; quantization %.1f s)", len(targets), bits, len(feeds), tokens, t1 - t0,
             borrowed, activations, t2 - t1)
    return {"nodes": len(targets), "calibration_feeds": len(feeds), "calibration_tokens": tokens,
            "percdamp": PERCDAMP, "lazy_batch": LAZY_BATCH, "act_order": act_order, "clip_search": clip_search,
            "hessians": {"activations": activations, "borrowed": borrowed,
                         "borrowed_from": Path(borrow[0]).name if borrow else None},
            "seconds": {"activations": round(t1 - t0, 1), "quantization": round(t2 - t1, 1)}}
