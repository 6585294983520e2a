"""Torch-free ONNX Runtime harness: providers, sessions, a runner (classify / embed / generate) and the bench.

Nothing under `fg_edge.runtimes` imports torch or transformers: the `runtime` extra (onnxruntime, numpy,
tokenizers) is enough to run, benchmark and evaluate a compiled_dir. matplotlib (chart) and psutil (RSS) are
used when present.
"""

from __future__ import annotations

from fg_edge.runtimes.providers import PROVIDERS, ProviderSpec, resolve_provider  # noqa: F401

__all__ = ["PROVIDERS", "ProviderSpec", "resolve_provider"]
