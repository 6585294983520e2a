"""int8 quantization of exported graphs with onnxruntime.quantization.

* ``int8`` — dynamic quantization for CPU: MatMul weights stored as QInt8 (per tensor, or per output channel with
  `per_channel`), activations quantized at run time (DynamicQuantizeLinear + MatMulInteger). Shape inference /
  ORT's basic optimisation (`quant_pre_process`) runs first so every MatMul with a constant weight is found.
* ``qdq`` — static quantization in QDQ format (QuantizeLinear / DequantizeLinear pairs around MatMuls) for NPU
  execution providers (QNN, NNAPI, CoreML, …): QUInt8 activations calibrated (MinMax) on a handful of real
  sentences, QInt8 weights.

Each function returns the settings it used (recorded in compile_report.json).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fg_edge.errors import ConfigError, DataError, ExportError
from fg_edge.exporters.graph_rewrites import LM_HEAD_NODE
from fg_edge.formats.names import QUANTIZE_MODES as _MODES

log = logging.getLogger(__name__)

#: every --quantize value (int8 / qdq here, int4 / int8-wo in fg_edge.exporters.weight_only)
QUANTIZE_MODES = ("none",) + _MODES
OP_TYPES = ["MatMul"]
CALIBRATION_SENTENCES = 16
CALIBRATION_MAX_LENGTH = 64


@dataclass(frozen=True)
class QuantizeConfig:
    """How a graph is quantized (the mode is the function called: int8 dynamic or static QDQ).

    per_channel: one weight scale per output channel instead of one per tensor.
    include_lm_head: also quantize the vocabulary projection of causal-LM graphs (the node fg-edge's export names
      `fg_edge/lm_head`). Off by default, as is standard practice: with a 49k-entry vocabulary a per-tensor int8
      LM head dominates the logit error, and it is the one projection whose error is not averaged out later.
    pre_process (int8 only; QDQ always pre-processes): run ORT's quant_pre_process (optimisation + shape
      inference) first. None: only when the LM head is included (its weight may be Transpose(tied embedding),
      which the optimiser folds into a constant). The graphs fg-edge exports are constant-folded already, so every
      other MatMul weight is an initializer; skipping it saves a full load / optimise / write of the graph (time
      and ~3x its size in RAM).
    """

    per_channel: bool = False
    include_lm_head: bool = False
    pre_process: Optional[bool] = None

    @classmethod
    def of(cls, config: Optional["QuantizeConfig"], settings: dict) -> "QuantizeConfig":
        """`config`, or one built from keyword settings (the functions below accept either, not both)."""
        if config is not None and settings:
            raise ConfigError(f"pass a QuantizeConfig or quantize settings, not both (got {sorted(settings)})")
        if config is not None:
            return config
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown quantize setting(s) {unknown}: expected {sorted(cls.__dataclass_fields__)}")
        return cls(**settings)

    @property
    def nodes_to_exclude(self) -> list[str]:
        return [] if self.include_lm_head else [LM_HEAD_NODE]

    def to_dict(self) -> dict:
        return asdict(self)


def _pre_process(src: Path, dst: Path) -> str:
    """quant_pre_process (ORT basic optimisation + symbolic shape inference); falls back step by step, last to
    the graph as exported."""
    from onnxruntime.quantization import quant_pre_process

    ext = {}
    if _external(src):  # keep weights outside the protobuf (2 GB cap)
        ext = dict(save_as_external_data=True, all_tensors_to_one_file=True,
                   external_data_location=dst.name + ".data")
    attempts = (("optimisation + symbolic + ONNX shape inference", {**ext}),
                ("ONNX shape inference only", dict(skip_symbolic_shape=True, **ext)))
    for label, kwargs in attempts:
        try:
            quant_pre_process(str(src), str(dst), **kwargs)
            return label
        except Exception as exc:  # noqa: BLE001 - ORT raises assorted errors here; we fall back
            log.warning("quant_pre_process (%s) failed on %s: %s; falling back", label, src.name, exc)
    shutil.copyfile(src, dst)
    if _external(src):  # the graph names its data file relative to itself
        shutil.copyfile(src.with_name(src.name + ".data"), dst.with_name(src.name + ".data"))
    return "none (copied as exported)"


def _external(src: Path) -> bool:
    return src.with_name(src.name + ".data").exists()


def quantize_int8_dynamic(src: str | Path, dst: str | Path, config: Optional[QuantizeConfig] = None,
                          **settings) -> dict:
    """Dynamic int8 (MatMul weights QInt8, activations quantized at run time); `config` (or its fields as keyword
    settings): see QuantizeConfig. Returns the settings used, as recorded in compile_report.json."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from fg_edge.exporters.patches import lean_quantizer_shape_inference, shape_inference_dump_into
    from fg_edge.exporters.quiet import quieter

    config = QuantizeConfig.of(config, settings)
    src, dst = Path(src).resolve(), Path(dst).resolve()
    pre_process = config.include_lm_head if config.pre_process is None else config.pre_process
    exclude = config.nodes_to_exclude
    # ORT may leave scratch files: they go to this folder (absolute paths, the cwd is never changed)
    with tempfile.TemporaryDirectory(prefix="fg-quant-", dir=dst.parent) as tmp, shape_inference_dump_into(tmp):
        if pre_process:
            pre = Path(tmp) / "pre.onnx"
            pre_label = _pre_process(src, pre)
        else:
            pre, pre_label = src, "none (the export is constant-folded: every MatMul weight is an initializer)"
        try:
            # quantize_dynamic logs 'Please consider to run pre-processing' on the root logger; skipped on purpose
            with quieter(None, logging.ERROR), lean_quantizer_shape_inference():
                quantize_dynamic(str(pre), str(dst), op_types_to_quantize=OP_TYPES, per_channel=config.per_channel,
                                 weight_type=QuantType.QInt8, use_external_data_format=_external(src),
                                 nodes_to_exclude=exclude)
        except Exception as exc:
            raise ExportError(f"dynamic int8 quantization of {src.name} failed: {type(exc).__name__}: {exc}") from exc
    settings = {"mode": "int8", "method": "dynamic (onnxruntime.quantization.quantize_dynamic)",
                "op_types": OP_TYPES, "weight_type": "QInt8", "activation_type": "QUInt8 (computed at run time)",
                "per_channel": config.per_channel, "pre_process": pre_label,
                "lm_head": "quantized" if config.include_lm_head else "excluded (kept fp32; include_lm_head=True to "
                                                                     "quantize it)",
                "nodes_excluded": exclude}
    log.info("quantized %s -> %s (dynamic int8, per_channel=%s, lm_head %s)", src.name, dst.name, config.per_channel,
             "quantized" if config.include_lm_head else "fp32")
    return settings


