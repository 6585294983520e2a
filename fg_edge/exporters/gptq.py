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
  dampening adds 1 % of the mean diagonal of H over the swept inputs; inputs never active in calibration
  (H[k, k] = 0) get weight 0 and, with act-order, are left out of the sweep (nothing couples them to the rest).
* the dense baseline (baseline.onnx) reads, in every MatMul, what the compiled graph's reads plus inputs the
  compiler removed, which are 0 or meet zero weight rows; so the compiled graph's run saves each Hessian's factor
  (HessianFactor: swept inputs, order, upper Cholesky factor of H^-1) and the codes it chose (FactorWriter), and
  the baseline's borrows them (borrow_factors): no calibration forward and no factorisation of its own, the
  removed inputs left out of its sweeps, and where the inputs are the same (q / k / v, gate / up) the columns the
  compiler kept take model.int4.onnx's codes as they are, only the removed ones swept. SmolLM2-135M with 30 %
  of heads and FFN channels closed: the baseline's GPTQ (borrowing + sweeps) 16.8 -> 7.8 s, same machine, back to back.
* the node written is the standard `com.microsoft::MatMulNBits` (uint8-packed codes, float scales, packed uint8
  zero points), so it runs on the same fast kernels as RTN files (no zero-point correction as for HQQ).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from fg_edge.errors import ConfigError, ExportError

try:                                                # the ufunc itself: np.clip's wrapper costs more than the work
    from numpy._core.umath import clip as _clip     # in the sweep's per-input steps
except ImportError:                                 # numpy < 2
    from numpy.core.umath import clip as _clip

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
    """Write calibration feeds to `path`. Empty arrays (a decoder's past inputs: one per layer, key and value,
    in every feed) are listed by dtype and shape rather than stored: 128 SmolLM2 feeds are 384 members, not
    8,064 (1.9 s to read back)."""
    arrays, empty = {}, []
    for i, feed in enumerate(feeds):
        for name, v in feed.items():
            v = np.asarray(v, order="C")          # (ascontiguousarray makes a 0-d array 1-d)
            if v.size:
                arrays[f"{i}|{name}"] = v
            else:
                empty.append(f"{i}|{name}|{v.dtype.str}|" + ",".join(str(d) for d in v.shape))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays, **{"": np.array(empty, dtype=str)})
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
            if key:
                i, _, name = key.partition("|")
                feeds.setdefault(int(i), {})[name] = z[key]
        for entry in z[""] if "" in z.files else ():
            i, name, dtype, shape = str(entry).split("|")
            feeds.setdefault(int(i), {})[name] = np.zeros([int(d) for d in shape.split(",") if d], dtype=dtype)
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


class HessianFactor:
    """What GPTQ's sweep needs from the Hessian H (K, K) of one activation, computed once (factor_hessian) and
    shareable between graphs (FactorWriter / borrow_factors):

    * active (A,): the inputs that GPTQ sweeps, increasing. With act-order, the inputs with H[k, k] > 0: an input
      never active in calibration is decoupled from the others (its row and column of H are 0), so leaving it out
      changes nothing for the rest; its weight is set to 0, which every block's grid represents exactly. In order,
      all K (the textbook rule: such an input gets H[k, k] = 1 and weight 0).
    * order (A,): the visiting order, as indices into `active` (decreasing H[k, k] with act-order);
    * hinv (A, A) float32: upper U with (H_active + damping)^-1 = U^T U, rows and columns in visiting order;
    * importance (A,) float32: the damped H[k, k] of `active`, which the clipped grid search weighs errors by.
    """

    __slots__ = ("k_dim", "active", "order", "hinv", "importance")

    def __init__(self, k_dim: int, active, order, hinv, importance):
        self.k_dim, self.active, self.order, self.hinv, self.importance = k_dim, active, order, hinv, importance

    def onto(self, inputs: np.ndarray, k_dim: int) -> "HessianFactor":
        """This factor for a weight with `k_dim` inputs whose inputs `inputs` (increasing) are this one's, in
        order, and whose other inputs are never active: the same sweep."""
        return HessianFactor(k_dim, inputs[self.active], self.order, self.hinv, self.importance)


