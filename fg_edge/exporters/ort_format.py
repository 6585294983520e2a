"""ORT Mobile artefacts: `.ort` files, the reduced-operator config for a minimal ORT build, and ORT's estimate
of how the graph would partition onto the NNAPI (Android) and CoreML (Apple) execution providers.

Two targets (`--ort-target`, names.ORT_TARGETS), each one run of onnxruntime.tools.convert_onnx_models_to_ort
(fixed optimisation style: graphs optimised offline, which is what ORT Mobile runs):

* ``cpu`` — `<stem>.ort` at ORT's full level ("all"): fused contrib ops (SkipLayerNormalization, FusedMatMul,
  DynamicQuantizeMatMul, ...) that only the CPU EP (and XNNPACK's fallback to it) runs.
* ``nnapi`` — `<stem>.nnapi.ort` at the basic level: constant folding and ONNX-only rewrites, QDQ node units left
  for the EP to take. Checked to hold no com.microsoft op (ExportError naming them otherwise).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from fg_edge.errors import ConfigError, ExportError
from fg_edge.formats.names import ORT_TARGETS, REQUIRED_OPERATORS_FILE, ort_file, required_operators_file

log = logging.getLogger(__name__)

__all__ = ["REQUIRED_OPERATORS_FILE", "TARGETS", "convert_to_ort", "ort_operators", "partition_summary"]

#: the environment variable through which onnxruntime 1.32's converter takes its optimisation level (it has no
#: argument for it); set for every conversion, so a user's own setting never changes the files silently
LEVEL_ENV = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"


@dataclass(frozen=True)
class OrtTarget:
    level: str               # ORT optimisation level applied offline
    contrib_free: bool       # every node must be in an ONNX domain (checked after conversion)
    fp32_for: str            # which execution providers the fp32 files are for
    qdq_for: str             # ... the static QDQ ones
    quantized_for: str       # ... the other quantized ones (dynamic int8, MatMulNBits: contrib ops)


TARGETS = {
    "cpu": OrtTarget("all", False, "CPU / XNNPACK EP", "CPU / XNNPACK EP", "CPU EP"),
    # CoreML's op lists (ORT 1.32's usability checker) have no QuantizeLinear / DequantizeLinear
    "nnapi": OrtTarget("basic", True, "NNAPI, CoreML", "NNAPI (QDQ: not CoreML)", "none"),
}


def _target(name: str) -> OrtTarget:
    if name not in TARGETS or name not in ORT_TARGETS:
        raise ConfigError(f"--ort-target {name!r}: use one of {', '.join(ORT_TARGETS)}")
    return TARGETS[name]


def intended_for(graph: str, target: str) -> str:
    """Which execution providers the .ort file of `graph` (an .onnx name: model.onnx, baseline.qdq.onnx, ...)
    converted for `target` is meant for."""
    spec = _target(target)
    mode = graph[: -len(".onnx")].partition(".")[2]      # "" for fp32, else the --quantize mode
    return spec.fp32_for if not mode else spec.qdq_for if mode == "qdq" else spec.quantized_for


@contextlib.contextmanager
def _converter_level(level: str) -> Iterator[None]:
    old = os.environ.get(LEVEL_ENV)
    os.environ[LEVEL_ENV] = level
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(LEVEL_ENV, None)
        else:
            os.environ[LEVEL_ENV] = old


def _run_converter(onnx_paths: Sequence[Path], tmp: Path, level: str, save_optimized: bool) -> Path:
    """Copy the graphs (and their .data files) to tmp/src, convert them into tmp/dst; returns tmp/dst."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from fg_edge.exporters.quiet import quieter

    src_dir, dst_dir = tmp / "src", tmp / "dst"
    src_dir.mkdir()
    for p in onnx_paths:
        shutil.copyfile(p, src_dir / p.name)
        data = p.with_name(p.name + ".data")
        if data.exists():
            shutil.copyfile(data, src_dir / data.name)
    chatter = io.StringIO()
    try:
        # "ort_format_model.utils" sets its own DEBUG level on import, so its parent's level does not reach it
        with contextlib.redirect_stdout(chatter), quieter("ort_format_model", logging.WARNING), \
                quieter("ort_format_model.utils", logging.WARNING), _converter_level(level):
            convert_onnx_models_to_ort(src_dir, output_dir=dst_dir, optimization_styles=[OptimizationStyle.Fixed],
                                       save_optimized_onnx_model=save_optimized)
    except Exception as exc:
        raise ExportError(f"conversion to ORT format ({level} optimisation) failed: {type(exc).__name__}: "
                          f"{exc}") from exc
    log.debug("convert_onnx_models_to_ort: %s", chatter.getvalue())
    return dst_dir


def ort_operators(ort_path: str | Path) -> dict[str, list[str]]:
    """{domain: sorted op types} of the nodes an .ort file holds (subgraphs included), read from the file itself
    with onnxruntime.tools.ort_format_model (what required_operators.config is made from)."""
    from onnxruntime.tools.ort_format_model import OrtFormatModelProcessor

    required: dict = {}
    OrtFormatModelProcessor(str(ort_path), required, None).process()
    return {domain: sorted({op for ops in by_opset.values() for op in ops}) for domain, by_opset in required.items()}


def _check_contrib_free(operators: dict[str, dict[str, list[str]]], level: str) -> None:
    bad = {name: {d: ops for d, ops in doms.items() if d.startswith("com.microsoft")}
           for name, doms in operators.items()}
    bad = {name: doms for name, doms in bad.items() if doms}
    if bad:
        listing = "; ".join(f"{name}: " + ", ".join(f"{d}:{op}" for d, ops in doms.items() for op in ops)
                            for name, doms in bad.items())
        raise ExportError(f"--ort-target nnapi: the .ort files converted at the {level} level hold contrib ops "
                          f"that NNAPI cannot take ({listing}); the source graphs must use ONNX ops only "
                          f"(--quantize qdq or none)")


