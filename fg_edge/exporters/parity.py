"""The parity gate: an exported graph run by ONNX Runtime (CPU) against the *gated* torch model.

* encoders / classifiers: batch of 3 sequences of different lengths, right-padded; outputs compared on the
  real (non-pad) positions.
* causal LMs: batch of 3 left-padded prompts, prefill (past length 0) then `steps` cached greedy steps with
  the graph's own per-layer present tensors fed back. Both sides are fed torch's greedy token each step, so the
  logits stay comparable; the graph's greedy token must equal torch's at every step (an exact tie — a torch
  margin between the two tokens within the tolerance — is counted, not failed).

`check_onnx_parity(..., raise_on_fail=True)` raises fg_edge.errors.ParityError (with the numbers) when the
max abs difference exceeds `tol` or a greedy token differs; int8 graphs are measured with raise_on_fail=False.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..compiler.parity import scaled_tolerance
from ..errors import ParityError

log = logging.getLogger(__name__)

DEFAULT_TOL = 1e-4
DEFAULT_STEPS = 32
ENCODER_LENGTHS = (11, 6, 3)
DECODER_LENGTHS = (7, 4, 2)


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run torch with `n` intra-op threads: torch's OpenMP pool and ORT's pool alternate in the parity loop
    and, with both spinning on few cores, a tiny forward can take 100x longer."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def make_session(path: str | Path, threads: Optional[int] = None, optimization: str = "all"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # no busy-waiting ORT threads: the parity loop alternates ORT and torch, spinning threads starve torch
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _input_names(session) -> list[str]:
    return [i.name for i in session.get_inputs()]


def _kv_shapes(session) -> list[tuple[int, int]]:
    """(kv_heads, head_dim) per layer from the graph's declared past inputs."""
    shapes = []
    for inp in session.get_inputs():
        if inp.name.startswith("past_key_values.") and inp.name.endswith(".key"):
            shapes.append((int(inp.shape[1]), int(inp.shape[3])))
    return shapes


