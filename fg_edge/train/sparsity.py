"""Sparsity in the units the compiler removes: block parameters, with the compiler's own cost of every gate.

A closed structured gate removes a fixed set of tensor entries from the exported model (docs/DESIGN.md §3):

* a **head gate** (one per query head, on the attention output projection) removes the head's o-projection
  columns (hidden × head_dim) and its q rows (head_dim × (in + bias)); its kv head's k and v rows go when the
  whole group goes, so each query head carries 1/group of them;
* an **FFN channel gate** (on the FFN output projection) removes that column of the output projection and the
  channel's row (+ bias) of every FFN input projection (two of them for SwiGLU).

`GateCosts` holds that cost for every gate, and `block_params` — every parameter of the transformer blocks,
the denominator the compile report uses — so that

    hard_share  = Σ cost · [eval gate == 0] / block_params        (what `fg-edge compile` removes)
    soft_share  = Σ cost · q(μ)            / block_params        (differentiable, what training controls)

with q(μ) the paper's "closed" probability 1 − P(open) = Φ(−(μ + 0.5)/0.5) rescaled to [0, 1] over the range a
gate can reach (μ = tanh θ ∈ (−1, 1)): a fully closed gate counts as removed, a fully open one as kept, so a
bimodal gate state has soft share = hard share. (Unscaled, 1 − P tops out at Φ(1) = 0.84, which made a target
of 0.4 land on ~48% of gates closed.) In MiniLM a head is worth 64 FFN channels; counting gates instead of
parameters treats them alike.

`LagrangianController` holds the soft share at a (ramped) target as CoFi / Sheared-LLaMA do:
loss += λ1·(ŝ − t) + λ2·(ŝ − t)², with λ1, λ2 updated by gradient *ascent*; `snap_to_target_` closes the
lowest gates until the hard share reaches the target exactly, before the final phase with the mask frozen.

Gates without a structural unit (the paper's row/column gates, `scale_gates`) have cost 0 here; paper
granularity is controlled in gate counts (`fg_edge.gates.inject.sparsity_loss`) instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from fg_edge.arch import has_submodule, head_layout, layers_of, spec_for
from fg_edge.errors import ConfigError
from fg_edge.gates.math import StochasticGate, open_probability
from fg_edge.formats.gate_config import GateConfig
from fg_edge.formats.train_args import TrainArgs
from fg_edge.gates.inject import gated_modules, sparsity_loss
from fg_edge.gates.stats import expected_sparsity
from fg_edge.gates.layer import GatedLinear, in_out_features

log = logging.getLogger(__name__)

#: 1 − P(open) at the two ends of μ = tanh θ ∈ (−1, 1): Φ(−3) and Φ(1).
_Q_OPEN = 0.5 - 0.5 * math.erf(3.0 / math.sqrt(2.0))
_Q_CLOSED = 0.5 - 0.5 * math.erf(-1.0 / math.sqrt(2.0))


def closed_probability(mu: torch.Tensor) -> torch.Tensor:
    """1 − P(open), rescaled so a gate at μ → 1 counts 0 and one at μ → −1 counts 1 (see the module docstring)."""
    return ((1.0 - open_probability(mu)) - _Q_OPEN) / (_Q_CLOSED - _Q_OPEN)


def _plain(layer: nn.Module) -> nn.Module:
    return layer.base_layer if isinstance(layer, GatedLinear) else layer


def _has_bias(layer: nn.Module) -> int:
    return int(getattr(_plain(layer), "bias", None) is not None)



def _base_param_count(block: nn.Module) -> int:
    """Parameters of a block as the plain HF model holds them (gate logits and adapters excluded)."""
    extra = set()
    for m in block.modules():
        if isinstance(m, GatedLinear):
            extra |= {id(g.logits) for g in m.gates()}
            extra |= {id(p) for p in (m.lora_A, m.lora_B) if p is not None}
    return sum(p.numel() for p in block.parameters() if id(p) not in extra)


@dataclass
class GateCosts:
    """Per structured gate, the block parameters its closing removes (see the module docstring)."""

    gates: list[StochasticGate]
    costs: list[torch.Tensor]          # one float tensor per gate vector, same length
    block_params: int                  # every parameter of the transformer blocks

    @property
    def removable_params(self) -> int:
        return int(sum(float(c.sum()) for c in self.costs))

    def soft_share(self) -> torch.Tensor:
        """Differentiable expected share of block parameters removed."""
        total = None
        for gate, cost in zip(self.gates, self.costs):
            part = (closed_probability(gate.mu) * cost.to(gate.logits.device)).sum()
            total = part if total is None else total + part
        if total is None:
            return torch.zeros(())
        return total / self.block_params

    def soft_gate_share(self) -> torch.Tensor:
        """Differentiable mean closed-probability over gates, every gate weighted alike (TrainArgs.sparsity_pressure
        'uniform': the gradient then ranks gates by their task importance per gate, not per parameter)."""
        parts = torch.cat([closed_probability(gate.mu) for gate in self.gates])
        return parts.mean()

    @torch.no_grad()
    def scale_share(self) -> float:
        """Σ cost · (1 − eval gate value) / block params: a gate half-way to closed counts half (in-flight gates
        are seen), and it equals the hard share once every gate is 0 or 1."""
        total = sum(float(((1 - gate.eval_values().cpu()) * cost).sum()) for gate, cost in zip(self.gates, self.costs))
        return total / self.block_params

    @torch.no_grad()
    def hard_removed(self) -> int:
        """Block parameters whose gates are exactly closed now (what the compiler removes)."""
        return int(sum(float(cost[gate.eval_values().cpu() == 0].sum())
                       for gate, cost in zip(self.gates, self.costs)))

    def hard_share(self) -> float:
        return self.hard_removed() / self.block_params


def gate_costs(model: nn.Module) -> GateCosts:
    """The cost of every structured gate of a gated model (structured granularity; architecture table)."""
    spec = spec_for(model)
    layout = head_layout(model.config, spec)
    group = layout.num_heads // layout.num_kv_heads
    hd = layout.head_dim
    gates, costs, block_params = [], [], 0
    for block in layers_of(model, spec):
        block_params += _base_param_count(block)
        o = block.get_submodule(spec.o)
        if isinstance(o, GatedLinear) and o.group_gate is not None:
            hidden_out = o.out_features
            if spec.qkv:
                qkv = block.get_submodule(spec.qkv)
                q_in, b = in_out_features(_plain(qkv))[0], _has_bias(qkv)
                q_rows = k_rows = v_rows = hd * (q_in + b)
            else:
                rows = []
                for path in (spec.q, spec.k, spec.v):
                    layer = block.get_submodule(path)
                    rows.append(hd * (in_out_features(_plain(layer))[0] + _has_bias(layer)))
                q_rows, k_rows, v_rows = rows
            for path in spec.head_extra:   # DeBERTa's pos projections lose the head's rows too
                if has_submodule(block, path):
                    layer = block.get_submodule(path)
                    q_rows += hd * (in_out_features(_plain(layer))[0] + _has_bias(layer))
            per_head = 0.0 if spec.heads_fixed else hidden_out * hd + q_rows + (k_rows + v_rows) / group
            gates.append(o.group_gate)
            costs.append(torch.full((o.group_gate.logits.numel(),), float(per_head)))
        down = block.get_submodule(spec.ffn_out)
        if isinstance(down, GatedLinear) and down.group_gate is not None:
            per_channel = down.out_features
            halves = 2 if spec.ffn_fused else 1   # a fused GLU input loses one row in each half
            for path in spec.ffn_in:
                layer = block.get_submodule(path)
                per_channel += halves * (in_out_features(_plain(layer))[0] + _has_bias(layer))
            gates.append(down.group_gate)
            costs.append(torch.full((down.group_gate.logits.numel(),), float(per_channel)))
    if not gates:
        raise ConfigError("parameter-weighted sparsity needs structured gates (granularity 'structured'); "
                          "this model has none — use the gate-count sparsity term (sparsity_unit 'gates')")
    return GateCosts(gates=gates, costs=costs, block_params=block_params)


class LagrangianController:
    """Holds the share of block parameters removed at a (ramped) target t, as CoFi / Sheared-LLaMA do:

        L = λ1·(m − t) + λ2·(m − t)²,   λ1 += lr·(m − t),  λ2 += lr·(m − t)²   (gradient ascent)

    m is the faithful measure `GateCosts.scale_share` (a gate half-way to closed counts half, so gates on their
    way are seen, and m equals what the compiler removes once gates are 0 or 1); it has no gradient where gates
    sit in the clamp, so the descent step uses the smooth surrogate ŝ (`GateCosts.soft_share`) with the
    multiplier the Lagrangian gives at m: term = (λ1 + 2·λ2·(m − t))·ŝ. λ1 goes negative while m < t (pushing
    gates closed) and λ2 ≥ 0 grows with the squared error; the pair adapts to the scale of the task gradient, so
    no λ is tuned per task.

    Anti-windup: closing a gate is close to irreversible (a gate below the clamp gets no task gradient) and gates
    need tens of steps to travel, so a multiplier integrated during that delay would keep pushing after the
    target is reached. Once the compiler would already remove the ramped target (`met`), λ1 stops pushing
    towards closing (λ1 ≥ 0).
    """

    def __init__(self, lr: float):
        self.lr = float(lr)
        self.lambda1 = 0.0
        self.lambda2 = 0.0

    def multiplier(self, measured: float, target: float) -> float:
        """∂L/∂m at m = measured: the weight of the surrogate share in this step's loss."""
        return self.lambda1 + 2.0 * self.lambda2 * (measured - target)

    def term(self, surrogate: torch.Tensor, measured: float, target: float) -> torch.Tensor:
        return self.multiplier(measured, target) * surrogate

    def update(self, measured: float, target: float, met: bool = False) -> None:
        gap = measured - target
        self.lambda1 += self.lr * gap
        self.lambda2 += self.lr * gap * gap
        if met:
            self.lambda1 = max(self.lambda1, 0.0)

    def state(self) -> dict:
        return {"lambda1": self.lambda1, "lambda2": self.lambda2}


