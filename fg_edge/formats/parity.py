"""Every default of the parity gates (torch-free, so the command line can show them without importing torch).

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

#: compiled vs gated torch model (fg_edge.compiler.parity)
TORCH_PARITY_TOL = 1e-5
#: sequence lengths of the compiler's padded batch (right padding for encoders, left for decoders)
TORCH_PARITY_LENGTHS = (7, 4, 2)
#: cached greedy steps both gates check on models that generate
PARITY_DECODER_STEPS = 32

#: ONNX graph (ONNX Runtime CPU) vs gated torch model (fg_edge.exporters.onnx_parity); see the module docstring
ONNX_PARITY_TOL = 1e-4
#: encoder batch of the ONNX gate (right-padded), longer than the compiler's to cover more positions per graph
ONNX_ENCODER_LENGTHS = (11, 6, 3)
#: decoder prompts of the ONNX gate (left-padded, as in generation)
ONNX_DECODER_LENGTHS = (7, 4, 2)