# -- static QDQ ----------------------------------------------------------------------------------------------
def read_calibration_texts(path: str | Path, limit: int = CALIBRATION_SENTENCES) -> list[str]:
    """Up to `limit` texts from a file fg_edge.data.readers can read (TSV/CSV/JSONL with a `text` column, or plain text)."""
    from fg_edge.data.readers import load_texts

    texts = load_texts(path, what="calibration file").texts
    return [t for t in texts if t.strip()][:limit]


def calibration_texts_from_training(metadata: dict, limit: int = CALIBRATION_SENTENCES) -> list[str]:
    """A handful of training sentences from the data file recorded in a model_dir's training.json."""
    path = ((metadata.get("data") or {}).get("train") or {}).get("path")
    if not path:
        return []
    try:
        return read_calibration_texts(path, limit)
    except DataError as exc:
        log.warning("cannot read the training data recorded in training.json (%s); %s", path, exc)
        return []


def token_feed(ids, input_names: Sequence[str], kv_shapes: Sequence[tuple[int, int]] = (),
               token_type_ids=None) -> dict:
    """The feed dict of one unpadded batch-1 sequence `ids` (1, T) for a graph's inputs (decoders: past length
    0)."""
    ids = np.asarray(ids, dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in input_names:
        feed["token_type_ids"] = (np.zeros_like(ids) if token_type_ids is None
                                  else np.asarray(token_type_ids, dtype=np.int64))
    if "position_ids" in input_names:
        feed["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None, :]
    for i, (kv, hd) in enumerate(kv_shapes):
        feed[f"past_key_values.{i}.key"] = np.zeros((1, kv, 0, hd), np.float32)
        feed[f"past_key_values.{i}.value"] = np.zeros((1, kv, 0, hd), np.float32)
    return feed


def calibration_feeds(texts: Sequence[str], tokenizer, input_names: Sequence[str],
                      kv_shapes: Sequence[tuple[int, int]] = (), max_length: int = CALIBRATION_MAX_LENGTH) -> list[dict]:
    """One feed dict (batch 1) per text, for the graph's inputs (decoders: past length 0)."""
    feeds = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        feeds.append(token_feed(enc["input_ids"], input_names, kv_shapes, enc.get("token_type_ids")))
    if not feeds:
        raise ConfigError("static QDQ quantization needs calibration text: pass --calibration FILE (one sentence "
                          "per line, or a TSV/CSV/JSONL file with a 'text' column)")
    return feeds


class _FeedReader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self._iter = iter(feeds)

    def get_next(self) -> Optional[dict]:
        return next(self._iter, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax calibration
        pass


def quantize_qdq_static(src: str | Path, dst: str | Path, feeds: list[dict],
                        config: Optional[QuantizeConfig] = None, **settings) -> dict:
    """Static QDQ with MinMax calibration on `feeds`; `config` (or its fields as keyword settings): see
    QuantizeConfig. Returns the settings used, as recorded in compile_report.json."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static

    from fg_edge.exporters.patches import shape_inference_dump_into

    config = QuantizeConfig.of(config, settings)
    reader_cls = type("FeedReader", (_FeedReader, CalibrationDataReader), {})
    src, dst = Path(src).resolve(), Path(dst).resolve()
    with tempfile.TemporaryDirectory(prefix="fg-quant-", dir=dst.parent) as tmp, shape_inference_dump_into(tmp):
        pre = Path(tmp) / "pre.onnx"
        pre_label = _pre_process(src, pre)
        try:
            quantize_static(str(pre), str(dst), reader_cls(feeds), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=OP_TYPES, per_channel=config.per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, use_external_data_format=_external(src),
                            nodes_to_exclude=config.nodes_to_exclude)
        except Exception as exc:
            raise ExportError(f"static QDQ quantization of {src.name} failed: {type(exc).__name__}: {exc}") from exc
    settings = {"mode": "qdq", "method": "static QDQ (onnxruntime.quantization.quantize_static)",
                "op_types": OP_TYPES, "weight_type": "QInt8", "activation_type": "QUInt8",
                "calibration_method": "MinMax", "calibration_samples": len(feeds), "per_channel": config.per_channel,
                "pre_process": pre_label, "lm_head": "quantized" if config.include_lm_head else "excluded (kept fp32)",
                "nodes_excluded": config.nodes_to_exclude}
    log.info("quantized %s -> %s (static QDQ, %d calibration samples)", src.name, dst.name, len(feeds))
    return settings


def quantized_op_counts(path: str | Path) -> dict[str, int]:
    """How many quantization-related nodes a graph holds (MatMulInteger, DynamicQuantizeLinear, Q/DQ, MatMulNBits,
    GatherBlockQuantized, …)."""
    import onnx

    from fg_edge.exporters.zero_points import op_kind

    proto = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        kind = op_kind(node)
        if kind in ("MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
                    "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMul",
                    "MatMulNBits", "GatherBlockQuantized", "ZeroPointCorrection"):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def quantize_int8_dynamic_isolated(src: str | Path, dst: str | Path, config: Optional[QuantizeConfig] = None,
                                   **settings) -> dict:
    """`quantize_int8_dynamic` in a fresh Python process (fg_edge.exporters.isolated): ORT's quantizer holds the
    graph's weights in protobuf (plus their int8 copies), so a compile peaks lower when that happens away from
    the torch process. Returns its settings."""
    from fg_edge.exporters.isolated import run_isolated

    config = QuantizeConfig.of(config, settings)
    return run_isolated("fg_edge.exporters.quantize:quantize_int8_dynamic", f"dynamic int8 quantization of "
                        f"{Path(src).name}", src=str(src), dst=str(dst), **config.to_dict())
