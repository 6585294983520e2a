"""Hugging Face folders and hub ids -> float32 model + tokenizer (safetensors only), and the load-time pad fix-up.

Called by `fg_edge.sources.load.load_pretrained` with a `ResolvedSource` of kind 'hf-dir' or 'hub'; the GGUF
loader reuses `model_kwargs`, and `set_padding` runs on every loaded model whatever its source.
"""

from __future__ import annotations

import logging

import torch

from fg_edge.arch import auto_class
from fg_edge.data.tokenize import ensure_pad_token, set_pad_token_id
from fg_edge.errors import SourceError
from fg_edge.formats.files import check_tokenizer_files, check_weight_files, read_json, weights_mismatch_message
from fg_edge.sources.resolve import ResolvedSource

log = logging.getLogger(__name__)


def model_kwargs(task, num_labels, trust_remote_code, attn_implementation) -> dict:
    """`from_pretrained` keyword arguments: float32, the attention implementation, num_labels for classification;
    trust_remote_code only when True."""
    kwargs = {"dtype": torch.float32, "attn_implementation": attn_implementation}
    if task == "classification" and num_labels is not None:
        kwargs["num_labels"] = int(num_labels)
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    return kwargs


def _wrap_load_error(resolved: ResolvedSource, what: str, exc: Exception) -> SourceError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = ""
    if "trust_remote_code" in str(exc):
        hint = " (this model needs custom code: pass trust_remote_code=True / --trust-remote-code if you trust it)"
    if resolved.kind == "hub" and resolved.local_files_only:
        hint += " (the hub is unreachable and the model is not in the local Hugging Face cache)"
    return SourceError(f"cannot load the {what} of {resolved.source!r} ({resolved.describe()}): {msg}{hint}")


def load_hf_model(resolved: ResolvedSource, task, num_labels, trust_remote_code, attn_implementation):
    """The model of an 'hf-dir' / 'hub' source (`auto_class(task)`, never unpickled)."""
    where = str(resolved.path) if resolved.kind == "hf-dir" else resolved.hub_id
    kwargs = model_kwargs(task, num_labels, trust_remote_code, attn_implementation)
    kwargs["use_safetensors"] = True  # never unpickle, also for hub repos
    if resolved.local_files_only:
        kwargs["local_files_only"] = True
    if resolved.kind == "hf-dir":   # corrupt files: one message naming the file, before transformers sees them
        read_json(resolved.path / "config.json", SourceError, "model config")
        check_weight_files(resolved.path, SourceError)
    try:
        return auto_class(task).from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as exc:
        raise _wrap_load_error(resolved, "model", exc) from None
    except RuntimeError as exc:   # weights that do not fit config.json
        msg = weights_mismatch_message(exc, resolved.path) if resolved.path is not None else None
        if msg is None:
            raise
        raise SourceError(msg) from None


def load_hf_tokenizer(resolved: ResolvedSource, trust_remote_code: bool):
    """The tokenizer stored with an 'hf-dir' / 'hub' source."""
    from transformers import AutoTokenizer

    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    if resolved.local_files_only:
        kwargs["local_files_only"] = True
    where = str(resolved.path) if resolved.path is not None else resolved.hub_id
    if resolved.kind == "hf-dir":
        check_tokenizer_files(resolved.path, SourceError)
    try:
        return AutoTokenizer.from_pretrained(where, **kwargs)
    except Exception as exc:  # noqa: BLE001 - tokenizer back ends raise bare Exception / TypeError / OSError
        raise SourceError(f"{resolved.source!r} ({resolved.describe()}): no usable tokenizer "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); pass tokenizer=... "
                          "(fg-edge train --tokenizer) with a tokenizer folder, file or hub id") from None


def set_padding(model, tokenizer, task: str) -> None:
    """Pad = eos when the tokenizer has none; the model config gets the pad id (always for classification)."""
    ensure_pad_token(tokenizer, fallbacks=("eos_token",), error=SourceError)
    # sequence classification on decoders pools the last non-pad token, found through config.pad_token_id
    set_pad_token_id(model, tokenizer, overwrite=task == "classification")