#: Logit that a snapped gate gets: tanh(−1) = −0.76 < −0.5, so its eval value is exactly 0.
CLOSED_LOGIT = -1.0


@torch.no_grad()
def snap_to_target_(costs: GateCosts, target: float) -> dict:
    """Close the open gates with the lowest μ until the hard share of removed block parameters is ≥ target.

    Gates already closed stay closed; open ones are closed in order of their learned μ (the least useful
    first, as the task gradient against the sparsity pressure ranked them). Returns what was done.
    """
    before = costs.hard_removed()
    need = target * costs.block_params - before
    closed_now = 0
    if need > 0:
        entries = []
        for gi, (gate, cost) in enumerate(zip(costs.gates, costs.costs)):
            mu = gate.mu.detach().cpu()
            open_idx = torch.nonzero(gate.eval_values().cpu() > 0).flatten()
            entries += [(float(mu[j]), gi, int(j), float(cost[j])) for j in open_idx]
        entries.sort()
        chosen: dict[int, list[int]] = {}
        for _, gi, j, cost in entries:
            if need <= 0:
                break
            chosen.setdefault(gi, []).append(j)
            need -= cost
            closed_now += 1
        for gi, idx in chosen.items():
            costs.gates[gi].logits[torch.tensor(idx, device=costs.gates[gi].logits.device)] = CLOSED_LOGIT
    after = costs.hard_removed()
    info = {"target": target, "share_before": before / costs.block_params, "share_after": after / costs.block_params,
            "gates_closed_by_snap": closed_now}
    log.info("mask frozen: closed %d more gate(s); removed block parameters %.1f%% -> %.1f%% (target %.1f%%)",
             closed_now, 100 * info["share_before"], 100 * info["share_after"], 100 * target)
    return info




