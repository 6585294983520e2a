"""Weight-only quantization of exported graphs with ONNX Runtime's MatMulNBits quantizer.

* ``int4`` / ``int8-wo``: every MatMul with a constant weight becomes a `com.microsoft::MatMulNBits` node whose
  weight is stored in 4 / 8 bits, block-wise along the input dimension (`block_size` inputs share a scale, and a
  zero point unless `symmetric`, the default for rtn); activations stay float. `accuracy_level` picks the CPU compute type of the
  kernel (0: the op's default, 1: fp32, 2: fp16, 3: bf16, 4: int8 — activations quantized per block at run time,
  the fast path on x86 / ARM CPUs).
* methods: ``rtn`` (round to nearest on each block's min/max; ORT's default quantizer, C++ kernels), ``hqq``
  (half-quadratic optimisation of scale / zero point per block, no calibration data; ORT's HQQ quantizer, which
  needs torch and is asymmetric only) and ``gptq`` (rounding error compensated along the inverse Hessian of
  calibration activations, fg_edge.exporters.gptq; needs calibration feeds; integer zero points). HQQ's float
  zero points are then split into integer ones plus an exact correction MatMul (fg_edge.exporters.zero_points),
  so its files run on ORT's fast integer kernels.
  Defaults: hqq for 4 bits, rtn (symmetric) for 8 — on SmolLM2-135M, 4-bit RTN lost 40 % of the greedy tokens
  where HQQ kept 93-97 % (README).
* the LM head is 8-bit RTN by default, also on a 4-bit body (`lm_head_bits`; measured on SmolLM2-135M: with
  RTN perplexity 313 with a 4-bit head, 286 with an 8-bit one; with HQQ 283 vs 271, fp32 272).
* Gemm nodes with a constant weight (GPT-2's Conv1D) are rewritten to MatMul (+ Add) first, so they are quantized
  too.
* the LM head (the MatMul producing `logits`, node `fg_edge/lm_head`) is quantized by default; with tied
  embeddings the export feeds it Transpose(embedding), which is materialised first so the quantizer sees a
  constant weight.
* `include_embedding`: the token-embedding Gather becomes `com.microsoft::GatherBlockQuantized` (uint8 storage,
  4 or 8 bits, blocks along the hidden dimension, RTN whatever the method: ORT's HQQ cannot quantize a Gather).
  It needs hidden size % block_size == 0.

Graphs keep their opset (uint8-packed weights need no int4 tensor type). Each function returns the settings it
used (recorded in compile_report.json).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from fg_edge.errors import ConfigError, ExportError
from fg_edge.exporters.graph_rewrites import LM_HEAD_NODE
from fg_edge.exporters.mixed_bits import DEFAULT_POLICY, POLICIES, PROMOTED_BITS

log = logging.getLogger(__name__)

#: --quantize mode -> bits
WEIGHT_ONLY_BITS = {"int4": 4, "int8-wo": 8}
METHODS = ("rtn", "hqq", "gptq")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
DEFAULT_BLOCK_SIZE = 32
DEFAULT_ACCURACY_LEVEL = 4
_NBITS_LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"


@dataclass(frozen=True)
class WeightOnlyConfig:
    """How MatMul (and optionally embedding) weights are quantized; see the module docstring."""

    bits: int = 4
    block_size: int = DEFAULT_BLOCK_SIZE
    #: None: symmetric for rtn (measured better on SmolLM2-135M, see README), asymmetric for hqq (its only form)
    #: and gptq
    symmetric: Optional[bool] = None
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL
    #: rtn, hqq or gptq; None: hqq for 4 bits (far more accurate than rtn on SmolLM2-135M), rtn for 8 (README)
    method: Optional[str] = None
    include_lm_head: bool = True
    #: bits of the LM head when it is quantized: 8 (default; RTN symmetric, on a 4-bit body too) or 4
    lm_head_bits: int = 8
    include_embedding: bool = False
    #: hqq: float zero points -> integer ones + an exact correction (fast kernels); False keeps the floats
    integer_zero_points: bool = True
    #: 4 bits: which MatMuls keep 8-bit weights (fg_edge.exporters.mixed_bits: edges, llama.cpp, none); it
    #: needs the layer layout (quantize_weight_only's `layout`), without which nothing is promoted
    mixed_bits: str = DEFAULT_POLICY

    def validate(self) -> "WeightOnlyConfig":
        if self.bits not in (4, 8):
            raise ConfigError(f"weight-only bits {self.bits}: use 4 (--quantize int4) or 8 (--quantize int8-wo)")
        if self.method is None:     # --symmetric exists for rtn only, so asking for it picks rtn
            method = "hqq" if self.bits == 4 and not self.symmetric else "rtn"
            return replace(self, method=method).validate()
        bs = self.block_size
        if not isinstance(bs, int) or bs < 16 or bs & (bs - 1):
            raise ConfigError(f"--block-size {bs}: MatMulNBits needs a power of 2 >= 16 (e.g. 32, 64, 128)")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise ConfigError(f"--accuracy-level {self.accuracy_level}: use 0 (op default), 1 (fp32), 2 (fp16), "
                              f"3 (bf16) or 4 (int8 compute, fastest on CPU)")
        if self.lm_head_bits not in (4, 8):
            raise ConfigError(f"--lm-head-bits {self.lm_head_bits}: use 4 or 8")
        if self.mixed_bits not in POLICIES:
            raise ConfigError(f"--mixed-bits {self.mixed_bits!r}: use one of {', '.join(POLICIES)}")
        if self.method not in METHODS:
            raise ConfigError(f"--quant-method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.method == "hqq" and self.symmetric:
            raise ConfigError("--quant-method hqq is asymmetric (it optimises a zero point per block): drop "
                              "--symmetric, or use --quant-method rtn")
        if self.symmetric is None:
            return replace(self, symmetric=self.method == "rtn")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _nbits_module() -> Iterator[object]:
    """Import ORT's matmul_nbits_quantizer without letting its import-time `logging.basicConfig(level=INFO)`
    install a root handler in this process, and keep its per-node INFO lines out of the log."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)   # basicConfig does nothing when the root logger has a handler
    try:
        try:
            from onnxruntime.quantization import matmul_nbits_quantizer as nbits
        except ImportError as exc:
            raise ExportError(f"onnxruntime's MatMulNBits quantizer cannot be imported ({exc}); it needs the "
                              f"onnx-ir package: pip install onnx-ir (part of the train extra)") from None
    finally:
        root.removeHandler(guard)
    from fg_edge.exporters.quiet import quieter

    with quieter(_NBITS_LOGGER, logging.WARNING):
        yield nbits


