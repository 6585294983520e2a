"""fg-edge: FineGates on Hugging Face transformers, compiled to smaller ONNX models for edge devices.

Library code logs through `logging`; the CLI sets up handlers. Heavy imports happen inside functions.
"""

__version__ = "0.1.0"


def load(model_dir, attn_implementation: str = "eager"):
    """Load a model_dir (output of `fg-edge train`) as a gated HF model in eval mode."""
    from fg_edge.model_dir import load as _load

    return _load(model_dir, attn_implementation=attn_implementation)


__all__ = ["load", "__version__"]
