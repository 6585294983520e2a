"""`load_pretrained(source, task)`: the base model a user passes to `fg-edge train` / `finetune`, and its tokenizer.

`source` is a path or hub id (see `fg_edge.sources.resolve` for the accepted forms) or an already resolved
`ResolvedSource` (call `resolve_source` first when the caller wants to know what was loaded, from where).
The result is `(model, tokenizer)`: float32, eval mode, with a pad token set (pad = eos when the tokenizer has
none; classification models get `config.pad_token_id` from it so decoders find the last token).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from fg_edge.errors import ConfigError, SourceError
from fg_edge.formats.files import check_tokenizer_file, check_tokenizer_files
from fg_edge.formats.names import TASKS
from fg_edge.sources import llama2c
from fg_edge.sources.gguf import gguf_metadata, gguf_tokenizer, load_gguf_model, require_gguf_package
from fg_edge.sources.hf import load_hf_model, load_hf_tokenizer, set_padding
from fg_edge.sources.resolve import GGUF_MAGIC, ResolvedSource, file_magic, resolve_source

log = logging.getLogger(__name__)


def load_tokenizer(tokenizer: str, trust_remote_code: bool = False):
    """An explicit tokenizer: llama2.c tokenizer file, GGUF file, HF folder or hub id."""
    path = Path(tokenizer).expanduser()
    if path.is_file():
        if file_magic(path) == GGUF_MAGIC:
            require_gguf_package(tokenizer, path)
            return gguf_tokenizer(path, gguf_metadata(path))
        if path.name == "tokenizer.json":
            from transformers import PreTrainedTokenizerFast

            check_tokenizer_file(path, SourceError)
            return PreTrainedTokenizerFast(tokenizer_file=str(path))
        return llama2c.load_tokenizer(path)
    from transformers import AutoTokenizer

    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    where = str(path) if path.is_dir() else tokenizer
    if not path.is_dir():
        resolved = resolve_source(tokenizer)
        if resolved.kind == "gguf":
            return gguf_tokenizer(resolved.path, gguf_metadata(resolved.path))
        where = str(resolved.path) if resolved.path is not None else tokenizer
        if resolved.local_files_only:
            kwargs["local_files_only"] = True
    if path.is_dir():
        check_tokenizer_files(path, SourceError)
    try:
        return AutoTokenizer.from_pretrained(where, **kwargs)
    except Exception as exc:  # noqa: BLE001 - tokenizer back ends raise bare Exception / TypeError / OSError
        raise SourceError(f"cannot load tokenizer {tokenizer!r}: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None


def load_pretrained(source: str | ResolvedSource, task: str, *, num_labels: int | None = None,
                    tokenizer: str | None = None, trust_remote_code: bool = False, attn_implementation: str = "eager",
                    seed: int | None = None):
    """(model, tokenizer) for `source` (a path / hub id, or the `ResolvedSource` of `resolve_source`).

    task: 'classification' (AutoModelForSequenceClassification with `num_labels`, head newly initialised) or
    'causal-lm' (AutoModelForCausalLM). The model is float32 and in eval mode. `tokenizer` overrides where the
    tokenizer comes from (a llama2.c tokenizer file, a GGUF file, a tokenizer.json, a HF folder or a hub id).
    `trust_remote_code` is passed to transformers only when True. `seed` seeds torch before the model is built,
    so a newly initialised task head is the same on every run (without it, it depends on the process's RNG).
    """
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 1):
        raise ConfigError(f"num_labels must be a positive integer; got {num_labels!r}")
    resolved = source if isinstance(source, ResolvedSource) else resolve_source(source)
    t0 = time.perf_counter()
    if seed is not None:
        torch.manual_seed(seed)
    header = meta = None
    if resolved.kind in ("hf-dir", "hub"):
        model = load_hf_model(resolved, task, num_labels, trust_remote_code, attn_implementation)
    elif resolved.kind == "gguf":
        model, meta = load_gguf_model(resolved, task, num_labels, trust_remote_code, attn_implementation)
    else:
        model, header = llama2c.load_for_task(resolved.path, task, num_labels, attn_implementation)

    if tokenizer is not None:
        tok = load_tokenizer(tokenizer, trust_remote_code)
    elif resolved.kind == "gguf":
        tok = gguf_tokenizer(resolved.path, meta)
    elif resolved.kind == "llama2c":
        tok = llama2c.load_tokenizer(llama2c.find_tokenizer(resolved.path, header.vocab_size),
                                     vocab_size=header.vocab_size, model_max_length=header.seq_len)
    else:
        tok = load_hf_tokenizer(resolved, trust_remote_code)

    set_padding(model, tok, task)
    if len(tok) > model.config.vocab_size:
        log.warning("tokenizer has %d tokens but the model's vocab_size is %d", len(tok), model.config.vocab_size)
    model = model.to(torch.float32).eval()
    log.info("loaded %s (%s) for %s in %.1fs", resolved.source, resolved.describe(), task, time.perf_counter() - t0)
    return model, tok
