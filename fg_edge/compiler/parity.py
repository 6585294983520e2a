"""Parity: the compiled model must compute what the gated model computes (docs/DESIGN.md §3), or nothing is written.

Checked on a batch of sequences of different lengths with padding (right padding for encoders, left padding for
decoders as in generation): logits and last hidden states over the valid (non-pad) positions, and for models
that generate, `decoder_steps` steps of cached greedy generation (after the prefill: decoder_steps + 1 tokens
generated, the steps the ONNX gate runs) that must give identical tokens.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from fg_edge.compiler.inputs import padded_batch
from fg_edge.formats.parity import PARITY_DECODER_STEPS, TORCH_PARITY_LENGTHS, TORCH_PARITY_TOL
from fg_edge.errors import ParityError

log = logging.getLogger(__name__)



def scaled_tolerance(tol: float, reference_max_abs: float) -> float:
    """The parity rule: |compiled − gated| ≤ tol · max(1, max|gated|).

    Folding the gates into the weights and dropping rows changes the order of float32 sums; on a real model
    whose logits reach ~30 (SmolLM2-135M) that alone moves logits by ~1e-4 (folding with nothing removed gives
    1.4e-4 there), so an absolute bound would fail exact compiles. Outputs of magnitude ≤ 1 keep the absolute
    bound; a structural mistake (a wrong head or channel) is orders of magnitude above either.
    """
    return float(tol) * max(1.0, float(reference_max_abs))


def _ref_scale(ref: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    r = ref.float().abs()
    if mask is not None and r.dim() >= 3 and r.shape[:2] == mask.shape:
        r = r[mask.bool()]
    r = r[torch.isfinite(r)]
    return float(r.max()) if r.numel() else 0.0


@contextlib.contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def _abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a − b|, 0 where both are equal (also ±inf), inf where either is NaN (NaN must never pass)."""
    a, b = a.float(), b.float()
    diff = torch.where(a == b, torch.zeros_like(a), (a - b).abs())
    return torch.nan_to_num(diff, nan=float("inf"))


def _masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, what: str, tol: float) -> float:
    """Max |a − b| over valid positions of (B, S, D) tensors, everywhere for pooled (B, D) outputs."""
    if a.shape != b.shape:
        raise ParityError(what, float("inf"), tol, detail=f"shapes differ: gated {tuple(a.shape)}, compiled "
                                                          f"{tuple(b.shape)}")
    diff = _abs_diff(a, b)
    if diff.dim() >= 3 and diff.shape[:2] == mask.shape:
        diff = diff[mask.bool()]
    return float(diff.max()) if diff.numel() else 0.0


def _forward(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, position_ids: Optional[torch.Tensor] = None):
    extra = {} if position_ids is None else {"position_ids": position_ids}
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **extra)
    return out.logits, out.hidden_states[-1]


def _takes_position_ids(model: nn.Module) -> bool:
    import inspect

    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def left_padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch as generation uses them: 0 at each row's first real token (pads 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _generates(model: nn.Module) -> bool:
    return bool(getattr(model, "can_generate", lambda: False)())


def _greedy(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, steps: int):
    """`steps` cached greedy steps after the prefill: steps + 1 tokens, and the raw logits that chose each."""
    pad = model.config.pad_token_id
    if pad is None:
        eos = model.config.eos_token_id
        pad = (eos[0] if isinstance(eos, (list, tuple)) else eos) if eos is not None else 0
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps + 1, min_new_tokens=steps + 1,
                         do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad,
                         return_dict_in_generate=True, output_logits=True)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, dim=1)


def _check_generation(reference: dict, compiled: nn.Module, ids, mask, steps: int, tol: float) -> float:
    ref_tokens, ref_logits = reference["tokens"], reference["step_logits"]
    tokens, logits = _greedy(compiled, ids, mask, steps)
    n = min(ref_logits.shape[1], logits.shape[1])
    diff = float(_abs_diff(ref_logits[:, :n], logits[:, :n]).max()) if n else 0.0
    tol = scaled_tolerance(tol, _ref_scale(ref_logits))
    if tokens.shape != ref_tokens.shape or not torch.equal(tokens, ref_tokens):
        where = "lengths differ" if tokens.shape != ref_tokens.shape else (
            "first differing token at (sequence, step) "
            f"{tuple(torch.nonzero(tokens != ref_tokens)[0].tolist())}")
        raise ParityError(f"cached greedy generation ({steps} steps)", diff, tol, detail=where)
    if diff > tol:
        raise ParityError(f"cached greedy generation step logits ({steps} steps)", diff, tol,
                          detail="tokens identical")
    return diff