def _produced(dst_dir: Path, graph: Path, level: str, ext: str = ".ort") -> Path:
    """The file the converter wrote for `graph`: model.ort, model.basic.ort, model.basic.optimized.onnx, ..."""
    return dst_dir / (graph.stem + ("" if level == "all" else f".{level}") + ext)


def _move_outputs(paths: Sequence[Path], dst_dir: Path, out_dir: Path, target: str, level: str) -> list[str]:
    """Move each .ort into out_dir under its shipped name, and the config with the files named as shipped."""
    written = []
    for p in paths:
        produced = _produced(dst_dir, p, level)
        if not produced.exists():
            raise ExportError(f"conversion to ORT format wrote no {produced.name}")
        written.append(ort_file(p.name, target))
        shutil.move(str(produced), out_dir / written[-1])
    configs = sorted(dst_dir.glob("*.config"))
    if not configs:
        raise ExportError("conversion to ORT format wrote no required-operators config")
    text = configs[0].read_text()
    for prefix in (str(dst_dir) + "/", str(dst_dir.resolve()) + "/"):
        text = text.replace(prefix, "")
    for p, name in zip(paths, written):
        text = text.replace(f"# - {_produced(dst_dir, p, level).name}\n", f"# - {name}\n")
    (out_dir / required_operators_file(target)).write_text(text)
    return written


def convert_to_ort(onnx_paths: Sequence[str | Path], out_dir: str | Path, partitions: bool = False,
                   target: str = "cpu") -> dict:
    """Write one .ort per graph into `out_dir` (names.ort_file: `<stem>.ort`, or `<stem>.nnapi.ort` for target
    nnapi) and one required-operators config covering them (names.required_operators_file).

    Returns {"target", "files", "required_operators", "optimization_style", "optimization_level", "tool",
    "for": {file: EPs}, "operators": {file: {domain: ops}}}; target nnapi raises ExportError, before writing
    anything, if a file holds a com.microsoft op. `partitions`: also {"partitions": {file: partition_summary}} of
    the graph each .ort really holds (ORT's offline-optimised ONNX), so the estimate describes the shipped files.
    """
    spec = _target(target)
    paths = [Path(p) for p in onnx_paths]
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="fg-ort-", dir=out_dir) as tmp:
        dst_dir = _run_converter(paths, Path(tmp), spec.level, partitions)
        operators = {ort_file(p.name, target): ort_operators(_produced(dst_dir, p, spec.level))
                     for p in paths if _produced(dst_dir, p, spec.level).exists()}
        if spec.contrib_free:
            _check_contrib_free(operators, spec.level)
        written = _move_outputs(paths, dst_dir, out_dir, target, spec.level)
        shipped = {name: _shipped_partitions(_produced(dst_dir, p, spec.level, ".optimized.onnx"))
                   for p, name in zip(paths, written)} if partitions else {}
    config = required_operators_file(target)
    log.info("wrote %s and %s (ORT %s optimisation)", ", ".join(written), config, spec.level)
    info = {"target": target, "files": written, "required_operators": config, "optimization_style": "Fixed",
            "optimization_level": spec.level, "tool": "onnxruntime.tools.convert_onnx_models_to_ort",
            "for": {name: intended_for(p.name, target) for p, name in zip(paths, written)},
            "operators": operators}
    return {**info, "partitions": shipped} if partitions else info


def _shipped_partitions(optimized: Path) -> dict:
    return (partition_summary(optimized) if optimized.exists()
            else {"error": f"the converter wrote no {optimized.name}"})


def _summarise(info) -> dict:
    return {"nodes": int(info.num_nodes), "supported_nodes": int(info.num_supported_nodes),
            "supported_percent": round(100.0 * info.num_supported_nodes / max(info.num_nodes, 1), 1),
            "partitions": int(info.num_partitions), "unsupported_ops": sorted(info.unsupported_ops),
            "nodes_unsupported_due_to_dynamic_shapes": int(info.nodes_unsupported_due_to_dynamic_input),
            "suitability": info.suitability().name}


def partition_summary(onnx_path: str | Path) -> dict:
    """ORT's NNAPI / CoreML partitioning estimate (onnxruntime.tools.mobile_helpers.usability_checker).

    Per EP: as exported (dynamic shapes) and if the shapes were made fixed
    (onnxruntime.tools.make_dynamic_shape_fixed). Estimates by operator type; see ORT's docs for caveats.
    """
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo

    model = ModelProtoWithShapeInfo(Path(onnx_path)).model_with_shape_info
    checks = {
        "NNAPI": lambda fixed: uc.check_nnapi_partitions(model, fixed),
        "CoreML NeuralNetwork": lambda fixed: uc.check_coreml_partitions(model, fixed,
                                                                          "coreml_supported_neuralnetwork_ops.md"),
        "CoreML MLProgram": lambda fixed: uc.check_coreml_partitions(model, fixed,
                                                                      "coreml_supported_mlprogram_ops.md"),
    }
    summary = {}
    for ep, fn in checks.items():
        try:
            summary[ep] = {"as_exported": _summarise(fn(True)), "with_fixed_shapes": _summarise(fn(False))}
        except Exception as exc:  # noqa: BLE001 - an estimate only; never fail the compile on it
            summary[ep] = {"error": f"{type(exc).__name__}: {exc}"}
    return summary
