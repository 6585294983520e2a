"""ORT Mobile artefacts: `.ort` files, the reduced-operator config for a minimal ORT build, and ORT's estimate
of how the graph would partition onto the NNAPI (Android) and CoreML (Apple) execution providers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from fg_edge.errors import ExportError

log = logging.getLogger(__name__)

REQUIRED_OPERATORS_FILE = "required_operators.config"


def convert_to_ort(onnx_paths: Sequence[str | Path], out_dir: str | Path, partitions: bool = False) -> dict:
    """Write `<name>.ort` next to each graph in `out_dir` and one `required_operators.config` covering them all.

    Uses onnxruntime.tools.convert_onnx_models_to_ort (fixed optimisation style: graphs optimised offline, which
    is what ORT Mobile runs). Returns {"files": [...], "required_operators": name, "optimization_style": ...}.

    `partitions`: also {"partitions": {<name>.ort: partition_summary}} of the graph each .ort really holds (ORT's
    offline-optimised ONNX, with the fused contrib ops such as DynamicQuantizeMatMul or FusedMatMul that the
    NNAPI / CoreML EPs cannot take), so the mobile estimate describes the shipped files, not the exported ones.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from fg_edge.exporters.quiet import quieter

    out_dir = Path(out_dir)
    written = []
    with tempfile.TemporaryDirectory(prefix="fg-ort-", dir=out_dir) as tmp:
        src_dir, dst_dir = Path(tmp) / "src", Path(tmp) / "dst"
        src_dir.mkdir()
        for p in onnx_paths:
            p = Path(p)
            shutil.copyfile(p, src_dir / p.name)
            data = p.with_name(p.name + ".data")
            if data.exists():
                shutil.copyfile(data, src_dir / data.name)
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter), quieter("ort_format_model", logging.WARNING):
                convert_onnx_models_to_ort(src_dir, output_dir=dst_dir, optimization_styles=[OptimizationStyle.Fixed],
                                           save_optimized_onnx_model=partitions)
        except Exception as exc:
            raise ExportError(f"conversion to ORT format failed: {type(exc).__name__}: {exc}") from exc
        for p in onnx_paths:
            ort_file = dst_dir / (Path(p).stem + ".ort")
            if not ort_file.exists():
                raise ExportError(f"conversion to ORT format wrote no {ort_file.name}")
            shutil.move(str(ort_file), out_dir / ort_file.name)
            written.append(ort_file.name)
        configs = sorted(dst_dir.glob("*.config"))
        if not configs:
            raise ExportError("conversion to ORT format wrote no required-operators config")
        log.debug("convert_onnx_models_to_ort: %s", chatter.getvalue())
        text = configs[0].read_text().replace(str(dst_dir) + "/", "").replace(str(dst_dir.resolve()) + "/", "")
        (out_dir / REQUIRED_OPERATORS_FILE).write_text(text)
        shipped = {}
        if partitions:
            for name in written:
                optimized = dst_dir / (Path(name).stem + ".optimized.onnx")
                shipped[name] = (partition_summary(optimized) if optimized.exists()
                                 else {"error": f"the converter wrote no {optimized.name}"})
    log.info("wrote %s and %s", ", ".join(written), REQUIRED_OPERATORS_FILE)
    info = {"files": written, "required_operators": REQUIRED_OPERATORS_FILE, "optimization_style": "Fixed",
            "tool": "onnxruntime.tools.convert_onnx_models_to_ort"}
    return {**info, "partitions": shipped} if partitions else info


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
