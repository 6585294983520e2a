"""The compiler passes, one function each (in-place ones end in `_`), and `compile_model` that runs them:

    validate gates -> plan_removal -> merge_adapters_ -> fold_gates_ -> prune_ffn_ -> prune_heads_ -> parity

Folding is exact algebra (W' = diag(r)(W + sBA)diag(c), b' = r ⊙ b); pruning only drops rows / columns that
the plan proved to contribute exact zeros, so the compiled model computes what the gated model computes up to
float summation order.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from typing import Callable, Optional

import torch
from torch import nn

from fg_edge.arch import ArchSpec, find_spec, head_layout, layers_of, spec_for
from fg_edge.errors import CompileError, FgEdgeError, GateStateError, ParityError
from fg_edge.formats.parity import PARITY_DECODER_STEPS, TORCH_PARITY_TOL
from fg_edge.gates.inject import gate_state_dict, gated_modules
from fg_edge.compiler.plan import CompilePlan, fold_only_plan, plan_removal
from fg_edge.compiler.surgery import is_conv1d, replace_module, resize_attention_, resize_ffn_

log = logging.getLogger(__name__)


def _check_finite(name: str, tensor: Optional[torch.Tensor]) -> None:
    if tensor is not None and not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise GateStateError(f"tensor {name!r} holds {bad} NaN/inf value(s) of {tensor.numel()} after folding the "
                             f"gates; refusing to compile (check the gate file and the base weights)")


def validate_gate_values(model: nn.Module) -> None:
    """Refuse NaN / inf gate logits or adapters, naming the gate tensor (fg_edge.gates.inject naming)."""
    for name, tensor in gate_state_dict(model).items():
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise GateStateError(f"gate tensor {name!r} holds {bad} NaN/inf value(s) of {tensor.numel()}; "
                                 f"refusing to compile")


def _set_weight_out_in_(layer: nn.Module, w: torch.Tensor) -> None:
    """Write an (out, in) weight into an nn.Linear or a Conv1D (stored (in, out))."""
    layer.weight.data.copy_(w.t() if is_conv1d(layer) else w)


@torch.no_grad()
def merge_adapters_(model: nn.Module) -> int:
    """Add (α/rank)·B·A into each gated layer's base weight and drop the adapter. Returns #merged."""
    merged = 0
    for name, g in gated_modules(model).items():
        if g.lora_A is None:
            continue
        w = g.base_layer.weight
        delta = g.adapter_scale * (g.lora_B.to(torch.float32) @ g.lora_A.to(torch.float32))
        w_out_in = (w.t() if is_conv1d(g.base_layer) else w).to(torch.float32) + delta
        _check_finite(f"{name}.weight", w_out_in)
        _set_weight_out_in_(g.base_layer, w_out_in.to(w.dtype))
        g.lora_A = g.lora_B = None
        g.adapter_rank, g.adapter_scale = 0, 0.0
        merged += 1
    log.info("merged %d adapter(s)", merged)
    return merged


@torch.no_grad()
def fold_gates_(model: nn.Module) -> int:
    """Replace every GatedLinear by its plain layer holding W' = diag(r)(W+sBA)diag(c), b' = r ⊙ b."""
    gated = gated_modules(model)
    tied = _tied_parameter_ids(model)
    for name, g in gated.items():
        w, b = g.folded()
        _check_finite(f"{name}.weight", w)
        _check_finite(f"{name}.bias", b)
        base = g.base_layer
        if id(base.weight) in tied and g.gates():
            _untie_(model, name, base)
        _set_weight_out_in_(base, w)
        if b is not None:
            base.bias.data.copy_(b)
        replace_module(model, name, base)
    log.info("folded the gates of %d layer(s)", len(gated))
    return len(gated)


def _tied_parameter_ids(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def _untie_(model: nn.Module, name: str, base: nn.Module) -> None:
    """Give a gated layer whose weight is shared (an LM head tied to the input embedding) its own copy before
    the gates are folded into it: the gates act on this layer only, never on the embedding lookup."""
    base.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=base.weight.requires_grad)
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and base in (out, getattr(out, "base_layer", None)) and \
            getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False     # saved so: the reloaded model keeps the two apart
    log.info("%s shared its weight with another layer; folded into a copy of its own", name)


