"""Inputs of the parity gates: the padded batches both gates feed (their defaults: fg_edge.formats.parity).

Two gates check that a smaller model still computes what the gated model computes:

* `fg_edge.compiler.parity` — the compiled torch model vs the gated torch model (same kernels, only the order of
  float32 sums changes with the folding and the removed rows): tolerance `TORCH_PARITY_TOL`;
* `fg_edge.exporters.onnx_parity` — an ONNX graph run by ONNX Runtime vs the gated torch model: tolerance
  `ONNX_PARITY_TOL`, 10x looser because ORT runs other kernels than torch (fused attention / LayerNorm / GELU,
  its own GEMM blocking, graph rewrites at session creation) whose float32 rounding differs, so two runtimes agree
  less closely than two torch models do; a structural mistake (a wrong head or channel) is orders of magnitude
  above either bound.

Both tolerances are scaled by max(1, max|gated output|) (`compiler.parity.scaled_tolerance`).
"""

from __future__ import annotations

import torch

from fg_edge.formats.parity import (ONNX_DECODER_LENGTHS, ONNX_ENCODER_LENGTHS, ONNX_PARITY_TOL,  # noqa: F401
                                    PARITY_DECODER_STEPS, TORCH_PARITY_LENGTHS, TORCH_PARITY_TOL)


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
