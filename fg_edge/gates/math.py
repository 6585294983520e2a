"""The FineGates gate math (docs/DESIGN.md §1), in one place.

Every gate is one trainable logit θ.  μ = tanh(θ) and

* training gate  z = clamp(μ + 0.5 + ε, 0, 1),  ε ~ N(0, σ²)  (fresh noise every forward)
* eval gate      z = clamp(μ + 0.5, 0, 1)       (deterministic; exactly 0 means "removed")
* P(open)        = Φ((μ + 0.5) / 0.5)          = 0.5 − 0.5·erf((−0.5 − μ) / (0.5·√2))

The clamp makes the gate a hard sigmoid: once μ < −0.5 the eval gate is exactly zero, which is what lets the
compiler delete the row / column / head / channel behind it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: The paper's logit initialisation: θ ~ N(1, 0.1²), so every eval gate starts at clamp(tanh(1)+0.5)=1 (open).
DEFAULT_INIT_MEAN = 1.0
DEFAULT_INIT_STD = 0.1
#: Standard deviation of the training noise ε.
DEFAULT_NOISE_STD = 0.1


def eval_gate(mu: torch.Tensor) -> torch.Tensor:
    """Deterministic gate value in [0, 1] for μ = tanh(θ)."""
    return torch.clamp(mu + 0.5, 0.0, 1.0)


def train_gate(mu: torch.Tensor, noise_std: float) -> torch.Tensor:
    """Stochastic gate: hard sigmoid of μ + 0.5 plus Gaussian noise."""
    if noise_std <= 0:
        return eval_gate(mu)
    return torch.clamp(mu + 0.5 + noise_std * torch.randn_like(mu), 0.0, 1.0)


def open_probability(mu: torch.Tensor) -> torch.Tensor:
    """P(gate open) = Φ((μ + 0.5) / 0.5), written with erf exactly as in the reference code."""
    return 0.5 - 0.5 * torch.erf((-0.5 - mu) / (0.5 * math.sqrt(2.0)))


def sparsity_term(open_probs: list[torch.Tensor], target_sparsity: float) -> torch.Tensor:
    """|mean(P) − (1 − target)| averaged over a list of gate groups (rows and cols of one layer, say)."""
    keep = 1.0 - target_sparsity
    terms = [torch.abs(p.mean() - keep) for p in open_probs if p.numel() > 0]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


class StochasticGate(nn.Module):
    """A vector of `size` stochastic gates with logits θ (the only trainable tensor)."""

    def __init__(self, size: int, init_mean: float = DEFAULT_INIT_MEAN, init_std: float = DEFAULT_INIT_STD,
                 noise_std: float = DEFAULT_NOISE_STD):
        super().__init__()
        self.noise_std = float(noise_std)
        self.logits = nn.Parameter(torch.empty(size).normal_(init_mean, init_std))

    @property
    def mu(self) -> torch.Tensor:
        return torch.tanh(self.logits)

    def forward(self) -> torch.Tensor:
        if self.training:
            return train_gate(self.mu, self.noise_std)
        return eval_gate(self.mu)

    def eval_values(self) -> torch.Tensor:
        return eval_gate(self.mu)

    def open_probability(self) -> torch.Tensor:
        return open_probability(self.mu)

    def extra_repr(self) -> str:
        return f"size={self.logits.numel()}, noise_std={self.noise_std}"