def _check_no_gates(model: nn.Module, what: str) -> None:
    if gated_modules(model):
        raise GateStateError(f"{what} needs folded gates; run fold_gates_ first "
                             f"({len(gated_modules(model))} gated layer(s) left)")


def prune_ffn_(model: nn.Module, plan: CompilePlan, spec: Optional[ArchSpec] = None) -> int:
    """Physically remove the plan's FFN channels (rows of the input projections, columns of the output one)."""
    _check_no_gates(model, "prune_ffn_")
    if not plan.layers:
        return 0
    spec = spec or spec_for(model)
    removed = 0
    for lp, block in zip(plan.layers, layers_of(model, spec), strict=True):
        resize_ffn_(block, spec, lp.kept_ffn, lp.ffn_size)
        removed += len(lp.ffn_removed)
    log.info("removed %d FFN channel(s)", removed)
    return removed


def prune_heads_(model: nn.Module, plan: CompilePlan, spec: Optional[ArchSpec] = None) -> int:
    """Physically remove the plan's query / kv heads and update the attention modules' head counts."""
    _check_no_gates(model, "prune_heads_")
    if not plan.layers:
        return 0
    spec = spec or spec_for(model)
    layout = head_layout(model.config, spec)
    removed = 0
    for lp, block in zip(plan.layers, layers_of(model, spec), strict=True):
        resize_attention_(block, spec, layout, lp.kept_heads, lp.kept_kv_heads)
        removed += len(lp.heads_removed)
    log.info("removed %d attention head(s)", removed)
    return removed


def compile_model(gated_model: nn.Module, *, tol: float = TORCH_PARITY_TOL, decoder_steps: int = PARITY_DECODER_STEPS,
                  check: bool = True, inplace: bool = False,
                  on_folded: Optional[Callable[[nn.Module], None]] = None,
                  reference: Optional[dict] = None) -> tuple[nn.Module, CompilePlan, dict]:
    """Fold and prune a deep copy of `gated_model`; returns (plain model, plan, report).

    With `check` (the default) the compiled model is compared to the gated one (fg_edge.compiler.parity) and a
    ParityError is raised, with the numbers, when they disagree beyond `tol`; the input model is left untouched.
    inplace: compile `gated_model` itself (no copy: half the memory); the gated model is consumed (its outputs
    for the parity check are computed first), and is unusable if this raises.

    The architecture spec is the table entry or one derived from the module tree (fg_edge.arch.spec_for). When
    none fits, the gates are folded and nothing is removed. When removal under a *derived* spec does not
    reproduce the gated model (the model runs its heads in a way the usual layout does not show), the compile is
    repeated with every head kept, then with folding only, and the report says why; a table entry that fails is
    an error.

    on_folded: called once with the model after its adapters and gates are folded and before anything is removed
    (the dense baseline, W' = diag(r)(W+sBA)diag(c)); it may re-lay the model out, but must leave it computing
    the same function with the same nn.Linear modules.

    reference: the gated model's outputs for the parity check (`gated_model_reference` of this model, computed
    by the caller, who reuses them); computed here when not given.
    """
    spec, why = find_spec(gated_model)
    if spec is None:
        log.warning("no architecture spec fits this model, so the gates are folded and nothing is removed: %s", why)
    validate_gate_values(gated_model)
    if not check:
        reference = None
    elif reference is None:
        reference = gated_model_reference(gated_model, decoder_steps)
    attempts = _attempts(spec, why)
    spare = copy.deepcopy(gated_model) if inplace and len(attempts) > 1 else None
    untouched = spare if spare is not None else gated_model
    for n, (spec, why) in enumerate(attempts):
        last = n == len(attempts) - 1
        if n == 0 and inplace:
            model = gated_model
        else:
            model = spare if last and spare is not None else copy.deepcopy(untouched)
        try:
            return _compile(model.eval(), spec, why, reference, tol, on_folded if n == 0 else None)
        except Exception as exc:  # noqa: BLE001 - a derived spec's removal may break the forward in any way
            if last or (isinstance(exc, FgEdgeError) and not isinstance(exc, ParityError)):
                raise
            attempts[n + 1] = _after_failure(attempts[n + 1], spec, exc)
    raise AssertionError("unreachable")  # pragma: no cover


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def gated_model_reference(gated_model: nn.Module, decoder_steps: int = PARITY_DECODER_STEPS) -> dict:
    """The gated model's outputs for the parity gate (fg_edge.compiler.parity.gated_reference); a model that does
    not run on them is a CompileError."""
    from fg_edge.compiler.parity import gated_reference

    try:
        return gated_reference(gated_model, decoder_steps=decoder_steps if _generates(gated_model) else 0)
    except FgEdgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any library error: the gated model itself does not run
        raise CompileError(f"the gated {type(gated_model).__name__} does not run on the parity inputs (a padded "
                           f"batch of input_ids + attention_mask): {_first_line(exc)}") from exc