def gated_reference(gated_model: nn.Module, *, decoder_steps: int = PARITY_DECODER_STEPS,
                    lengths: Sequence[int] = TORCH_PARITY_LENGTHS, seed: int = 0) -> dict:
    """The gated model's side of `check_parity` (inputs, logits, hidden states, greedy tokens and step logits),
    so the gated model may be changed (compiled in place) before the comparison."""
    decoder = _generates(gated_model) and decoder_steps > 0
    ids, mask = padded_batch(gated_model.config.vocab_size, lengths=tuple(lengths), seed=seed, left=decoder)
    ids, mask = ids.to(_device(gated_model)), mask.to(_device(gated_model))
    # decoders: the prefill gets generation's position ids (each left-padded row starts at 0), as the ONNX graph
    # is fed them, so this reference also serves the ONNX parity gate (onnx_parity.ParityReference.from_torch)
    pos = left_padded_positions(mask) if decoder and _takes_position_ids(gated_model) else None
    ref = {"ids": ids, "mask": mask, "position_ids": pos, "lengths": list(lengths), "decoder": decoder,
           "decoder_steps": decoder_steps, "seed": seed}
    with _eval_mode(gated_model):
        ref["logits"], ref["hidden"] = _forward(gated_model, ids, mask, pos)
        if decoder:
            ref["tokens"], ref["step_logits"] = _greedy(gated_model, ids, mask, decoder_steps)
    return ref


def check_parity_against(reference: dict, compiled_model: nn.Module, *, tol: float = TORCH_PARITY_TOL) -> dict:
    """Compare `compiled_model` to a `gated_reference`; raise ParityError beyond `tol`, else return figures."""
    ids, mask, lengths = reference["ids"], reference["mask"], reference["lengths"]
    decoder, decoder_steps = reference["decoder"], reference["decoder_steps"]
    ref_logits, ref_hidden = reference["logits"], reference["hidden"]
    pos = reference.get("position_ids")
    with _eval_mode(compiled_model):
        dev = _device(compiled_model)
        logits, hidden = _forward(compiled_model, ids.to(dev), mask.to(dev), None if pos is None else pos.to(dev))
        logit_diff = _masked_max_diff(ref_logits, logits.to(ref_logits.device), mask, "logits", tol)
        hidden_diff = _masked_max_diff(ref_hidden, hidden.to(ref_hidden.device), mask, "last hidden states", tol)
        detail = f"batch of {len(lengths)} padded sequences, lengths {tuple(lengths)}"
        logit_tol = scaled_tolerance(tol, _ref_scale(ref_logits, mask))
        hidden_tol = scaled_tolerance(tol, _ref_scale(ref_hidden, mask))
        if logit_diff > logit_tol:
            raise ParityError("logits", logit_diff, logit_tol, detail=detail + ", tolerance = tol·max(1, max|logit|)")
        if hidden_diff > hidden_tol:
            raise ParityError("last hidden states", hidden_diff, hidden_tol,
                              detail=detail + ", tolerance = tol·max(1, max|hidden|)")
        gen_diff = (_check_generation(reference, compiled_model, ids.to(_device(compiled_model)),
                                      mask.to(_device(compiled_model)), decoder_steps, tol) if decoder else None)
    figures = {"tolerance": tol, "tolerance_rule": "max abs diff <= tolerance * max(1, max|gated output|)",
               "logits_tolerance": logit_tol, "hidden_tolerance": hidden_tol, "lengths": list(lengths), "padding": "left" if decoder else "right",
               "logits_max_abs_diff": logit_diff, "hidden_max_abs_diff": hidden_diff,
               "max_abs_diff": max(logit_diff, hidden_diff, gen_diff or 0.0),
               "decoder_steps": decoder_steps if decoder else 0,
               "generated_tokens": decoder_steps + 1 if decoder else 0, "generation_max_abs_diff": gen_diff,
               "tokens_identical": True if decoder else None}
    log.info("parity ok: logits %.2e, hidden %.2e%s (tolerance %.0e)", logit_diff, hidden_diff,
             f", {decoder_steps} greedy steps identical" if decoder else "", tol)
    return figures


def check_parity(gated_model: nn.Module, compiled_model: nn.Module, *, tol: float = TORCH_PARITY_TOL,
                 decoder_steps: int = PARITY_DECODER_STEPS, lengths: Sequence[int] = TORCH_PARITY_LENGTHS,
                 seed: int = 0) -> dict:
    """Compare `compiled_model` to `gated_model` (eval gates); raise ParityError beyond `tol`, else return figures."""
    decoder_steps = decoder_steps if _generates(compiled_model) else 0
    reference = gated_reference(gated_model, decoder_steps=decoder_steps, lengths=lengths, seed=seed)
    return check_parity_against(reference, compiled_model, tol=tol)
