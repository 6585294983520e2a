"""Exporters: compiled / dense torch models -> ONNX (+ int8, ORT format), with a parity gate against the gated model.

    from fg_edge.exporters import compile_model_dir, CompileOptions
    report = compile_model_dir("runs/minilm", options=CompileOptions(quantize="int8", ort_format=True))

Lower-level pieces: `export_onnx` (graph interfaces documented in `onnx_export`), `check_onnx_parity`,
`dense_baseline`, `quantize_int8_dynamic`, `quantize_qdq_static`, `quantize_weight_only` (int4 / int8-wo),
`convert_to_ort` (`target="cpu"` or `"nnapi"`), `ort_operators`, `partition_summary`.
Imports are lazy so `import fg_edge.exporters` stays cheap.
"""

from __future__ import annotations

from fg_edge.lazy import lazy_exports

_EXPORTS = {
    "export_onnx": "onnx_export", "ExportInfo": "onnx_export", "validate_opset": "onnx_export",
    "kv_layout": "onnx_export", "MIN_OPSET": "onnx_export", "MAX_OPSET": "onnx_export",
    "DEFAULT_OPSET": "onnx_export",
    "check_onnx_parity": "onnx_parity", "make_session": "onnx_parity",
    "dense_baseline": "baseline",
    "quantize_int8_dynamic": "quantize", "quantize_qdq_static": "quantize", "quantized_op_counts": "quantize",
    "QUANTIZE_MODES": "quantize", "QuantizeConfig": "quantize",
    "quantize_weight_only": "weight_only", "WeightOnlyConfig": "weight_only",
    "convert_to_ort": "ort_format", "partition_summary": "ort_format", "ort_operators": "ort_format",
    "compile_model_dir": "pipeline", "CompileOptions": "pipeline", "default_output": "pipeline",
    "format_summary": "pipeline",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