def _attempts(spec: Optional[ArchSpec], why: Optional[str]) -> list[tuple[Optional[ArchSpec], Optional[str]]]:
    """What to compile with, in order: the spec; for a derived spec that fails, the same with every head kept,
    then folding only."""
    if spec is None or spec.source != "derived":
        return [(spec, why)]
    attempts = [(spec, None)]
    widths = [a for a, k in zip(spec.head_attrs, spec.head_attr_kinds) if k == "width"]
    if widths and not spec.heads_fixed:   # "embed_dim" may be the model width, not heads · head_dim (Longformer)
        kept = [(a, k) for a, k in zip(spec.head_attrs, spec.head_attr_kinds) if k != "width"]
        attempts.append((replace(spec, head_attrs=tuple(a for a, _ in kept),
                                 head_attr_kinds=tuple(k for _, k in kept)), None))
    if not spec.heads_fixed:
        attempts.append((replace(spec, heads_fixed="removing heads under the derived spec failed"), None))
    attempts.append((None, None))
    return attempts


def _after_failure(attempt: tuple, failed: ArchSpec, exc: Exception) -> tuple:
    what = "head removal" if not failed.heads_fixed else "FFN channel removal"
    why = (f"{what} with the derived spec ({failed.describe()}, head attributes "
           f"{dict(zip(failed.head_attrs, failed.head_attr_kinds))}) does not reproduce the gated model "
           f"({_first_line(exc)})")
    nxt, _ = attempt
    if nxt is not None and not nxt.heads_fixed:
        log.warning("%s; compiling again with head attributes %s", why, list(nxt.head_attrs))
        return nxt, why
    log.warning("%s; compiling again %s", why, "with every head kept" if nxt is not None else
                "with the gates folded and nothing removed")
    return (replace(nxt, heads_fixed=why) if nxt is not None else None, why)


def _compile(model: nn.Module, spec: Optional[ArchSpec], why: Optional[str], reference: Optional[dict],
             tol: float, on_folded: Optional[Callable[[nn.Module], None]] = None
             ) -> tuple[nn.Module, CompilePlan, dict]:
    """The passes on `model` (gated, consumed): plan, fold, prune, report, and parity against `reference`."""
    from fg_edge.compiler.parity import check_parity_against
    from fg_edge.compiler.report import build_report, gate_zero_counts, measure_blocks, module_treatments

    plan = plan_removal(model, spec) if spec else fold_only_plan(getattr(model.config, "model_type", None), why)
    zeros = gate_zero_counts(model, spec, plan)
    modules = module_treatments(model, spec, plan)
    merge_adapters_(model)
    fold_gates_(model)
    before = measure_blocks(model, spec, plan, after=False)
    if on_folded is not None:
        on_folded(model)
    prune_ffn_(model, plan, spec)
    prune_heads_(model, plan, spec)
    after = measure_blocks(model, spec, plan, after=True)
    report = build_report(model, spec, plan, before, after, zeros)
    report["modules"] = modules
    if reference is not None:
        report["parity"] = check_parity_against(reference, model, tol=tol)
    return model, plan, report


def _generates(model: nn.Module) -> bool:
    return bool(getattr(model, "can_generate", lambda: False)())