class FactorWriter:
    """Writes the HessianFactors of one GPTQ run, one activation at a time, into an .npz (np.load without
    pickle) for `borrow_factors`: a zip of .npy members streamed to disk, so they are never all in memory."""

    def __init__(self, path: str | Path):
        import zipfile

        self.path = str(path)
        self._zip = zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._names: list[str] = []
        self._dims: list[int] = []

    def _write(self, name: str, array: np.ndarray) -> None:
        with self._zip.open(name + ".npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)

    def add(self, activation: str, factor: HessianFactor, nodes: Sequence[tuple[str, int]] = (),
            result: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None) -> None:
        """Keep `factor`; with `nodes` ([(MatMul name, its output columns)], in the order their weights were
        swept side by side) and that sweep's `result` (codes, scales, zero points), also what GPTQ chose, for a
        graph whose weights hold these columns (BorrowedFactors.take)."""
        i = len(self._names)
        arrays = [("a", factor.active), ("o", factor.order), ("u", factor.hinv), ("d", factor.importance)]
        if result is not None:
            arrays += [("n", np.array([n for n, _ in nodes], dtype=str)),
                       ("w", np.array([w for _, w in nodes], dtype=np.int64)),
                       ("c", result[0]), ("s", result[1]), ("z", result[2])]
        for key, value in arrays:
            self._write(f"{key}{i}", value)
        self._names.append(activation)
        self._dims.append(factor.k_dim)

    def finish(self, calibration_feeds: int, calibration_tokens: int) -> str:
        """Complete the file with its index and the calibration it was made from; returns its path."""
        self._write("activations", np.array(self._names, dtype=str))
        self._write("k_dims", np.array(self._dims, dtype=np.int64))
        self._write("calibration", np.array([calibration_feeds, calibration_tokens], dtype=np.int64))
        self.close()
        return self.path

    def close(self) -> None:
        """Close the file (without its index unless `finish` ran: borrow_factors cannot read it then)."""
        self._zip.close()


def _index_map(big: np.ndarray, small: np.ndarray) -> Optional[np.ndarray]:
    """Increasing indices m with big[m] == small (rows, bitwise), or None when some row of `small` is not in
    `big` or matches more than one row there (ambiguous). Rows compared as raw bytes, sorted: a 1536-row
    weight 8 -> 2 ms against a dict of row bytes."""
    big, small = np.ascontiguousarray(big), np.ascontiguousarray(small)
    if big.ndim != 2 or small.ndim != 2 or big.shape[1] != small.shape[1] or big.dtype != small.dtype:
        return None
    if not small.shape[0]:
        return np.zeros(0, dtype=np.int64)
    row = np.dtype((np.void, big.dtype.itemsize * big.shape[1]))
    big_rows, small_rows = big.view(row).ravel(), small.view(row).ravel()
    order = np.argsort(big_rows, kind="stable")
    ranked = big_rows[order]
    lo, hi = np.searchsorted(ranked, small_rows, side="left"), np.searchsorted(ranked, small_rows, side="right")
    if np.any(hi - lo != 1):
        return None
    found = order[lo].astype(np.int64)
    return found if np.all(np.diff(found) > 0) else None


def _sub_matrix_map(weight: np.ndarray, source: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """For a (K, N) MatMul weight and the same MatMul's weight `source` (K', N') in a graph the compiler pruned
    from the same folded model: increasing (rows, cols) with source == weight[rows][:, cols] bitwise, or None
    when that cannot be shown. Only one of the two dimensions may differ (o_proj / down_proj lose inputs, q / k /
    v / gate / up outputs)."""
    rows, cols = np.arange(weight.shape[0]), np.arange(weight.shape[1])
    if weight.shape == source.shape:
        return (rows, cols) if np.array_equal(weight, source) else None
    if weight.shape[1] == source.shape[1]:
        rows = _index_map(weight, source)
    elif weight.shape[0] == source.shape[0]:
        cols = _index_map(weight.T, source.T)
    else:
        return None
    return None if rows is None or cols is None else (rows, cols)


class BorrowedFactors:
    """The HessianFactors borrow_factors showed to apply, read from the saved file when asked for (`take`);
    a context manager that closes the file."""

    def __init__(self, saved: str | Path, plan: dict[str, tuple[int, np.ndarray, int, dict]]):
        self._file = np.load(str(saved), allow_pickle=False)
        self._plan = plan
        feeds, tokens = (int(v) for v in self._file["calibration"])
        self.calibration = {"calibration_feeds": feeds, "calibration_tokens": tokens}
        self.reused_columns = 0

    def __contains__(self, activation: str) -> bool:
        return activation in self._plan

    def __len__(self) -> int:
        return len(self._plan)

    def take(self, activation: str, nodes: Sequence[tuple[str, int]]):
        """(factor, known) for `activation`, read by `nodes` ([(MatMul name, output columns)], their weights side
        by side in this order). `known`: None, or, when these weights have the source's inputs and the source's
        sweep result was saved, (columns, codes, scales, zero points): for each of these weights' columns, the
        source column it is (-1: none), and that source sweep's result. GPTQ gives a column the same codes on the
        same factor whatever the other columns are, so those are the codes its own sweep would give."""
        i, inputs, k_dim, cols = self._plan.pop(activation)
        z = self._file
        factor = HessianFactor(int(z["k_dims"][i]), z[f"a{i}"], z[f"o{i}"], z[f"u{i}"], z[f"d{i}"])
        known = None
        if f"c{i}" in z.files and k_dim == factor.k_dim and np.array_equal(inputs, np.arange(k_dim)):
            widths = z[f"w{i}"]
            offset = dict(zip((str(n) for n in z[f"n{i}"]), np.concatenate([[0], np.cumsum(widths)[:-1]])))
            columns = np.full(sum(w for _, w in nodes), -1, dtype=np.int64)
            start = 0
            for name, width in nodes:
                if name in offset and cols.get(name) is not None:
                    columns[start + cols[name]] = offset[name] + np.arange(len(cols[name]))
                start += width
            if (columns >= 0).any():
                known = (columns, z[f"c{i}"], z[f"s{i}"], z[f"z{i}"])
                self.reused_columns += int((columns >= 0).sum())
        return factor.onto(inputs, k_dim), known

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "BorrowedFactors":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def borrow_factors(proto, weights: Mapping[str, np.ndarray], targets: Sequence, source: str | Path,
                   saved: str | Path) -> BorrowedFactors:
    """HessianFactors for `targets`' activations in detached graph `proto`, from the GPTQ run of graph `source`
    (`saved`: its FactorWriter file), without running this graph: for the dense baseline, whose every MatMul
    reads what the same MatMul of the compiled graph reads plus the inputs the compiler removed (a removed input
    is exactly 0, or its weight row is: parity-checked). A target is borrowed when the same-named MatMul of
    `source` holds a sub-matrix of its weight (`_sub_matrix_map`): its Hessian is the source's with zeros at the
    removed inputs, so its factor is the source's, on the inputs they map to, and GPTQ sweeps the same inputs
    in the same order (the removed ones get weight 0: the same function). Where the inputs are all the same
    (q / k / v, gate / up), the columns the source kept also take the codes its sweep chose (see take). Covers
    the activations all of whose MatMuls were shown so; the rest are left to collect_hessians."""
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
    plan: dict[str, tuple[int, np.ndarray, int, dict]] = {}
    with np.load(str(saved), allow_pickle=False) as z:
        index = {str(n): i for i, n in enumerate(z["activations"])}
        k_dims = z["k_dims"]
    for activation, nodes in by_input.items():
        found, cols = set(), {}
        for node in nodes:
            src_activation, src_weight, trans_b = src_nodes.get(node.name, ("", "", False))
            if src_activation not in index or src_weight not in inits:
                break
            w_src = numpy_helper.to_array(inits[src_weight], base_dir=str(source.parent))
            mapped = _sub_matrix_map(weights[node.input[1]], w_src.T if trans_b else w_src)
            if mapped is None:
                break
            found.add((src_activation, mapped[0].tobytes()))
            cols[node.name] = mapped[1]
        else:
            if len(found) == 1:
                src_activation, rows = next(iter(found))
                rows = np.frombuffer(rows, dtype=np.int64)
                i = index[src_activation]
                if int(k_dims[i]) == len(rows):
                    plan[activation] = (i, rows, weights[nodes[0].input[1]].shape[0], cols)
    return BorrowedFactors(saved, plan)


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
    t = np.empty(blk.shape, dtype=np.float32)
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
        # (clip as maximum then minimum: clip with broadcast bounds took 5x the time of both; same values)
        np.divide(blk, scale[..., None], out=t)
        np.round(t, out=err)
        np.maximum(err, -zero[..., None], out=err)
        np.minimum(err, maxq - zero[..., None], out=err)
        err -= t
        err *= err
        total = np.einsum("ncb,cb->nc", err, imp)
        total *= scale * scale
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


def factor_hessian(hessian: np.ndarray, percdamp: float = PERCDAMP, act_order: bool = True) -> HessianFactor:
    """HessianFactor of `hessian` (K, K): dampening adds `percdamp` of the mean H[k, k] over the swept inputs.
    Raises ExportError when H is not positive definite there."""
    h = np.array(hessian, dtype=np.float64)
    k_dim = h.shape[0]
    diag = np.diag(h)
    if act_order:
        active = np.flatnonzero(diag > 0)
        if active.size < k_dim:
            h = h[np.ix_(active, active)]
    else:
        active = np.arange(k_dim)
        dead = diag == 0
        h[dead, dead] = 1.0
    if active.size:
        h[np.diag_indices(active.size)] += percdamp * float(np.mean(np.diag(h)))
    importance = np.diag(h).astype(np.float32)
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(active.size)
    try:
        hinv = upper_cholesky_of_inverse(h[np.ix_(order, order)]) if active.size else np.zeros((0, 0))
    except np.linalg.LinAlgError as exc:
        raise ExportError(f"GPTQ: the calibration Hessian of a weight with {k_dim} inputs is not positive "
                          f"definite ({exc}); use more calibration text or --quant-method hqq") from None
    # the factorisation in float64, the sweep in float32 (like the reference implementation)
    return HessianFactor(k_dim, active, order, hinv.astype(np.float32), importance)


def gptq_quantize_weight(weight: np.ndarray, hessian: np.ndarray, bits: int, block_size: int, symmetric: bool,
                         percdamp: float = PERCDAMP, act_order: bool = True,
                         clip_search: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ of a (K, N) MatMul weight with input Hessian (K, K): gptq_sweep with factor_hessian's factor."""
    return gptq_sweep(weight, factor_hessian(hessian, percdamp, act_order), bits, block_size, symmetric,
                      act_order=act_order, clip_search=clip_search)


def gptq_sweep(weight: np.ndarray, factor: HessianFactor, bits: int, block_size: int, symmetric: bool,
               act_order: bool = True, clip_search: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ of a (K, N) MatMul weight given its inputs' HessianFactor. Returns codes (N, K) uint8, scales and
    zero points (N, ceil(K / block_size)); dequantized W[k, n] = (codes[n, k] - zero[n, b]) * scale[n, b].

    act_order: quantize the inputs by decreasing H[k, k] (the most active first, while the most rows are left to
    absorb their error), each block's grid set beforehand from its weights ("static groups": the blocks of
    MatMulNBits are contiguous, not in the visiting order). Without it, inputs go in order and each block's grid
    is set from its weights as updated when GPTQ reaches it. `factor` must be made with the same act_order."""
    k_dim, n_dim = weight.shape
    if factor.k_dim != k_dim:
        raise ExportError(f"GPTQ: a Hessian factor of {factor.k_dim} inputs was given for a ({k_dim}, {n_dim}) "
                          f"weight")
    maxq = 2**bits - 1
    # the sweep holds the weight input-major, (K, N): each step reads and updates whole contiguous rows (one
    # input's weights across all outputs), the same arithmetic as column access on (N, K) without strided access
    w_in = np.array(weight, dtype=np.float32)        # GPTQ walks the input dimension
    swept = np.zeros(k_dim, dtype=bool)
    swept[factor.active] = True
    w_in[~swept] = 0.0                               # never active: weight 0, exact on every grid
    blocks = -(-k_dim // block_size)
    if act_order:
        importance = None
        if clip_search:
            importance = np.zeros(k_dim, dtype=np.float32)
            importance[factor.active] = factor.importance
        scales, zeros = _grids(w_in.T, bits, symmetric, block_size, importance)
    else:                                            # set during the sweep
        scales = np.zeros((n_dim, blocks), dtype=np.float32)
        zeros = np.zeros((n_dim, blocks), dtype=np.float32)
    rows = factor.active[factor.order]               # the input visited at each step
    w_vis = w_in[rows]                               # rows in visiting order
    hinv = factor.hinv
    scales_in = np.ascontiguousarray(scales.T, dtype=np.float32)             # (blocks, N)
    zeros_in = np.ascontiguousarray(zeros.T, dtype=np.float32)
    group = rows // block_size                      # the block of each visited input
    codes_in = np.zeros((k_dim, n_dim), dtype=np.uint8)
    if not swept.all():                              # 0 quantizes to its block's zero point
        codes_in[~swept] = zeros_in[np.flatnonzero(~swept) // block_size]
    lazy = max(LAZY_BATCH, block_size)               # a multiple of block_size: in order, a block lies in one batch
    # in order, a block's grid is set from its rows as updated so far: a sub-batch must not straddle a block start
    sub = SUB_BATCH if act_order or block_size % SUB_BATCH == 0 else block_size
    count = rows.size
    for b0 in range(0, count, lazy):
        b1 = min(b0 + lazy, count)
        w1 = w_vis[b0:b1].copy()
        err = np.zeros_like(w1)
        u1 = hinv[b0:b1, b0:b1]
        q = np.empty(n_dim, dtype=np.float32)
        for s0 in range(0, b1 - b0, sub):
            s1 = min(s0 + sub, b1 - b0)
            for j in range(s0, s1):
                g = group[b0 + j]
                if not act_order and (b0 + j) % block_size == 0:
                    grid = _grids(w1[j:j + block_size].T, bits, symmetric, block_size)
                    scales[:, g], zeros[:, g] = grid[0][:, 0], grid[1][:, 0]
                    scales_in[g], zeros_in[g] = scales[:, g], zeros[:, g]
                np.divide(w1[j], scales_in[g], out=q)
                np.round(q, out=q)
                q += zeros_in[g]
                _clip(q, 0, maxq, out=q)
                codes_in[rows[b0 + j]] = q
                e = (w1[j] - (q - zeros_in[g]) * scales_in[g]) / u1[j, j]
                w1[j:s1] -= u1[j, j:s1, None] * e[None, :]
                err[j] = e
            w1[s1:] -= u1[s0:s1, s1:].T @ err[s0:s1]     # the sub-batch's errors, spread in one product
        w_vis[b1:] -= hinv[b0:b1, b1:].T @ err
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


def _sweep_unknown(weight: np.ndarray, factor: HessianFactor, known, bits: int, block_size: int, symmetric: bool,
                   act_order: bool, clip_search: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gptq_sweep of `weight`, taking the columns BorrowedFactors.take's `known` holds from there."""
    if known is None:
        return gptq_sweep(weight, factor, bits, block_size, symmetric, act_order=act_order, clip_search=clip_search)
    columns, src_codes, src_scales, src_zeros = known
    hit = columns >= 0
    codes = np.empty((weight.shape[1], weight.shape[0]), dtype=np.uint8)
    scales = np.empty((weight.shape[1], src_scales.shape[1]), dtype=np.float32)
    zeros = np.empty(scales.shape, dtype=np.uint8)
    codes[hit], scales[hit], zeros[hit] = src_codes[columns[hit]], src_scales[columns[hit]], src_zeros[columns[hit]]
    if not hit.all():
        rest = gptq_sweep(weight[:, ~hit], factor, bits, block_size, symmetric, act_order=act_order,
                          clip_search=clip_search)
        codes[~hit], scales[~hit], zeros[~hit] = rest
    return codes, scales, zeros


def gptq_quantize_graph(proto, weights: dict, feeds, *, bits: int, block_size: int, symmetric: bool,
                        accuracy_level: int, exclude: Sequence[str] = (), act_order: bool = True,
                        clip_search: bool = True, save_to: Optional[str] = None,
                        borrow: Optional[tuple[str, str]] = None) -> dict:
    """Replace every targeted MatMul of detached graph `proto` (gptq_targets) by a GPTQ MatMulNBits node, in
    place; `weights` (its initializers, detach_initializers) loses the targets' float weights and gains the new
    nodes' codes, scales and zero points. `feeds`: the calibration feeds, or a function that returns them (called
    only when some Hessian must be collected). Returns counts for the report.

    save_to: also write the Hessians' factors to this .npz (FactorWriter); borrow: (source graph, its saved
    factors): take what borrow_factors can show from there and collect only the rest."""
    import contextlib
    import time

    from onnx import helper

    t0 = time.perf_counter()
    targets = gptq_targets(proto, exclude, weights)
    by_input: dict[str, list] = {}
    for node in targets:
        by_input.setdefault(node.input[0], []).append(node)
    with contextlib.ExitStack() as stack:
        borrowed = stack.enter_context(borrow_factors(proto, weights, targets, *borrow)) if borrow else None
        n_borrowed = len(borrowed) if borrowed is not None else 0
        rest = [a for a in by_input if borrowed is None or a not in borrowed]
        hessians: dict = {}
        calibration = borrowed.calibration if borrowed is not None else None
        if rest or calibration is None:
            feeds = feeds() if callable(feeds) else feeds
            if not feeds:
                raise ConfigError("--quant-method gptq needs calibration text: pass --calibration FILE (plain text, "
                                  "or a TSV/CSV/JSONL file with a 'text' column), or train from a data file "
                                  "training.json records")
            calibration = {"calibration_feeds": len(feeds),
                           "calibration_tokens": int(sum(np.asarray(f["input_ids"]).size for f in feeds))}
        if rest:
            hessians = collect_hessians(proto, feeds, rest, weights)
        del feeds
        writer = stack.enter_context(contextlib.closing(FactorWriter(save_to))) if save_to else None
        t1 = time.perf_counter()
        graph = proto.graph
        readers: dict[str, int] = {}
        for node in graph.node:
            for name in set(node.input):
                readers[name] = readers.get(name, 0) + 1
        for activation, nodes in by_input.items():
            # the MatMuls that read one activation share its Hessian, and GPTQ treats output columns
            # independently: one sweep over their weights side by side (q / k / v, gate / up) gives each what its
            # own sweep would
            mats = [weights[n.input[1]] for n in nodes]
            layout = [(n.name, w.shape[1]) for n, w in zip(nodes, mats)]
            known = None
            if borrowed is not None and activation in borrowed:
                factor, known = borrowed.take(activation, layout)
            else:
                factor = factor_hessian(hessians.pop(activation)[0], act_order=act_order)
            codes, scales, zeros = _sweep_unknown(np.concatenate(mats, axis=1), factor, known, bits, block_size,
                                                  symmetric, act_order, clip_search)
            if writer is not None:
                writer.add(activation, factor, layout, (codes, scales, zeros))
            del factor, known
            start = 0
            for node, weight in zip(nodes, mats):
                n_dim = weight.shape[1]
                part = slice(start, start + n_dim)
                start += n_dim
                q, tensors = _matmul_nbits(node, weight.shape[0], n_dim, codes[part], scales[part], zeros[part],
                                           bits, block_size, symmetric, accuracy_level)
                graph.node.insert(list(graph.node).index(node), q)
                graph.node.remove(node)
                readers[node.input[1]] -= 1
                if not readers[node.input[1]]:
                    weights.pop(node.input[1])     # a weight nothing else reads: its memory goes now
                weights.update(tensors)
        if writer is not None:
            writer.finish(**calibration)
    t2 = time.perf_counter()
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    log.info("GPTQ: %d MatMul(s) quantized to %d bits on %d calibration feed(s), %d tokens (activations %.1f s, "
             "%d of %d Hessians borrowed; quantization %.1f s)", len(targets), bits, calibration["calibration_feeds"],
             calibration["calibration_tokens"], t1 - t0, n_borrowed, len(by_input), t2 - t1)
    return {"nodes": len(targets), **calibration,
            "percdamp": PERCDAMP, "lazy_batch": LAZY_BATCH, "act_order": act_order, "clip_search": clip_search,
            "hessians": {"activations": len(by_input), "borrowed": n_borrowed,
                         "borrowed_from": Path(borrow[0]).name if borrow else None,
                         "columns_reused": borrowed.reused_columns if borrowed is not None else 0},
            "seconds": {"activations": round(t1 - t0, 1), "quantization": round(t2 - t1, 1)}}
