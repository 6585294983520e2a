"""Data read by `fg_edge.data.readers` -> token ids and tensors (needs torch), and the one pad-token fix-up.

* `ensure_pad_token` / `set_pad_token_id`: the one home of "the tokenizer has no pad token, reuse EOS" and of
  "the model config learns the tokenizer's pad id" (decoder classifiers pool the last non-pad token through
  `config.pad_token_id`). Used by `fg_edge.sources` when a model is loaded and by `fg_edge.train` before training.
* `tokenize_classification`, `pad_collate`: rows of a `ClassificationData` -> padded batches.
* `lm_blocks`: documents of a `TextData` -> (N, block_size) token blocks for causal-LM training.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from fg_edge.data.readers import ClassificationData, TextData, subsample_indices
from fg_edge.errors import DataError, FgEdgeError

log = logging.getLogger(__name__)


def ensure_pad_token(tokenizer, fallbacks: tuple[str, ...] = ("eos_token", "unk_token"),
                     error: type[FgEdgeError] = DataError) -> None:
    """Decoder tokenizers often lack a pad token; reuse the first of `fallbacks` it has (EOS, then UNK) so batches
    can be padded. Raises `error` when it has none of them."""
    if tokenizer.pad_token_id is not None:
        return
    for attr in fallbacks:
        candidate = getattr(tokenizer, attr)
        if candidate is not None:
            tokenizer.pad_token = candidate
            log.info("tokenizer has no pad token: using %s %r (id %d)", attr.split("_")[0], candidate,
                     tokenizer.pad_token_id)
            return
    names = " or ".join(a.split("_")[0] for a in fallbacks)
    raise error(f"the tokenizer has no pad token and no {names} token to pad batches with; pass a tokenizer with a "
                "pad token")


def set_pad_token_id(model, tokenizer, overwrite: bool = False) -> None:
    """`model.config.pad_token_id` (and the generation config's, when unset) from the tokenizer; the config's own
    value is kept unless `overwrite` (sequence classification on decoders finds the last non-pad token with it)."""
    if overwrite or getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def tokenize_classification(data: ClassificationData, tokenizer, max_length: int) -> list[dict]:
    """One dict per row: input_ids, attention_mask (token_type_ids when the tokenizer makes them), label."""
    ensure_pad_token(tokenizer)
    enc = tokenizer(data.texts, data.text_pairs, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "labels": data.labels[i]} for i in range(len(data))]


def pad_collate(tokenizer):
    """A collate function padding a list of tokenised rows to the longest (tokenizer's padding side)."""
    pad_id = tokenizer.pad_token_id
    left = getattr(tokenizer, "padding_side", "right") == "left"

    def collate(rows: list[dict]) -> dict:
        n = max(len(r["input_ids"]) for r in rows)
        out: dict[str, Any] = {}
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key not in rows[0]:
                continue
            padded = []
            for r in rows:
                pad = [fill] * (n - len(r[key]))
                padded.append(pad + list(r[key]) if left else list(r[key]) + pad)
            out[key] = torch.tensor(padded, dtype=torch.long)
        out["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
        if "index" in rows[0]:  # row position in its data set (cached teacher logits are looked up by it)
            out["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        return out

    return collate


def lm_blocks(data: TextData, tokenizer, block_size: int):
    """(N, block_size) LongTensor: documents tokenised, joined with EOS, cut into full blocks (remainder dropped;
    a stream shorter than one block gives one shorter block). `data.max_blocks` subsamples blocks with
    `data.seed` (deterministic)."""
    enc = tokenizer(data.texts, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in enc:
        stream.extend(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            stream.append(eos)
    if len(stream) < 2:
        raise DataError(f"{data.source} tokenises to {len(stream)} token(s); causal-LM training needs at least 2")
    if len(stream) < block_size:
        blocks = torch.tensor([stream], dtype=torch.long)
    else:
        n = len(stream) // block_size
        blocks = torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)
    keep = subsample_indices(blocks.shape[0], data.max_blocks, data.seed)
    return blocks[keep]


__all__ = ["ensure_pad_token", "set_pad_token_id", "tokenize_classification", "pad_collate", "lm_blocks"]