@torch.no_grad()
def _encoder_parity(model: nn.Module, session, vocab: int, seed: int) -> tuple[float, dict]:
    from ..testing import padded_batch

    ids, mask = padded_batch(vocab, lengths=ENCODER_LENGTHS, seed=seed)
    names = _input_names(session)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    kwargs = dict(input_ids=ids, attention_mask=mask)
    if "token_type_ids" in names:
        tt = torch.zeros_like(ids)
        tt[:, ids.shape[1] // 2:] = 1
        tt *= mask
        feeds["token_type_ids"] = tt.numpy()
        kwargs["token_type_ids"] = tt
    out_name = session.get_outputs()[0].name
    got = session.run([out_name], feeds)[0]
    ref = getattr(model(**kwargs, return_dict=True), out_name).float().numpy()
    diff = np.abs(got.astype(np.float32) - ref)
    scale = np.abs(ref)
    if diff.ndim == 3:  # per-token outputs: only real positions count
        diff = diff * mask.numpy()[..., None]
        scale = scale * mask.numpy()[..., None]
    detail = {"batch": len(ENCODER_LENGTHS), "lengths": list(ENCODER_LENGTHS), "output": out_name,
              "reference_max_abs": float(scale.max())}
    if out_name == "logits" and ref.ndim == 2:
        detail["argmax_agreement"] = float((got.argmax(-1) == ref.argmax(-1)).mean())
    return float(diff.max()), detail


@torch.no_grad()
def _decoder_parity(model: nn.Module, session, vocab: int, steps: int, tol: float, seed: int) -> tuple[float, dict]:
    from ..testing import padded_batch

    kv_shapes = _kv_shapes(session)
    ids, mask = padded_batch(vocab, lengths=DECODER_LENGTHS, seed=seed, left=True)
    batch = ids.shape[0]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
    for i, (kv, hd) in enumerate(kv_shapes):
        feeds[f"past_key_values.{i}.key"] = np.zeros((batch, kv, 0, hd), np.float32)
        feeds[f"past_key_values.{i}.value"] = np.zeros((batch, kv, 0, hd), np.float32)
    outs = session.run(None, feeds)
    ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, return_dict=True)
    valid = mask.numpy()[..., None]
    max_diff = float((np.abs(outs[0] - ref.logits.float().numpy()) * valid).max())
    ref_max = float((np.abs(ref.logits.float().numpy()) * valid).max())
    cache = ref.past_key_values
    t_logits, o_logits = ref.logits[:, -1].float(), outs[0][:, -1]
    mismatches, ties, first_mismatch, agree = 0, 0, None, 0
    for step in range(steps + 1):
        tok = t_logits.argmax(-1)
        o_tok = torch.from_numpy(o_logits.argmax(-1))
        for b in range(batch):
            if int(tok[b]) == int(o_tok[b]):
                agree += 1
                continue
            margin = float(t_logits[b, tok[b]] - t_logits[b, o_tok[b]])
            if margin <= scaled_tolerance(tol, float(t_logits.abs().max())):
                ties += 1
            else:
                mismatches += 1
                if first_mismatch is None:
                    first_mismatch = dict(step=step, row=b, torch_token=int(tok[b]), onnx_token=int(o_tok[b]),
                                          torch_margin=margin)
        if step == steps:
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype)], dim=1)
        pos = mask.sum(-1, keepdim=True) - 1
        r = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                  use_cache=True, return_dict=True)
        cache = r.past_key_values
        feeds = {"input_ids": tok[:, None].numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
        for i in range(len(kv_shapes)):
            feeds[f"past_key_values.{i}.key"] = outs[1 + 2 * i]
            feeds[f"past_key_values.{i}.value"] = outs[2 + 2 * i]
        outs = session.run(None, feeds)
        t_logits, o_logits = r.logits[:, -1].float(), outs[0][:, -1]
        max_diff = max(max_diff, float(np.abs(o_logits - t_logits.numpy()).max()))
        ref_max = max(ref_max, float(t_logits.abs().max()))
    total = batch * (steps + 1)
    detail = {"batch": batch, "prompt_lengths": list(DECODER_LENGTHS), "padding": "left", "steps": steps,
              "kv_shapes": [list(s) for s in kv_shapes], "greedy_tokens": total,
              "token_agreement": agree / total, "token_mismatches": mismatches, "token_ties": ties,
              "first_mismatch": first_mismatch, "reference_max_abs": ref_max}
    return max_diff, detail


def check_onnx_parity(gated_model: nn.Module, onnx_path: str | Path, *, kind: str, tol: float = DEFAULT_TOL,
                      steps: int = DEFAULT_STEPS, what: Optional[str] = None, raise_on_fail: bool = True,
                      seed: int = 0) -> dict:
    """Compare `onnx_path` (ORT CPU) with the gated torch model; returns the figures (and raises on failure)."""
    what = what or Path(onnx_path).name
    was_training = gated_model.training
    gated_model.eval()
    session = make_session(onnx_path, threads=1)
    vocab = int(getattr(gated_model.config, "vocab_size", 100) or 100)
    try:
        with torch_threads(1):
            if kind == "causal-lm":
                max_diff, detail = _decoder_parity(gated_model, session, vocab, steps, tol, seed)
            else:
                max_diff, detail = _encoder_parity(gated_model, session, vocab, seed)
    finally:
        gated_model.train(was_training)
    base_tol, tol = tol, scaled_tolerance(tol, detail["reference_max_abs"])
    passed = max_diff <= tol and not detail.get("token_mismatches")
    result = {"file": what, "reference": "gated torch model (fg_edge.load)", "runtime": "onnxruntime CPU",
              "max_abs_diff": max_diff, "tolerance": base_tol, "effective_tolerance": tol,
              "tolerance_rule": "max abs diff <= tolerance * max(1, max|gated output|)", "passed": passed, **detail}
    log.info("parity %s: max abs diff %.3e (tol %.1e)%s", what, max_diff, tol,
             "" if kind != "causal-lm" else f", greedy tokens agree {detail['token_agreement']:.1%}")
    if raise_on_fail and not passed:
        extra = ""
        if detail.get("first_mismatch"):
            m = detail["first_mismatch"]
            extra = (f"{detail['token_mismatches']} greedy token(s) differ, first at step {m['step']} row {m['row']}: "
                     f"torch {m['torch_token']} vs onnx {m['onnx_token']}; ")
        raise ParityError(f"{what} vs the gated model", max_diff, tol,
                          detail=f"{extra}batch {detail['batch']} with padding"
                                 + (f", {steps} cached steps" if kind == "causal-lm" else ""))
    return result