_QUANTIZER_LABEL = {
    "rtn": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer (DefaultWeightOnlyQuantConfig: "
           "round to nearest)",
    "hqq": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer (HQQWeightOnlyQuantConfig)",
    "gptq": "fg_edge.exporters.gptq (GPTQ on calibration activations)",
}


def _algo_config(nbits, config: WeightOnlyConfig):
    from onnxruntime.quantization import QuantFormat

    if config.method == "hqq":
        return nbits.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=config.bits,
                                              quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",))
    return nbits.DefaultWeightOnlyQuantConfig(block_size=config.block_size, is_symmetric=config.symmetric,
                                              accuracy_level=config.accuracy_level or None, bits=config.bits,
                                              quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",))


def materialize_tied_lm_head(proto) -> bool:
    """When the LM head reads Transpose(token embedding) (fg-edge's tied-embedding export), give it the transposed
    weight as an initializer of its own, so a weight quantizer sees a constant; True when it did."""
    from onnx import numpy_helper

    graph = proto.graph
    head = next((n for n in graph.node if n.name == LM_HEAD_NODE), None)
    producer = {o: n for n in graph.node for o in n.output}
    transpose = producer.get(head.input[1]) if head is not None else None
    inits = {t.name: t for t in graph.initializer}
    if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in inits:
        return False
    weight = numpy_helper.to_array(inits[transpose.input[0]]).T.copy()
    tensor = numpy_helper.from_array(weight, LM_HEAD_NODE + "/weight")
    graph.initializer.append(tensor)
    head.input[1] = tensor.name
    if not any(transpose.output[0] in n.input for n in graph.node):
        graph.node.remove(transpose)
    return True


def gemm_to_matmul(proto) -> int:
    """Rewrite every Gemm with a constant 2-D weight (alpha = beta = 1, A not transposed; GPT-2's Conv1D exports
    as one) into MatMul (+ Add of the bias), which the MatMulNBits quantizer handles; returns how many."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    done = 0
    for node in list(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            t = numpy_helper.from_array(numpy_helper.to_array(inits[weight]).T.copy(), weight + "/T")
            graph.initializer.append(t)
            weight = t.name
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        mm_out = node.output[0] + "/matmul" if bias else node.output[0]
        new = [helper.make_node("MatMul", [node.input[0], weight], [mm_out], name=node.name + "/MatMul")]
        if bias:
            new.append(helper.make_node("Add", [mm_out, bias], [node.output[0]], name=node.name + "/Add"))
        idx = list(graph.node).index(node)
        graph.node.remove(node)
        for k, n in enumerate(new):
            graph.node.insert(idx + k, n)
        done += 1
    return done


def _embedding_gather(proto):
    """(node, initializer) of the Gather that reads token embeddings from `input_ids`, or (None, None)."""
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if (node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == "input_ids"
                and node.input[0] in inits and len(inits[node.input[0]].dims) == 2):
            return node, inits[node.input[0]]
    return None, None


def quantize_embedding(proto, config: WeightOnlyConfig) -> dict:
    """Replace the token-embedding Gather by GatherBlockQuantized (uint8 storage, `config.bits`, RTN blocks along
    the hidden dimension, the packing of MatMulNBits); returns what it did."""
    from onnx import helper, numpy_helper
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    config = config.validate()
    node, init = _embedding_gather(proto)
    if node is None:
        return {"embedding": "fp32 (no Gather of input_ids from a 2-D constant found)"}
    vocab, hidden = (int(d) for d in init.dims)
    bs, bits = config.block_size, config.bits
    if hidden % bs:
        return {"embedding": f"fp32 (hidden size {hidden} is not a multiple of --block-size {bs})"}
    table = numpy_helper.to_array(init).astype(np.float32)
    k_blocks, kpack = hidden // bs, 8 // bits
    packed = np.zeros((vocab, k_blocks, bs // kpack), dtype=np.uint8)
    zero_points = np.zeros((vocab, (k_blocks + kpack - 1) // kpack), dtype=np.uint8)
    scales = np.zeros((vocab, k_blocks), dtype=np.float32)
    quant = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    # the MatMulNBits kernels quantize a (K, N) weight per column: the transposed table, one column per token
    quant(packed, np.ascontiguousarray(table.T), scales, zero_points, bs, vocab, hidden, config.symmetric)
    prefix = init.name + f"_Q{bits}"
    tensors = [numpy_helper.from_array(packed.reshape(vocab, hidden // kpack), prefix),
               numpy_helper.from_array(scales, prefix + "_scales")]
    if not config.symmetric:
        tensors.append(numpy_helper.from_array(zero_points, prefix + "_zero_points"))
    inputs = [tensors[0].name, node.input[1], tensors[1].name] + ([tensors[2].name] if len(tensors) > 2 else [])
    q_node = helper.make_node("GatherBlockQuantized", inputs, list(node.output), name=node.name + f"_Q{bits}",
                              domain="com.microsoft", bits=bits, block_size=bs, gather_axis=0, quantize_axis=1)
    graph = proto.graph
    graph.node.insert(list(graph.node).index(node), q_node)
    graph.node.remove(node)
    graph.initializer.extend(tensors)
    if not any(init.name in n.input for n in graph.node):
        graph.initializer.remove(init)
    return {"embedding": f"quantized (GatherBlockQuantized, uint8 storage, {bits} bits, RTN)",
            "embedding_shape": [vocab, hidden]}


def _set_accuracy_level(proto, level: int) -> None:
    """ORT's HQQ quantizer writes no accuracy_level: give every MatMulNBits node the configured one."""
    from onnx import helper

    if not level:
        return
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(helper.make_attribute("accuracy_level", level))


def _count_ops(proto) -> dict[str, int]:
    from fg_edge.exporters.zero_points import op_kind

    counts: dict[str, int] = {}
    for n in proto.graph.node:
        kind = op_kind(n)
        if kind in ("MatMul", "MatMulNBits", "GatherBlockQuantized", "ZeroPointCorrection"):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def quantize_weight_only(src: str | Path, dst: str | Path, config: Optional[WeightOnlyConfig] = None,
                         calibration: Optional[str] = None, save_factors: Optional[str] = None,
                         borrow_factors: Optional[Sequence[str]] = None, layout: Optional[dict] = None,
                         **settings) -> dict:
    """Weight-only quantization of `src` into `dst` (MatMulNBits; see the module docstring); `config` or its
    fields as keyword settings; `calibration`: the feeds of method gptq (an .npz of fg_edge.exporters.gptq.
    save_feeds, read only when some Hessian must be collected); gptq only: `save_factors` (.npz path) keeps the
    factors of its Hessians for a later graph, `borrow_factors` ([graph, .npz]) takes that graph's where they
    provably apply (fg_edge.exporters.gptq.borrow_factors); `layout`: the layers and the v / FFN output modules
    (fg_edge.exporters.mixed_bits.layer_modules) that config.mixed_bits picks 8-bit MatMuls from.
    Returns the settings used, as recorded in compile_report.json."""
    import onnx

    from fg_edge.exporters.mixed_bits import describe, promoted_nodes

    if config is not None and settings:
        raise ConfigError(f"pass a WeightOnlyConfig or its settings, not both (got {sorted(settings)})")
    config = (config or WeightOnlyConfig(**settings)).validate()
    src, dst = Path(src).resolve(), Path(dst).resolve()
    external = src.with_name(src.name + ".data").exists()
    proto = onnx.load(str(src))
    gemms = gemm_to_matmul(proto)
    tied = materialize_tied_lm_head(proto) if config.include_lm_head else False
    extra = quantize_embedding(proto, config) if config.include_embedding else {"embedding": "fp32"}
    head_bits = config.lm_head_bits if config.bits == 4 else 8
    policy = config.mixed_bits if config.bits == 4 else "none"     # 8-bit weights need no promotion
    promoted = promoted_nodes(proto, policy, layout)
    if config.method == "gptq" and not calibration:
        raise ConfigError("--quant-method gptq needs calibration text (--calibration FILE, or the training data "
                          "training.json records)")
    gptq = None
    try:
        with _nbits_module() as nbits, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)    # HQQ: torch.from_numpy on a read-only array
            same_head = config.include_lm_head and head_bits == config.bits
            # the promoted MatMuls are left to the 8-bit pass below (with the head, unless the head is 4-bit)
            exclude = ([] if same_head else [LM_HEAD_NODE]) + promoted["names"]
            if config.method == "gptq":
                from fg_edge.exporters.gptq import (attach_initializers, detach_initializers, gptq_quantize_graph,
                                                    load_feeds)

                proto, weights = detach_initializers(proto)     # the old proto is dropped: weights held once
                gptq = gptq_quantize_graph(proto, weights, lambda: load_feeds(calibration), bits=config.bits,
                                           block_size=config.block_size, symmetric=config.symmetric,
                                           accuracy_level=config.accuracy_level, exclude=exclude,
                                           save_to=save_factors,
                                           borrow=tuple(borrow_factors) if borrow_factors else None)
                attach_initializers(proto, weights)
                # ORT's quantizer only wraps the graph here (and quantizes the head below): nothing else is left
                quantizer = nbits.MatMulNBitsQuantizer(proto, algo_config=_algo_config(nbits, config),
                                                       nodes_to_exclude=[LM_HEAD_NODE])
            else:
                quantizer = nbits.MatMulNBitsQuantizer(proto, algo_config=_algo_config(nbits, config),
                                                       nodes_to_exclude=exclude)
                quantizer.process()
            eight_bit_head = config.include_lm_head and not same_head
            if eight_bit_head or promoted["names"]:
                # second pass: every other MatMul with a constant weight is MatMulNBits by now, so only the head
                # (8 bits when not the body's) and the promoted MatMuls are left: 8-bit RTN, symmetric
                eight = replace(config, bits=PROMOTED_BITS, method="rtn", symmetric=True)
                quantizer = nbits.MatMulNBitsQuantizer(quantizer.model.model, algo_config=_algo_config(nbits, eight),
                                                       nodes_to_exclude=[] if eight_bit_head else [LM_HEAD_NODE])
                quantizer.process()
            zero_points = {"nodes": 0}
            if config.method == "hqq" and config.integer_zero_points:    # last: its MatMuls stay float
                from fg_edge.exporters.zero_points import integer_zero_points

                zero_points = integer_zero_points(quantizer.model.model)
            _set_accuracy_level(quantizer.model.model, config.accuracy_level)
            quantizer.model.save_model_to_file(str(dst), use_external_data_format=external)
    except (ExportError, ConfigError):
        raise
    except Exception as exc:
        raise ExportError(f"weight-only {config.bits}-bit quantization of {src.name} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    ops = _count_ops(quantizer.model.model)
    head = "excluded (kept fp32)" if not config.include_lm_head else (
        f"quantized, {head_bits}-bit" + (" RTN symmetric" if head_bits != config.bits else "")
        + (" (tied embedding: transposed copy materialised)" if tied else ""))
    result = {"mode": "int4" if config.bits == 4 else "int8-wo", **config.to_dict(),
              "quantizer": _QUANTIZER_LABEL[config.method],
              "weights": f"{config.bits}-bit blocks of {config.block_size} along the input dimension, "
                         + ("symmetric" if config.symmetric else "asymmetric (zero point per block)"),
              "activations": "float" + (", int8 per block inside the kernel (accuracy_level 4)"
                                        if config.accuracy_level == 4 else ""),
              "lm_head": head, **extra, "gemm_rewritten_to_matmul": gemms, "quantized_ops": ops,
              "mixed_bits": {"policy": policy, "rule": describe(policy),
                                  "bits": PROMOTED_BITS, "quantizer": "RTN symmetric (like an 8-bit LM head)",
                                  "layers": promoted["layers"], "of_layers": promoted["n_layers"],
                                  "nodes": promoted["names"],
                                  **({} if layout or policy == "none" else
                                     {"skipped": "no layer layout given (no architecture spec): nothing promoted"})}}
    if gptq is not None:
        result["gptq"] = gptq
    if config.method == "hqq":
        result["zero_points"] = (f"integer, plus an exact correction MatMul for the float remainder "
                                 f"({zero_points['nodes']} nodes, fg_edge.exporters.zero_points)"
                                 if zero_points["nodes"] else "float (onnxruntime's slow path)")
    log.info("quantized %s -> %s (weight-only %d-bit %s, block %d, %d MatMulNBits%s)", src.name, dst.name,
             config.bits, config.method, config.block_size, ops.get("MatMulNBits", 0),
             f"; {len(promoted['names'])} in {PROMOTED_BITS} bits ({policy})"
             if promoted["names"] else "")
    return result


def quantize_weight_only_isolated(src: str | Path, dst: str | Path, config: WeightOnlyConfig,
                                  calibration: Optional[str] = None, save_factors: Optional[str] = None,
                                  borrow_factors: Optional[Sequence[str]] = None,
                                  layout: Optional[dict] = None) -> dict:
    """`quantize_weight_only` in a fresh Python process (fg_edge.exporters.isolated), so the protobuf copy of the
    weights does not add to the torch process's peak. Returns its settings."""
    from fg_edge.exporters.isolated import run_isolated

    return run_isolated("fg_edge.exporters.weight_only:quantize_weight_only",
                        f"weight-only quantization of {Path(src).name}", src=str(src), dst=str(dst),
                        calibration=calibration, save_factors=save_factors,
                        borrow_factors=list(borrow_factors) if borrow_factors else None, layout=layout,
                        **config.validate().to_dict())
