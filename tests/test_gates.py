"""Gate math against closed-form values (docs/DESIGN.md §1)."""

import math

import pytest
import torch

from fg_edge.gates.math import StochasticGate, eval_gate, open_probability, sparsity_term, train_gate


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("theta", [-3.0, -0.6, -0.5493, 0.0, 0.3, 0.5493, 1.0, 4.0])
def test_eval_gate_is_clamped_tanh_plus_half(theta):
    mu = torch.tanh(torch.tensor([theta], dtype=torch.float64))
    expected = min(1.0, max(0.0, math.tanh(theta) + 0.5))
    assert eval_gate(mu).item() == pytest.approx(expected, abs=1e-12)


def test_eval_gate_exactly_zero_and_one():
    mu = torch.tanh(torch.tensor([-3.0, -0.56, 0.56, 3.0]))
    z = eval_gate(mu)
    assert z[0].item() == 0.0 and z[1].item() == 0.0
    assert z[2].item() == 1.0 and z[3].item() == 1.0


@pytest.mark.parametrize("mu", [-1.0, -0.5, -0.2, 0.0, 0.25, 0.9])
def test_open_probability_is_phi(mu):
    p = open_probability(torch.tensor([mu], dtype=torch.float64)).item()
    assert p == pytest.approx(phi((mu + 0.5) / 0.5), abs=1e-12)


def test_train_gate_noise_statistics():
    torch.manual_seed(0)
    mu = torch.zeros(200_000)  # mu + 0.5 = 0.5, far from the clamp edges for sigma 0.1
    z = train_gate(mu, 0.1)
    assert z.mean().item() == pytest.approx(0.5, abs=2e-3)
    assert z.std().item() == pytest.approx(0.1, abs=2e-3)
    assert z.min().item() >= 0.0 and z.max().item() <= 1.0
    # no noise -> the eval gate
    assert torch.equal(train_gate(mu, 0.0), eval_gate(mu))


def test_sparsity_term_closed_form():
    p_rows = torch.tensor([1.0, 0.0, 0.5, 0.5])   # mean 0.5
    p_cols = torch.tensor([0.9, 0.9])              # mean 0.9
    # target 0.4 -> keep 0.6: (|0.5-0.6| + |0.9-0.6|) / 2 = 0.2
    assert sparsity_term([p_rows, p_cols], 0.4).item() == pytest.approx(0.2, abs=1e-7)


def test_stochastic_gate_init_and_modes():
    torch.manual_seed(0)
    g = StochasticGate(10_000)
    assert g.logits.mean().item() == pytest.approx(1.0, abs=0.01)
    assert g.logits.std().item() == pytest.approx(0.1, abs=0.01)
    g.eval()
    assert torch.equal(g(), g(), ) and (g() == 1.0).float().mean().item() > 0.999
    g.train()
    assert not torch.equal(g(), g())
    # gradient reaches the logits through the training gate
    g.logits.data.fill_(0.0)
    g().sum().backward()
    assert g.logits.grad is not None and g.logits.grad.abs().sum() > 0
