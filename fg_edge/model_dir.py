"""model_dir: the output of `fg-edge train` and the input of `fg-edge compile`.

    model_dir/
      config.json, model.safetensors     the HF model (base weights, trained biases, task head) — save_pretrained
      tokenizer files                    when a tokenizer was given
      fg_edge_config.json                the GateConfig (format_version, granularity, hyper-parameters, task)
      fg_edge_gates.safetensors          gate logits and adapters; tensor names in fg_edge.gates.inject
      training.json                      data, steps, metrics, achieved sparsity (free-form metadata)

`load` gives the gated model and nothing attached to it; `read_gate_config` gives its GateConfig (callers that need
the task or the hyper-parameters read it from the folder and pass it on).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional


from fg_edge.formats.gate_config import GateConfig
from fg_edge.arch import auto_class
from fg_edge.errors import ConfigError, GateStateError, ModelDirError
from fg_edge.formats.names import GATE_CONFIG_FILE, GATES_FILE, TRAINING_FILE  # noqa: F401 (re-exported)
from fg_edge.gates.inject import gate_state_dict, inject_gates, load_gate_state, unwrapped
from fg_edge.formats.atomic import atomic_output_dir
from fg_edge.formats.files import (check_safetensors, check_tokenizer_files, check_weight_files, read_json,
                                   weights_mismatch_message)

log = logging.getLogger(__name__)


def write_model_dir(model, gate_config: GateConfig, out: Path, tokenizer=None, metadata: Optional[dict] = None,
                    base_state: Optional[dict] = None) -> None:
    """Write the model_dir files into an existing (temporary) folder `out`. `base_state`: the plain HF state dict
    to save instead of the model's own (a sharded model's gathered full tensors, fg_edge.train.fsdp.full_state)."""
    from safetensors.torch import save_file

    with unwrapped(model):
        model.save_pretrained(out, safe_serialization=True, state_dict=base_state)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    gate_config = dataclasses.replace(gate_config, model_type=getattr(model.config, "model_type", None))
    gate_config.save(out / GATE_CONFIG_FILE)
    save_file(gate_state_dict(model), str(out / GATES_FILE), metadata={"format": "fg-edge-gates",
                                                                      "format_version": str(gate_config.format_version)})
    (out / TRAINING_FILE).write_text(json.dumps(metadata or {}, indent=2, sort_keys=True, default=str) + "\n")


def save_model_dir(model, gate_config: GateConfig, path: str | Path, tokenizer=None,
                   metadata: Optional[dict] = None, overwrite: bool = False, base_state: Optional[dict] = None) -> Path:
    """Atomically write a model_dir (nothing appears at `path` unless every file was written)."""
    with atomic_output_dir(path, overwrite=overwrite) as tmp:
        write_model_dir(model, gate_config, tmp, tokenizer=tokenizer, metadata=metadata, base_state=base_state)
    log.info("wrote model_dir %s", path)
    return Path(path)


def _check_files(model_dir: Path, names: tuple[str, ...]) -> None:
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: no such model_dir (expected the folder written by `fg-edge train`)")
    for name in names:
        if not (model_dir / name).is_file():
            raise ModelDirError(f"{model_dir}: missing {name}; is this a folder written by `fg-edge train`?")


def read_gate_config(model_dir: str | Path) -> GateConfig:
    """The GateConfig of a model_dir (ModelDirError when the folder or the file is missing or invalid)."""
    model_dir = Path(model_dir)
    _check_files(model_dir, (GATE_CONFIG_FILE,))
    try:
        return GateConfig.load(model_dir / GATE_CONFIG_FILE)
    except ConfigError as exc:
        raise ModelDirError(str(exc)) from None


def load(model_dir: str | Path, attn_implementation: str = "eager"):
    """The gated model of a model_dir, in eval mode (outputs identical to the model at save time). Its gate config
    is `read_gate_config(model_dir)`; nothing is attached to the model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    _check_files(model_dir, ("config.json", GATE_CONFIG_FILE, GATES_FILE))
    gate_config = read_gate_config(model_dir)
    read_json(model_dir / "config.json", what="model config")
    check_weight_files(model_dir)
    check_safetensors(model_dir / GATES_FILE, GateStateError)
    try:
        model = auto_class(gate_config.task, f"{model_dir / GATE_CONFIG_FILE}: task").from_pretrained(
            model_dir, use_safetensors=True, attn_implementation=attn_implementation)
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{model_dir}: cannot load the HF model ({exc})") from None
    except RuntimeError as exc:
        msg = weights_mismatch_message(exc, model_dir)
        if msg is None:
            raise
        raise ModelDirError(msg) from None
    inject_gates(model, gate_config)
    try:
        state = load_file(str(model_dir / GATES_FILE))
    except (SafetensorError, OSError) as exc:
        raise GateStateError(f"{model_dir / GATES_FILE}: unreadable safetensors file ({exc})") from None
    load_gate_state(model, state, source=str(model_dir / GATES_FILE))
    return model.eval()


def load_tokenizer(model_dir: str | Path):
    """The tokenizer saved in a model_dir, or None when it has none (ModelDirError naming the file when its
    tokenizer files are corrupt: a compile must not quietly ship a folder without one)."""
    from transformers import AutoTokenizer

    check_tokenizer_files(model_dir)
    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError, AttributeError):  # transformers raises AttributeError for some folders
        return None


def read_training_metadata(model_dir: str | Path) -> dict:
    """training.json of a model_dir ({} when absent)."""
    path = Path(model_dir) / TRAINING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
