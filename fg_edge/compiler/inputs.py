"""Inputs of the parity gates: the padded batches both gates feed. Their tolerances, lengths and steps, and why the
ONNX gate is looser than the torch one, are in `fg_edge.formats.parity`."""

from __future__ import annotations

import torch

from fg_edge.formats.parity import TORCH_PARITY_LENGTHS


def padded_batch(vocab_size: int, lengths=TORCH_PARITY_LENGTHS, seed: int = 0, left: bool = False):
    """input_ids / attention_mask for sequences of different lengths, padded (right by default) with id 0."""
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    ids = torch.zeros(len(lengths), n, dtype=torch.long)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for i, length in enumerate(lengths):
        sl = slice(n - length, n) if left else slice(0, length)
        ids[i, sl] = torch.randint(3, vocab_size, (length,), generator=g)
        mask[i, sl] = 1
    return ids, mask
