"""The dense baseline: the gated model with its gates (and adapters) folded into the weights, nothing removed.

Exported by the same path and settings as the compiled model, so `fg-edge bench` compares like with like.
Uses the compiler's own fold passes when they are there, else folds with `GatedLinear.folded()`.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from fg_edge.errors import CompileError

log = logging.getLogger(__name__)


@torch.no_grad()
def _fold_locally_(model: nn.Module) -> None:
    from fg_edge.gates.inject import gated_modules
    from fg_edge.gates.layer import GatedLinear, replace_module

    for name, g in gated_modules(model).items():
        if not isinstance(g, GatedLinear):
            raise CompileError(f"{name}: expected a GatedLinear to fold, found {type(g).__name__}")
        w, b = g.folded()
        base = g.base_layer
        base.weight.data.copy_(w if isinstance(base, nn.Linear) else w.t())
        if b is not None:
            base.bias.data.copy_(b)
        replace_module(model, name, base)


def dense_baseline(gated_model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A deep copy of `gated_model` with every gate folded (W' = diag(r)(W + sBA)diag(c)); eval mode.

    inplace: fold `gated_model` itself (no copy, half the memory); the gated model is consumed."""
    model = (gated_model if inplace else copy.deepcopy(gated_model)).eval()
    try:
        from fg_edge.compiler.passes import fold_gates_, merge_adapters_
    except ImportError:
        log.debug("fg_edge.compiler fold passes not available; folding with GatedLinear.folded()")
        _fold_locally_(model)
    else:
        merge_adapters_(model)
        fold_gates_(model)
    return model
