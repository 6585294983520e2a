"""The one home of every file name, JSON / config key, task and model-variant name the formats share.

Torch-free on purpose: the device runtime reads compiled folders with these names and nothing else.
The layouts themselves are described in docs/DESIGN.md §"File formats".
"""

from __future__ import annotations

#: What a model is trained for, and the transformers auto class that loads it (by name, so no import here).
TASKS = ("classification", "causal-lm")
#: What an exported ONNX graph computes: the tasks plus a bare encoder giving embeddings.
KINDS = ("classification", "embedding", "causal-lm")
AUTO_CLASS_NAMES = {"classification": "AutoModelForSequenceClassification", "causal-lm": "AutoModelForCausalLM"}

# model_dir (output of `fg-edge train`)
GATE_CONFIG_FILE = "fg_edge_config.json"
GATES_FILE = "fg_edge_gates.safetensors"
TRAINING_FILE = "training.json"

# compiled folder (output of `fg-edge compile`); config.json keys
#: the compiled torch weights: deliberately not `model.safetensors`, so that a plain transformers
#: `from_pretrained(compiled_dir)` — which would build uniform layers — finds no weights and fails loudly
#: instead of loading random ones (it used to, with ignore_mismatched_sizes=True); fg_edge.compiler.load_compiled
#: reads it (and the `model.safetensors` of folders written by fg-edge 0.1).
WEIGHTS_FILE = "fg_edge_compiled.safetensors"
LEGACY_WEIGHTS_FILE = "model.safetensors"
#: config.json key with a sentence for people (and tools) that read config.json without fg-edge
NOTE_KEY = "fg_edge_note"
#: config.json key: how training fed the model (max_length, text / text-pair / label columns), so run / eval /
#: bench tokenise the same way; from the model_dir's training.json (`inputs`)
INPUTS_KEY = "fg_edge_inputs"
PLAN_FILE = "compile_plan.json"
REPORT_FILE = "compile_report.json"
LAYERS_KEY = "fg_edge_layers"
#: ONNX Runtime GenAI's folder config (decoders only; fg_edge.exporters.genai_config)
GENAI_CONFIG_FILE = "genai_config.json"
TASK_KEY = "fg_edge_task"

#: ONNX model variant -> (file stem, precision family, dense?); every compiled variant has its dense partner, exported
#: and quantized the same way (`baseline-<variant>`)
VARIANTS: dict[str, tuple[str, str, bool]] = {
    "compiled": ("model", "fp32", False),
    "baseline": ("baseline", "fp32", True),
    "int8": ("model.int8", "int8", False),                   # dynamic int8 (weights + activations), --quantize int8
    "baseline-int8": ("baseline.int8", "int8", True),
    "qdq": ("model.qdq", "qdq", False),                      # static QDQ int8, for NPU EPs, --quantize qdq
    "baseline-qdq": ("baseline.qdq", "qdq", True),
    "int4": ("model.int4", "int4", False),                   # weight-only 4-bit MatMulNBits, --quantize int4
    "baseline-int4": ("baseline.int4", "int4", True),
    "int8-wo": ("model.int8-wo", "int8-wo", False),          # weight-only 8-bit MatMulNBits, --quantize int8-wo
    "baseline-int8-wo": ("baseline.int8-wo", "int8-wo", True),
    # .ort only (`--ort-format --ort-target nnapi`): converted at ORT's basic level, ONNX-domain ops only
    "nnapi": ("model.nnapi", "fp32", False),
    "baseline-nnapi": ("baseline.nnapi", "fp32", True),
    "qdq-nnapi": ("model.qdq.nnapi", "qdq", False),
    "baseline-qdq-nnapi": ("baseline.qdq.nnapi", "qdq", True),
}
#: --quantize modes, each the name of the compiled variant it writes (model.<mode>.onnx, baseline.<mode>.onnx)
QUANTIZE_MODES = ("int8", "qdq", "int4", "int8-wo")
#: the dense partner of each compiled variant (same precision family)
BASELINE_OF = {"compiled": "baseline", **{m: f"baseline-{m}" for m in QUANTIZE_MODES}, "nnapi": "baseline-nnapi",
               "qdq-nnapi": "baseline-qdq-nnapi"}
#: variants that exist only as .ort files (no .onnx twin), and the compile option that writes them
ORT_ONLY_VARIANTS = {"nnapi": "--ort-format --ort-target nnapi", "baseline-nnapi": "--ort-format --ort-target nnapi",
                     "qdq-nnapi": "--quantize qdq --ort-format --ort-target nnapi",
                     "baseline-qdq-nnapi": "--quantize qdq --ort-format --ort-target nnapi"}

#: `--ort-target`: which execution providers the `.ort` files are converted for. cpu: <stem>.ort at ORT's full
#: offline optimisation (fused contrib ops; CPU / XNNPACK EP); nnapi: <stem>.nnapi.ort at the basic level (ONNX
#: ops only, QDQ node units kept for the EP; NNAPI, CoreML)
ORT_TARGETS = ("cpu", "nnapi")
REQUIRED_OPERATORS_FILE = "required_operators.config"


def quantized_file(graph: str, mode: str) -> str:
    """model.onnx -> model.int4.onnx (the file `--quantize MODE` writes next to an fp32 graph)."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {mode!r}; expected one of {', '.join(QUANTIZE_MODES)}")
    return graph[: -len(".onnx")] + f".{mode}.onnx"


def ort_file(graph: str, target: str = "cpu") -> str:
    """model.qdq.onnx -> model.qdq.ort (target cpu) / model.qdq.nnapi.ort (target nnapi)."""
    if target not in ORT_TARGETS:
        raise ValueError(f"unknown ORT target {target!r}; expected one of {', '.join(ORT_TARGETS)}")
    return graph[: -len(".onnx")] + ("" if target == "cpu" else f".{target}") + ".ort"


def required_operators_file(target: str = "cpu") -> str:
    """required_operators.config (target cpu) / required_operators.nnapi.config: the ops of that target's files."""
    return REQUIRED_OPERATORS_FILE if target == "cpu" else f"required_operators.{target}.config"
