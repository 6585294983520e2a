"""Every count fg-edge reports about a gated model, and the one rule of what training updates.

`trainable_parts` is that rule; `mark_trainable_` applies it (and returns what it marked), `fg-edge inspect`
counts it without touching `requires_grad`, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from fg_edge.formats.gate_config import GateConfig
from fg_edge.gates.inject import gated_modules, task_head_names

#: The parts training may update, in the order they are reported.
PARTS = ("gates", "adapters", "gated biases", "task head", "norms", "block weights")


def is_norm(module: nn.Module) -> bool:
    """LayerNorm / RMSNorm modules (any HF spelling)."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def gate_param_ids(model: nn.Module) -> set[int]:
    return {id(gate.logits) for g in gated_modules(model).values() for gate in g.gates()}


def adapter_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for g in gated_modules(model).values() for p in (g.lora_A, g.lora_B) if p is not None}


def trainable_parts(model: nn.Module, config: GateConfig, train_head: bool = True, train_norms: bool = False,
                    train_base: bool = False) -> dict[str, list[nn.Parameter]]:
    """{part: parameters} that training updates: gate logits, adapters, the gated linears' biases
    (config.train_biases), the task head of a classifier, optionally the norms and the blocks' weights.
    A parameter is listed under the first part that claims it; empty parts are left out."""
    parts: dict[str, list[nn.Parameter]] = {}
    seen: set[int] = set()

    def add(part: str, tensors) -> None:
        for p in tensors:
            if id(p) not in seen:
                seen.add(id(p))
                parts.setdefault(part, []).append(p)

    for g in gated_modules(model).values():
        add("gates", [gate.logits for gate in g.gates()])
        if g.lora_A is not None:
            add("adapters", [g.lora_A, g.lora_B])
        if config.train_biases and g.base_layer.bias is not None:
            add("gated biases", [g.base_layer.bias])
    if train_head and config.task == "classification":
        add("task head", [model.get_parameter(n) for n in task_head_names(model)])
    if train_norms:
        add("norms", [p for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)])
    if train_base:
        from fg_edge.arch import layers_of, spec_for

        add("block weights", layers_of(model, spec_for(model)).parameters())
    return {k: parts[k] for k in PARTS if k in parts}


def mark_trainable_(model: nn.Module, config: GateConfig, train_head: bool = True, train_norms: bool = False,
                    train_base: bool = False) -> dict[str, list[nn.Parameter]]:
    """Freeze everything, then unfreeze `trainable_parts`; returns them."""
    for p in model.parameters():
        p.requires_grad_(False)
    parts = trainable_parts(model, config, train_head=train_head, train_norms=train_norms, train_base=train_base)
    for params in parts.values():
        for p in params:
            p.requires_grad_(True)
    return parts


def numel(parts: dict[str, list[nn.Parameter]]) -> int:
    return sum(p.numel() for ps in parts.values() for p in ps)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, base) parameter counts; base excludes fg-edge's gate logits and adapters."""
    extra = gate_param_ids(model) | adapter_param_ids(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, base_params(model, extra)


def base_params(model: nn.Module, extra: Optional[set[int]] = None) -> int:
    """Parameters without fg-edge's gate logits and adapters."""
    extra = extra if extra is not None else gate_param_ids(model) | adapter_param_ids(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in extra)


@torch.no_grad()
def expected_sparsity(model: nn.Module) -> float:
    """1 − mean P(open), averaged per gated layer as the sparsity term does (so it meets the target there)."""
    vals = []
    for g in gated_modules(model).values():
        ps = [gate.open_probability() for gate in g.gates()]
        if not ps:
            continue  # an adapter-only wrapper
        vals.append(float(torch.stack([1 - p.mean() for p in ps]).mean()))
    return sum(vals) / len(vals) if vals else 0.0


@torch.no_grad()
def closed_gate_fraction(model: nn.Module) -> float:
    """Fraction of all gates whose eval value is exactly 0."""
    closed = total = 0
    for g in gated_modules(model).values():
        for gate in g.gates():
            v = gate.eval_values()
            closed += int((v == 0).sum())
            total += v.numel()
    return closed / total if total else 0.0


@torch.no_grad()
def closed_gate_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """Closed (eval value exactly 0) / total gates by kind: heads, FFN channels, rows, columns."""
    counts: dict[str, dict[str, int]] = {}

    def add(kind: str, values: torch.Tensor) -> None:
        c = counts.setdefault(kind, {"closed": 0, "total": 0})
        c["closed"] += int((values == 0).sum())
        c["total"] += values.numel()

    for g in gated_modules(model).values():
        if g.group_gate is not None:
            add("heads" if g.group_size > 1 else "ffn_channels", g.group_gate.eval_values())
        if g.row_gate is not None:
            add("rows", g.row_gate.eval_values())
        if g.col_gate is not None:
            add("cols", g.col_gate.eval_values())
    return counts
