"""Put gates on a loaded HF model, take them off, and read / write their state.

Gate tensor names (the `fg_edge_gates.safetensors` file of a model_dir) are
``<module>.<kind>`` where ``<module>`` is the dotted name of the gated linear in the *plain* HF model
(e.g. ``bert.encoder.layer.0.attention.output.dense``) and ``<kind>`` is one of

* ``row_logits``   (out,)            θ of the row gates
* ``col_logits``   (in,)             θ of the column gates
* ``group_logits`` (in / group,)     θ of the structured gates (heads on the attention output projection,
                                      channels on the FFN output projection); ``group_size`` is in the gate config
* ``lora_A`` (rank, in), ``lora_B`` (out, rank)   the optional adapter, merged as W + (α/rank)·B·A
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn

from fg_edge.arch import head_layout, layers_of, layers_prefix, spec_for
from fg_edge.formats.gate_config import GateConfig
from fg_edge.errors import ConfigError, GateStateError
from fg_edge.gates.math import sparsity_term
from fg_edge.gates.layer import GatedLinear, replace_module

log = logging.getLogger(__name__)

_KINDS = {"row_logits": "row_gate", "col_logits": "col_gate", "group_logits": "group_gate"}


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def plan_targets(model: nn.Module, config: GateConfig) -> dict[str, dict]:
    """{module name: GatedLinear keyword arguments} for every linear the config gates."""
    model_type = getattr(model.config, "model_type", None)
    targets: dict[str, dict] = {}
    if config.target_modules is not None:
        suffixes = tuple(config.target_modules)
        for name, module in model.named_modules():
            if _is_linear(module) and (name.endswith(suffixes)):
                targets[name] = dict(row=True, col=True)
        if not targets:
            raise ConfigError(f"target_modules {list(suffixes)} matched no linear layer of this {model_type!r} model")
        return targets
    spec = spec_for(model)
    prefix = layers_prefix(model, spec)
    layout = head_layout(model.config, spec)
    for i, _ in enumerate(layers_of(model, spec)):
        block = f"{prefix}.{i}"
        if config.granularity == "paper" or config.scale_gates:
            for rel in spec.linear_names():
                targets[f"{block}.{rel}"] = dict(row=True, col=True)
        if config.granularity == "structured":
            o = targets.setdefault(f"{block}.{spec.o}", dict(row=False, col=False))
            o["group_size"] = layout.head_dim
            f = targets.setdefault(f"{block}.{spec.ffn_out}", dict(row=False, col=False))
            f["group_size"] = 1
        if config.adapter_rank > 0 and config.adapter_modules == "all":
            for rel in spec.linear_names():   # adapter only: no gates on these
                targets.setdefault(f"{block}.{rel}", dict(row=False, col=False))
    return targets


def inject_gates(model: nn.Module, config: GateConfig) -> nn.Module:
    """Wrap the target linears of `model` in place; returns the model (`config` is not changed)."""
    if gated_modules(model):
        raise ConfigError("model already carries fg-edge gates")
    targets = plan_targets(model, config)
    for name, kwargs in targets.items():
        base = model.get_submodule(name)
        gated = GatedLinear(base, adapter_rank=config.adapter_rank, adapter_alpha=config.adapter_alpha,
                            init_mean=config.init_mean, init_std=config.init_std, noise_std=config.noise_std,
                            **kwargs)
        gated.to(device=base.weight.device)
        gated.train(base.training)  # a model in eval mode must not start sampling gate noise
        replace_module(model, name, gated)
    log.info("gated %d linear layers (%s granularity)", len(targets), config.granularity)
    return model


def gated_modules(model: nn.Module) -> dict[str, GatedLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, GatedLinear)}


@contextlib.contextmanager
def unwrapped(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put the plain linears back (e.g. to `save_pretrained` the base weights)."""
    gated = gated_modules(model)
    for name, g in gated.items():
        replace_module(model, name, g.base_layer)
    try:
        yield model
    finally:
        for name, g in gated.items():
            replace_module(model, name, g)


def remove_gates(model: nn.Module) -> nn.Module:
    """Put the plain linears back for good (the gates are dropped, not folded)."""
    for name, g in gated_modules(model).items():
        replace_module(model, name, g.base_layer)
    return model


# -- state ---------------------------------------------------------------------------------------------------
def gate_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for name, g in gated_modules(model).items():
        for kind, attr in _KINDS.items():
            gate = getattr(g, attr)
            if gate is not None:
                state[f"{name}.{kind}"] = gate.logits.detach().cpu().contiguous()
        if g.lora_A is not None:
            state[f"{name}.lora_A"] = g.lora_A.detach().cpu().contiguous()
            state[f"{name}.lora_B"] = g.lora_B.detach().cpu().contiguous()
    return state


@torch.no_grad()
def load_gate_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "gate state") -> None:
    """Copy gate tensors into an injected model; refuses missing / extra names, wrong shapes, NaN / inf."""
    expected = {}
    for name, g in gated_modules(model).items():
        for kind, attr in _KINDS.items():
            gate = getattr(g, attr)
            if gate is not None:
                expected[f"{name}.{kind}"] = gate.logits
        if g.lora_A is not None:
            expected[f"{name}.lora_A"] = g.lora_A
            expected[f"{name}.lora_B"] = g.lora_B
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), first {missing[0]!r}")
        if extra:
            parts.append(f"unexpected {len(extra)} tensor(s), first {extra[0]!r}")
        raise GateStateError(f"{source}: gate tensors do not match this model ({'; '.join(parts)}); "
                             f"was the gate file written for another model or gate config?")
    for key, param in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != tuple(param.shape):
            raise GateStateError(f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                                 f"the model needs {tuple(param.shape)}")
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise GateStateError(f"{source}: tensor {key!r} holds {bad} NaN/inf value(s)")
        param.copy_(tensor.to(param.dtype))


# -- training helpers ----------------------------------------------------------------------------------------
def sparsity_loss(model: nn.Module, config: GateConfig) -> torch.Tensor:
    """Mean over gated layers of the mean over that layer's gate vectors of |mean(P) − (1 − target)|."""
    terms = []
    for g in gated_modules(model).values():
        if not g.gates():
            continue  # an adapter-only wrapper
        terms.append(sparsity_term([gate.open_probability() for gate in g.gates()], config.target_sparsity))
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


def task_head_names(model: nn.Module) -> list[str]:
    """Parameters outside the backbone (classifier / score / pooler of a fresh head) that training updates."""
    base = model.base_model
    if base is model:
        return []
    base_prefix = model.base_model_prefix + "."
    names = [n for n, _ in model.named_parameters() if not n.startswith(base_prefix)]
    # A freshly initialised pooler belongs to the task head too.
    names += [n for n, _ in model.named_parameters() if n.startswith(base_prefix + "pooler.")]
    # Tied output embeddings (causal LM heads) stay frozen: they are the input embedding.
    tied = {id(p) for n, p in base.named_parameters()}
    return [n for n in names if id(model.get_parameter(n)) not in tied or n.startswith(base_prefix + "pooler.")]