def sparsity_lambda_at(step: int, gate_config: GateConfig, warmup_steps: int) -> float:
    """λ at optimiser step `step` (0-based): linear warm-up over `warmup_steps`, then constant."""
    if warmup_steps <= 0:
        return gate_config.sparsity_lambda
    return gate_config.sparsity_lambda * min(1.0, (step + 1) / warmup_steps)


class SparsityTerm:
    """The sparsity term of a run: unit (params / gates), control (Lagrangian / penalty), ramped target."""

    def __init__(self, model: nn.Module, gate_config: GateConfig, args: TrainArgs, total: int):
        self.model, self.gate_config, self.args = model, gate_config, args
        self.unit = args.resolved_unit(gate_config.granularity)
        self.costs = gate_costs(model) if self.unit == "params" else None
        self.controller = LagrangianController(args.controller_lr) if args.sparsity_control == "lagrangian" else None
        self.target = gate_config.target_sparsity
        self.ramp = args.warmup_steps(total)

    def target_at(self, step: int) -> float:
        """The ramped target (Lagrangian) at 0-based step `step`."""
        if self.ramp <= 0:
            return self.target
        return self.target * min(1.0, (step + 1) / self.ramp)

    def soft_share(self) -> torch.Tensor:
        """Differentiable share (the surrogate the gradient flows through)."""
        if self.costs is not None:
            if self.args.sparsity_pressure == "uniform":
                return self.costs.soft_gate_share()
            return self.costs.soft_share()
        gates = [gate for g in gated_modules(self.model).values() for gate in g.gates()]
        return torch.cat([closed_probability(gate.mu) for gate in gates]).mean()

    @torch.no_grad()
    def scale_share(self) -> float:
        """The share the controller sees (1 − eval gate value, weighted; see fg_edge.train.sparsity)."""
        if self.costs is not None:
            return self.costs.scale_share()
        gates = [gate for g in gated_modules(self.model).values() for gate in g.gates()]
        return float(torch.cat([1 - gate.eval_values() for gate in gates]).mean())

    def term(self, step: int) -> tuple[torch.Tensor, float]:
        """(loss term, the controlled error or the penalty value) for this step."""
        if self.controller is not None:
            target = self.target_at(step)
            measured = self.scale_share()
            self._last = (measured, target)
            return self.controller.term(self.soft_share(), measured, target), measured - target
        lam = sparsity_lambda_at(step, self.gate_config, self.ramp)
        if self.unit == "params":
            sp = torch.abs(self.soft_share() - self.target)
        else:
            sp = sparsity_loss(self.model, self.gate_config)
        return lam * sp, float(sp.detach())

    def after_step(self) -> None:
        if self.controller is not None:
            _, target = self._last   # the step's target; the share is read again after the optimiser step
            self.controller.update(self.scale_share(), target, met=self.measured() >= target)

    def measured(self) -> float:
        """The controlled quantity now: share of block parameters removed (params) or expected gate sparsity."""
        return self.costs.hard_share() if self.costs is not None else expected_sparsity(self.model)


__all__ = ["GateCosts", "gate_costs", "closed_probability", "LagrangianController", "snap_to_target_", "SparsityTerm", "sparsity_lambda_at",
           "CLOSED_LOGIT"]
