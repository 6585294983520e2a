"""Autoregressive generation on an ONNX decoder with a KV cache (numpy only).

The decoder graph (one graph for prefill and decode) takes input_ids (B,S), attention_mask (B,past+S),
position_ids (B,S) when declared, and past_key_values.{i}.key / .value (B, kv_heads_i, past, head_dim_i) per
layer i; it returns logits (B,S,V) and present.{i}.key / .value. Prefill feeds past length 0. Every layer has its
own kv_heads_i / head_dim_i (a compiled model's layers differ); they come from the graph's declared input shapes,
falling back to `fg_edge_layers` in config.json.

Decoding: greedy when temperature <= 0, else sampling from softmax(logits / temperature) restricted to the
top_k most likely tokens (top_k 0 = all), with a seeded numpy Generator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np


@dataclass
class GenerationOutput:
    sequences: np.ndarray                 # (B, prompt + new) token ids, prompt left-padded
    new_tokens: np.ndarray                # (B, n_new) generated ids (pad after EOS)
    prompt_len: int
    prefill_s: float                      # prompt forward + first token choice (time to first token)
    decode_s: float                       # the remaining cached steps
    steps: int                            # decode steps after prefill
    kv_shapes: list[dict] = field(default_factory=list)   # per layer: key/value shape after generation

    @property
    def tokens_per_s(self) -> Optional[float]:
        """Generated tokens per second of the cached decode steps (all sequences of the batch)."""
        if self.steps <= 0 or self.decode_s <= 0:
            return None
        return self.steps * self.new_tokens.shape[0] / self.decode_s


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def choose_next(logits: np.ndarray, top_k: int = 0, temperature: float = 0.0,
                rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Next token per row of `logits` (B, V): greedy, or top-k / temperature sampling."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature is None or temperature <= 0:
        return logits.argmax(axis=-1).astype(np.int64)
    rng = rng if rng is not None else np.random.default_rng(0)
    scaled = logits / float(temperature)
    if top_k and 0 < top_k < scaled.shape[-1]:
        kth = np.partition(scaled, -top_k, axis=-1)[:, -top_k][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = softmax(scaled)
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs], dtype=np.int64)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token-id lists -> (ids, mask), left-padded to the longest (decoders generate from the right end)."""
    n = max(len(s) for s in sequences)
    ids = np.full((len(sequences), n), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), n), dtype=np.int64)
    for i, s in enumerate(sequences):
        if s:
            ids[i, n - len(s):] = s
            mask[i, n - len(s):] = 1
    return ids, mask


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    pos = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 0, pos).astype(np.int64)


def generate(model, input_ids: np.ndarray, attention_mask: Optional[np.ndarray] = None, max_new_tokens: int = 20,
             top_k: int = 0, temperature: float = 0.0, seed: int = 0, eos_ids: Iterable[int] = (),
             pad_id: int = 0, on_token: Optional[Callable[[np.ndarray], None]] = None,
             stop_at_eos: bool = True) -> GenerationOutput:
    """Generate up to `max_new_tokens` tokens with `model` (a runner.OnnxModel of kind causal-lm)."""
    input_ids = np.asarray(input_ids, dtype=np.int64)
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    B, S = input_ids.shape
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    rng = np.random.default_rng(seed)
    eos = set(int(e) for e in eos_ids)
    finished = np.zeros(B, dtype=bool)
    new: list[np.ndarray] = []

    t0 = time.perf_counter()
    if model.has_cache:
        past = model.empty_past(B)
        logits, past = model.decoder_step(input_ids, mask, positions_from_mask(mask), past)
    else:
        logits, past = model.decoder_step(input_ids, mask, positions_from_mask(mask), None)
    nxt = choose_next(logits[:, -1, :], top_k, temperature, rng)
    prefill_s = time.perf_counter() - t0

    seq = input_ids
    steps = 0
    t1 = time.perf_counter()
    while True:
        was_finished = finished.copy()
        nxt = np.where(was_finished, pad_id, nxt)
        new.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if eos and stop_at_eos:
            finished |= np.isin(nxt, list(eos))
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
        mask = np.concatenate([mask, (~was_finished).astype(np.int64)[:, None]], axis=1)
        if len(new) >= max_new_tokens or finished.all():
            break
        if model.has_cache:
            pos = (mask.sum(axis=1, keepdims=True) - 1).astype(np.int64)
            logits, past = model.decoder_step(nxt[:, None], mask, pos, past)
        else:
            logits, past = model.decoder_step(seq, mask, positions_from_mask(mask), None)
        nxt = choose_next(logits[:, -1, :], top_k, temperature, rng)
        steps += 1
    decode_s = time.perf_counter() - t1 if steps else 0.0
    kv_shapes = []
    if past is not None:
        for i in range(model.num_layers):
            kv_shapes.append({"layer": i, "key": list(past[(i, "key")].shape), "value": list(past[(i, "value")].shape)})
    new_arr = np.stack(new, axis=1) if new else np.zeros((B, 0), dtype=np.int64)
    return GenerationOutput(seq, new_arr, S, prefill_s, decode_s, steps, kv_shapes)
