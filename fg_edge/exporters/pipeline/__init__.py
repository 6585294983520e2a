"""model_dir -> compiled_dir: compile (fg_edge.compiler), export to ONNX, parity gate, baseline, int8, ORT format.

    report = compile_model_dir("runs/minilm", "runs/minilm_compiled", options=CompileOptions(quantize="int8"))

compiled_dir (written atomically: nothing appears unless every stage and every parity check passed):

    model.onnx (+ model.onnx.data)   the compiled graph (fp32); per-layer KV shapes for decoders
    baseline.onnx                    the dense model (gates folded, nothing removed), same export settings
    model.int8.onnx, baseline.int8.onnx    with --quantize int8 (dynamic)
    model.qdq.onnx, baseline.qdq.onnx      with --quantize qdq (static QDQ, for NPU EPs)
    model.ort, baseline.ort (+ .int8.ort), required_operators.config    with --ort-format (--ort-target cpu)
    model.nnapi.ort, baseline.nnapi.ort (+ .qdq.nnapi.ort), required_operators.nnapi.config   --ort-target nnapi
    config.json                      HF config + the per-layer shape record `fg_edge_layers` (fg_edge.compiler)
    fg_edge_compiled.safetensors, compile_plan.json   the compiled torch weights and removal plan (fg_edge.compiler.load_compiled)
    tokenizer files                  when the model_dir has a tokenizer
    compile_report.json              compiler report + "export", "onnx_parity", "quantization", "ort_format",
                                     "mobile_partitions", "files" (bytes), "summary"

Modules: `options` (CompileOptions), `stages` (STAGES and the state they share), `run` (compile_model_dir, the
loop), `graphs` (export / baseline / quantize work), `mobile` (.ort files per --ort-target), `loading`,
`progress`, `memory`, `summary`.
"""

from fg_edge.exporters.pipeline.graphs import export_folded_baseline
from fg_edge.exporters.pipeline.options import CompileOptions, default_output
from fg_edge.exporters.pipeline.run import compile_model_dir
from fg_edge.exporters.pipeline.summary import format_summary, quantized_name, summary_rows

__all__ = ["CompileOptions", "compile_model_dir", "default_output", "export_folded_baseline", "format_summary",
           "quantized_name", "summary_rows"]
