"""Parameter-weighted sparsity (fg_edge.train.sparsity): the training-side count is the compiler's count."""

from __future__ import annotations

import pytest
import torch

from fg_edge.arch import ARCHITECTURES, head_layout, layers_of
from fg_edge.compiler import compile_model
from fg_edge.formats.gate_config import GateConfig
from fg_edge.errors import ConfigError
from fg_edge.gates.inject import gated_modules, inject_gates
from fg_edge.train.sparsity import (CLOSED_LOGIT, LagrangianController, closed_probability, gate_costs,
                              snap_to_target_)
from fg_edge.testing import DECODERS, tiny_model


def _gated(model_type, seed=0):
    task = "causal-lm" if model_type in DECODERS else "classification"
    model = tiny_model(model_type)
    inject_gates(model, GateConfig(adapter_rank=2, task=task))
    return model


def _close_some(model, seed=0, whole_groups=False):
    """Close a random ~third of heads (whole kv groups when asked) and FFN channels per layer."""
    g = torch.Generator().manual_seed(seed)
    spec = ARCHITECTURES[model.config.model_type]
    lay = head_layout(model.config, spec)
    group = lay.num_heads // lay.num_kv_heads
    for block in layers_of(model, spec):
        o = block.get_submodule(spec.o).group_gate.logits.data
        if whole_groups:
            kv = int(torch.randint(lay.num_kv_heads, (1,), generator=g))
            o[kv * group:(kv + 1) * group] = CLOSED_LOGIT
        else:
            o[torch.randperm(lay.num_heads, generator=g)[:lay.num_heads // 3]] = CLOSED_LOGIT
        f = block.get_submodule(spec.ffn_out).group_gate.logits.data
        f[torch.randperm(f.numel(), generator=g)[:f.numel() // 3]] = CLOSED_LOGIT


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "gpt2", "llama", "phi3", "qwen3", "gemma2",
                                        "modernbert", "deberta-v2"])
def test_hard_count_equals_compiler_removal(model_type):
    """Also for fused GLU inputs (phi3, modernbert: a channel is a row in each half), head_dim != hidden / heads
    (qwen3, gemma2) and DeBERTa's per-head pos projections."""
    model = _gated(model_type).eval()
    gqa = ARCHITECTURES[model_type].gqa
    _close_some(model, whole_groups=gqa)   # GQA: uneven groups keep zeroed heads
    costs = gate_costs(model)
    _, _, report = compile_model(model, tol=1e-5, decoder_steps=4)
    block_removed = sum(layer["params_removed"] for layer in report["layers"])
    block_before = sum(layer["params_before"] for layer in report["layers"])
    assert costs.hard_removed() == block_removed > 0
    assert costs.block_params == block_before
    assert 0 < costs.hard_share() < 1


def test_costs_weight_a_head_against_a_channel():
    model = _gated("bert")
    costs = gate_costs(model)
    d, hd, ffn = 32, 8, 48            # tiny BERT: hidden 32, 4 heads of 8, FFN 48
    head, channel = costs.costs[0], costs.costs[1]
    assert head.numel() == 4 and channel.numel() == ffn
    assert float(head[0]) == d * hd + 3 * hd * (d + 1)          # o columns + q/k/v rows with bias
    assert float(channel[0]) == (d + 1) + d                     # FFN-in row with bias + FFN-out column


def test_soft_share_matches_hard_share_at_saturation():
    model = _gated("bert")
    costs = gate_costs(model)
    for gate in costs.gates:
        gate.logits.data.fill_(20.0)                             # fully open
    assert float(costs.soft_share()) == pytest.approx(0.0, abs=1e-6) and costs.hard_share() == 0.0
    for gate in costs.gates:
        gate.logits.data.fill_(-20.0)                            # fully closed
    assert float(costs.soft_share()) == pytest.approx(costs.hard_share(), abs=1e-6)
    assert closed_probability(torch.tensor(-0.5)) > 0.5          # at the clamp boundary it already counts most


def test_snap_reaches_target_exactly_and_closes_lowest_first():
    model = _gated("bert")
    costs = gate_costs(model)
    g = torch.Generator().manual_seed(0)
    for gate in costs.gates:
        gate.logits.data = torch.rand(gate.logits.shape, generator=g) * 2 - 0.5
    lowest = min((float(gate.mu.min()), i) for i, gate in enumerate(costs.gates))
    info = snap_to_target_(costs, 0.4)
    share = costs.hard_share()
    assert share >= 0.4 and info["share_after"] == share
    # overshoot is at most one unit (the last gate closed)
    assert share - 0.4 <= max(float(c.max()) for c in costs.costs) / costs.block_params
    assert float(costs.gates[lowest[1]].eval_values().min()) == 0.0
    # snapping again to the same target changes nothing
    assert snap_to_target_(costs, 0.4)["gates_closed_by_snap"] == 0


def test_lagrangian_multipliers_push_toward_target():
    ctl = LagrangianController(lr=1.0)
    for _ in range(10):
        ctl.update(0.1, 0.4)                                     # below target: λ1 goes negative
    assert ctl.lambda1 < 0 and ctl.lambda2 > 0
    share = torch.tensor(0.1, requires_grad=True)
    ctl.term(share, 0.1, 0.4).backward()
    assert share.grad < 0                                        # descending the term raises the share
    # above target the quadratic term pulls back, and once the target is really met λ1 stops pushing
    assert ctl.multiplier(0.9, 0.4) > ctl.multiplier(0.4, 0.4) > ctl.multiplier(0.1, 0.4)
    ctl.update(0.35, 0.4, met=True)
    assert ctl.lambda1 == 0.0 and ctl.multiplier(0.4, 0.4) == 0.0


def test_scale_share_counts_gates_on_their_way():
    model = _gated("bert")
    costs = gate_costs(model)
    for gate in costs.gates:
        gate.logits.data.fill_(0.0)                              # μ = 0: eval gate 0.5, half-way
    assert costs.scale_share() == pytest.approx(0.5 * costs.removable_params / costs.block_params, rel=1e-6)
    assert costs.hard_share() == 0.0


def test_paper_granularity_has_no_param_costs():
    model = tiny_model("bert")
    inject_gates(model, GateConfig(granularity="paper"))
    with pytest.raises(ConfigError, match="structured"):
        gate_costs(model)


def test_adapter_only_wrappers_on_every_linear():
    model = _gated("bert")
    gated = gated_modules(model)
    assert len(gated) == 2 * 6                                   # q, k, v, o, FFN in, FFN out × 2 layers
    assert sum(1 for g in gated.values() if g.gates()) == 2 * 2  # gates only on o and FFN out
    assert all(g.lora_A is not None for g in gated.values())
    model1 = tiny_model("bert")
    inject_gates(model1, GateConfig(adapter_rank=2, adapter_modules="gated"))
    assert len(gated_modules(model1)) == 2 * 2


def test_pressure_per_parameter_or_per_gate():
    """'params': a head's closed-probability gradient is its cost over a channel's; 'uniform': equal."""
    model = _gated("bert")
    costs = gate_costs(model)
    for gate in costs.gates:
        gate.logits.data.fill_(0.3)
    head, channel = costs.gates[0].logits, costs.gates[1].logits
    costs.soft_share().backward()
    ratio = float(head.grad[0] / channel.grad[0])
    assert ratio == pytest.approx(float(costs.costs[0][0] / costs.costs[1][0]), rel=1e-5)
    head.grad = channel.grad = None
    costs.soft_gate_share().backward()
    assert float(head.grad[0]) == pytest.approx(float(channel.grad[0]), rel=1e-5)
