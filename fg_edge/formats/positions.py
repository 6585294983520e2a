"""How many tokens a model can take, and what fg-edge does with a text that is longer (torch-free).

The policy, the same in every command (README "Errors and guarantees"):
- `train` / `finetune`: `--max-length` above the model's position limit is refused; the default (128) is
  lowered to the limit for models with fewer positions. Training rows longer than `--max-length` are cut to it,
  as Hugging Face tokenizers do (the end of the text is dropped).
- `run` / `eval`: a text longer than the limit is cut with a warning: `--truncate right` (the default for
  classifiers and embedders: keep the start, as in training), `--truncate left` (the default for decoder prompts:
  keep the end, which is what a continuation depends on, and any leading special tokens), or refused with
  `--truncate error`. A decoder's prompt also leaves room for `--max-new-tokens` inside the limit.
- An empty TEXT is refused.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

#: `--truncate` choices; "auto" is right for encoders, left for decoder prompts
TRUNCATE_CHOICES = ("auto", "right", "left", "error")

#: model types whose position ids start after the padding index (transformers'
#: `create_position_ids_from_input_ids`), so pad_token_id + 1 of their position embeddings are never used
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text",
                               "longformer", "mpnet", "ibert", "markuplm"})
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx")


def position_limit(config: Mapping[str, Any]) -> Optional[int]:
    """The most tokens one sequence of a model with HF `config` (a dict) can hold, or None when it says nothing."""
    for key in _POSITION_KEYS:
        val = config.get(key)
        if isinstance(val, int) and not isinstance(val, bool) and val > 0:
            if config.get("model_type") in _OFFSET_POSITIONS:
                pad = config.get("pad_token_id")
                val -= (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
            return val
    return None


def truncation_side(truncate: Optional[str], decoder: bool) -> str:
    """'right', 'left' or 'error' for a `--truncate` value (None / 'auto': the default for the model kind)."""
    if truncate in (None, "auto"):
        return "left" if decoder else "right"
    if truncate not in TRUNCATE_CHOICES:
        from fg_edge.errors import ConfigError

        raise ConfigError(f"--truncate must be one of {', '.join(TRUNCATE_CHOICES)}; got {truncate!r}")
    return truncate
