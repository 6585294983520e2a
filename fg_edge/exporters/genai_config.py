"""`genai_config.json` for a compiled decoder, so ONNX Runtime GenAI (`onnxruntime_genai.Model(compiled_dir)`)
runs the folder as it is.

The keys follow what onnxruntime-genai's own model builder writes (onnxruntime_genai/models/builders/base.py,
`make_genai_config`). Two choices are fg-edge's:

* `search.past_present_share_buffer` is false: a shared buffer is one (batch, kv_heads, max_length, head_dim)
  tensor per layer sized from the global head counts, and fg-edge's layers have their own kv-head counts; with
  separate past / present tensors GenAI feeds back whatever each layer returned;
* `decoder.filename` is model.onnx (what `fg-edge run` runs by default); point it at model.int4.onnx (or any
  other variant in the folder) to run that one — the graphs share their inputs and outputs.

`num_key_value_heads` / `head_size` are the model config's (the dense values); the per-layer shapes are in
config.json `fg_edge_layers` and in each graph's declared past inputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from fg_edge.formats.names import GENAI_CONFIG_FILE

log = logging.getLogger(__name__)


def _first(*values):
    return next((v for v in values if v is not None), None)


def _search(generation: dict, context: int) -> dict[str, Any]:
    """Search defaults: greedy (as `fg-edge run`) unless generation_config.json samples."""
    return {"diversity_penalty": 0.0, "do_sample": bool(generation.get("do_sample", False)), "early_stopping": True,
            "length_penalty": 1.0, "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0,
            "num_beams": 1, "num_return_sequences": 1, "past_present_share_buffer": False,
            "repetition_penalty": float(generation.get("repetition_penalty") or 1.0),
            "temperature": float(generation.get("temperature") or 1.0),
            "top_k": int(generation.get("top_k") or 50), "top_p": float(generation.get("top_p") or 1.0)}


def genai_config(config: dict, generation: Optional[dict] = None, filename: str = "model.onnx") -> dict:
    """The genai_config.json dict for a compiled decoder with HF `config` (config.json, with fg_edge_layers) and
    `generation` (generation_config.json, may be empty)."""
    generation = generation or {}
    layers = config.get("fg_edge_layers") or []
    heads = _first(config.get("num_attention_heads"), config.get("n_head"))
    hidden = _first(config.get("hidden_size"), config.get("n_embd"))
    head_dim = _first(config.get("head_dim"), layers[0].get("head_dim") if layers else None,
                      hidden // heads if hidden and heads else None)
    context = int(_first(config.get("max_position_embeddings"), config.get("n_positions"), 2048))
    eos = _first(generation.get("eos_token_id"), config.get("eos_token_id"))
    bos = _first(generation.get("bos_token_id"), config.get("bos_token_id"))
    pad = _first(generation.get("pad_token_id"), config.get("pad_token_id"),
                 eos[0] if isinstance(eos, list) and eos else eos)
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": filename, "head_size": int(head_dim), "hidden_size": int(hidden),
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
        "num_attention_heads": int(heads),
        "num_hidden_layers": int(_first(config.get("num_hidden_layers"), config.get("n_layer"), len(layers))),
        "num_key_value_heads": int(_first(config.get("num_key_value_heads"), heads)),
    }
    model = {"bos_token_id": bos, "context_length": context, "decoder": decoder, "eos_token_id": eos,
             "pad_token_id": pad, "type": str(config.get("model_type", "llama")),
             "vocab_size": int(_first(config.get("vocab_size"), 0))}
    return {"model": model, "search": _search(generation, context)}


def write_genai_config(folder: str | Path, filename: str = "model.onnx") -> Path:
    """Write genai_config.json into a (partly written) compiled decoder folder; returns its path."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    gen_path = folder / "generation_config.json"
    generation = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    path = folder / GENAI_CONFIG_FILE
    path.write_text(json.dumps(genai_config(config, generation, filename), indent=2) + "\n")
    log.info("wrote %s (ONNX Runtime GenAI; decoder %s, past_present_share_buffer false)", path.name, filename)
    return path
