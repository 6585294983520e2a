"""`GatedLinear`: wraps a frozen linear (nn.Linear or transformers' Conv1D) with FineGates.

    y = r ⊙ ((W + (α/rank)·B·A)(c ⊙ x) + b)

r: row gates (one per output), c: column gates (one per input) times, when present, *group* gates expanded
over equal-sized input groups (structured granularity: one gate per attention head on the output projection's
input, one per FFN channel on the FFN output projection's input). The wrapped layer stays at `.base_layer` so
weight names stay predictable; `unwrap` puts it back.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fg_edge.errors import ConfigError
from fg_edge.gates.math import StochasticGate


def replace_module(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put `new` at dotted `path` under `root` (the one place fg-edge swaps a submodule); returns `new`."""
    parent_name, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
    return new


def weight_out_in(layer: nn.Module) -> torch.Tensor:
    """The (out, in) weight of an nn.Linear or a Conv1D (which stores (in, out)), gated or not."""
    layer = getattr(layer, "base_layer", layer)
    if isinstance(layer, nn.Linear):
        return layer.weight
    return layer.weight.t()


def in_out_features(layer: nn.Module) -> tuple[int, int]:
    w = weight_out_in(layer)
    return w.shape[1], w.shape[0]


class GatedLinear(nn.Module):
    def __init__(self, base_layer: nn.Module, *, row: bool, col: bool, group_size: Optional[int] = None,
                 adapter_rank: int = 0, adapter_alpha: float = 8.0, init_mean: float = 1.0,
                 init_std: float = 0.1, noise_std: float = 0.1):
        super().__init__()
        self.base_layer = base_layer
        in_f, out_f = in_out_features(base_layer)
        self.in_features, self.out_features = in_f, out_f
        gate = dict(init_mean=init_mean, init_std=init_std, noise_std=noise_std)
        self.row_gate = StochasticGate(out_f, **gate) if row else None
        self.col_gate = StochasticGate(in_f, **gate) if col else None
        self.group_size = group_size
        if group_size is not None:
            if group_size <= 0 or in_f % group_size:
                raise ConfigError(f"group size {group_size} does not divide in_features {in_f}")
            self.group_gate = StochasticGate(in_f // group_size, **gate)
        else:
            self.group_gate = None
        self.adapter_rank = adapter_rank
        if adapter_rank > 0:
            w = weight_out_in(base_layer)
            self.lora_A = nn.Parameter(torch.empty(adapter_rank, in_f, dtype=w.dtype))
            self.lora_B = nn.Parameter(torch.zeros(out_f, adapter_rank, dtype=w.dtype))
            nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)
            self.adapter_scale = adapter_alpha / adapter_rank
        else:
            self.lora_A = self.lora_B = None
            self.adapter_scale = 0.0

    # -- gate values ---------------------------------------------------------------------------------------
    def gates(self) -> list[StochasticGate]:
        return [g for g in (self.row_gate, self.col_gate, self.group_gate) if g is not None]

    def _column_scale(self, eval_values: bool = False) -> Optional[torch.Tensor]:
        scale = None
        if self.col_gate is not None:
            scale = self.col_gate.eval_values() if eval_values else self.col_gate()
        if self.group_gate is not None:
            g = self.group_gate.eval_values() if eval_values else self.group_gate()
            g = g.repeat_interleave(self.group_size)
            scale = g if scale is None else scale * g
        return scale

    def _row_scale(self, eval_values: bool = False) -> Optional[torch.Tensor]:
        if self.row_gate is None:
            return None
        return self.row_gate.eval_values() if eval_values else self.row_gate()

    def eval_row_scale(self) -> torch.Tensor:
        r = self._row_scale(eval_values=True)
        w = weight_out_in(self.base_layer)
        return torch.ones(self.out_features, device=w.device, dtype=w.dtype) if r is None else r

    def eval_column_scale(self) -> torch.Tensor:
        c = self._column_scale(eval_values=True)
        w = weight_out_in(self.base_layer)
        return torch.ones(self.in_features, device=w.device, dtype=w.dtype) if c is None else c

    # -- forward / fold ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        col = self._column_scale()
        if col is not None:
            x = x * col.to(x.dtype)
        w = weight_out_in(self.base_layer)
        y = F.linear(x, w, self.base_layer.bias)
        if self.lora_A is not None:
            y = y + self.adapter_scale * F.linear(F.linear(x, self.lora_A), self.lora_B)
        row = self._row_scale()
        if row is not None:
            y = y * row.to(y.dtype)
        return y

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(W', b') in (out, in) layout with eval gates and the adapter merged: W' = diag(r)(W+sBA)diag(c)."""
        w = weight_out_in(self.base_layer).detach().clone()
        if self.lora_A is not None:
            w += self.adapter_scale * (self.lora_B @ self.lora_A)
        c = self._column_scale(eval_values=True)
        if c is not None:
            w *= c.to(w.dtype)[None, :]
        b = None if self.base_layer.bias is None else self.base_layer.bias.detach().clone()
        r = self._row_scale(eval_values=True)
        if r is not None:
            w *= r.to(w.dtype)[:, None]
            if b is not None:
                b *= r.to(b.dtype)
        return w, b

    # -- what model code reads off the layer it called ------------------------------------------------------
    # HF forwards read attributes of their linears (Mamba: `self.lm_head(x.to(self.lm_head.weight.dtype))`); the
    # wrapped layer's are passed through. A forward that computed with `.weight` itself would bypass the gates:
    # the compiler's parity gate then refuses the folded model.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base_layer.bias

    def extra_repr(self) -> str:
        parts = [f"in={self.in_features}, out={self.out_features}"]
        if self.group_size:
            parts.append(f"group_size={self.group_size}")
        if self.adapter_rank:
            parts.append(f"adapter_rank={self.adapter_rank}")
        return ", ".join(parts)
