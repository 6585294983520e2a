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
TASK_KEY = "fg_edge_task"

#: ONNX model variant -> (file stem, precision family, dense?)
VARIANTS: dict[str, tuple[str, str, bool]] = {
    "compiled": ("model", "fp32", False),
    "baseline": ("baseline", "fp32", True),
    "int8": ("model.int8", "int8", False),
    "baseline-int8": ("baseline.int8", "int8", True),
}
#: the dense partner of each compiled variant (same precision family)
BASELINE_OF = {"compiled": "baseline", "int8": "baseline-int8"}
