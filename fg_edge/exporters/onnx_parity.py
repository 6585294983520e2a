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

from fg_edge.compiler.inputs import padded_batch
from fg_edge.compiler.parity import left_padded_positions, scaled_tolerance
from fg_edge.errors import ConfigError, ExportError, ParityError
from fg_edge.formats.parity import ONNX_DECODER_LENGTHS, ONNX_ENCODER_LENGTHS, ONNX_PARITY_TOL, PARITY_DECODER_STEPS

log = logging.getLogger(__name__)

#: ORT intra-op threads of a parity session
PARITY_THREADS = 2


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


def make_session(path: str | Path, threads: Optional[int] = None, optimization: str = "all",
                 low_memory: bool = False):
    """A CPU session from the one factory (fg_edge.runtimes.session.create_session). `low_memory` (parity
    checks): no CPU memory arena, no memory-pattern pre-allocation. ORT threads never busy-wait: the parity loop
    alternates ORT and torch, and spinning threads starve torch. `optimization`: one of GRAPH_OPT_LEVELS."""
    from fg_edge.runtimes.session import SessionSettings, create_session

    settings = SessionSettings(intra_op_threads=threads or None, graph_optimization=optimization,
                               low_memory=low_memory, spinning=False)
    return create_session(path, "cpu", settings)


def _input_names(session) -> list[str]:
    return [i.name for i in session.get_inputs()]


def _kv_shapes(session) -> list[tuple[int, int]]:
    """(kv_heads, head_dim) per layer from the graph's declared past inputs."""
    shapes = []
    for inp in session.get_inputs():
        if inp.name.startswith("past_key_values.") and inp.name.endswith(".key"):
            shapes.append((int(inp.shape[1]), int(inp.shape[3])))
    return shapes


class ParityReference:
    """The gated torch model's side of the parity gate, computed once and reused for every graph checked against
    it (model.onnx, baseline.onnx, their int8 / QDQ versions): ORT is fed torch's own greedy tokens, so the torch
    trajectory does not depend on the graph under test.

    * encoders: the padded batch and the reference output (per token_type_ids variant, as the graph asks);
    * causal LMs: the left-padded prompts, the prefill logits, and per cached greedy step the fed token, attention
      mask, position ids and torch's last-position logits.

    Build it with `ParityReference(gated_model, kind=..., steps=..., seed=...)`; the torch forwards run on first
    use (or `.compute()`), after which the model may be freed (`.release_model()`).
    """

    def __init__(self, model: nn.Module, *, kind: str, steps: int = PARITY_DECODER_STEPS, seed: int = 0):
        self.model, self.kind, self.steps, self.seed = model, kind, steps, seed
        self.vocab = int(getattr(getattr(model, "config", None), "vocab_size", 100) or 100)
        self._encoder: dict[bool, dict] = {}
        self._decoder: Optional[dict] = None
        #: where the torch outputs come from (compile_report.json's parity_reference)
        self.origin = "the gated model's forwards (ParityReference)"

    @classmethod
    def from_torch(cls, torch_reference: dict, *, steps: int = PARITY_DECODER_STEPS) -> Optional["ParityReference"]:
        """A decoder's reference taken from the compiler's (fg_edge.compiler.parity.gated_reference), so the gated
        model's greedy trajectory is computed once for the torch and the ONNX parity gates: same prompts (lengths
        ONNX_DECODER_LENGTHS, left-padded, same seed), the prefill run with generation's position ids, and the
        cached steps of `generate` (its raw logits; its tokens are the ones fed: where the raw argmax is EOS,
        which generate's minimum length suppresses, the next best; every check compares raw argmaxes, so the
        trajectory only has to be the same for both sides). Needs steps + 1 generated
        tokens. None when that reference cannot serve (an encoder, other prompts, no position ids, too few
        steps): the caller computes one from the model."""
        ref = torch_reference
        tokens = ref.get("tokens")
        if (not ref.get("decoder") or ref.get("position_ids") is None or tokens is None
                or tuple(ref["lengths"]) != tuple(ONNX_DECODER_LENGTHS) or tokens.shape[1] < steps + 1):
            return None
        self = cls(None, kind="causal-lm", steps=steps, seed=ref.get("seed", 0))
        mask = ref["mask"].cpu()
        batch = int(mask.shape[0])
        prefill = {"input_ids": ref["ids"].cpu().numpy(), "attention_mask": mask.numpy(),
                   "position_ids": ref["position_ids"].cpu().numpy(),
                   "logits": ref["logits"].float().cpu().numpy().copy()}
        logits = ref["step_logits"].float().cpu()
        step_logits = [logits[:, k].numpy().copy() for k in range(steps + 1)]
        step_feeds = []
        for k in range(steps):
            mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype)], dim=1)
            step_feeds.append({"input_ids": tokens[:, k:k + 1].cpu().numpy(), "attention_mask": mask.numpy(),
                               "position_ids": (mask.sum(-1, keepdim=True) - 1).numpy()})
        self._decoder = {"batch": batch, "prefill": prefill, "step_feeds": step_feeds, "step_logits": step_logits}
        self.origin = "the compiler's gated_reference (generate), shared with the torch parity check"
        return self

    def release_model(self) -> None:
        """Drop the reference to the torch model (its outputs stay); later checks must not need new forwards."""
        self.model = None

    def compute(self, token_type_ids: Optional[bool] = None) -> "ParityReference":
        if self.kind == "causal-lm":
            self.decoder()
        else:
            from fg_edge.exporters.onnx_export import uses_token_type_ids

            self.encoder(uses_token_type_ids(self.model) if token_type_ids is None else token_type_ids)
        return self

    def _run(self, fn, *args):
        if self.model is None:
            raise ExportError("ParityReference: the torch model was released before this reference was computed")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch_threads(1), torch.no_grad():
                return fn(*args)
        finally:
            self.model.train(was_training)

    def encoder(self, token_type_ids: bool) -> dict:
        if token_type_ids not in self._encoder:
            self._encoder[token_type_ids] = self._run(self._encoder_reference, token_type_ids)
        return self._encoder[token_type_ids]

    def decoder(self) -> dict:
        if self._decoder is None:
            self._decoder = self._run(self._decoder_reference)
        return self._decoder

    def _encoder_reference(self, token_type_ids: bool) -> dict:
        ids, mask = padded_batch(self.vocab, lengths=ONNX_ENCODER_LENGTHS, seed=self.seed)
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        kwargs = dict(input_ids=ids, attention_mask=mask)
        if token_type_ids:
            tt = torch.zeros_like(ids)
            tt[:, ids.shape[1] // 2:] = 1
            tt *= mask
            feeds["token_type_ids"] = tt.numpy()
            kwargs["token_type_ids"] = tt
        out = self.model(**kwargs, return_dict=True)
        outputs = {name: getattr(out, name).float().numpy().copy()
                   for name in ("logits", "last_hidden_state") if getattr(out, name, None) is not None}
        return {"feeds": feeds, "mask": mask.numpy(), "outputs": outputs}

    def _decoder_reference(self) -> dict:
        model, steps = self.model, self.steps
        ids, mask = padded_batch(self.vocab, lengths=ONNX_DECODER_LENGTHS, seed=self.seed, left=True)
        batch = ids.shape[0]
        pos = left_padded_positions(mask)
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, return_dict=True)
        prefill = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy(),
                   "logits": ref.logits.float().numpy().copy()}
        cache = getattr(ref, "past_key_values", None)
        if cache is None:
            raise ExportError(f"{type(model).__name__} returns no KV cache (past_key_values) with use_cache=True: "
                              f"fg-edge exports causal LMs as one graph with a per-layer key/value cache "
                              f"(state-space / recurrent caches are not supported)")
        t_logits = ref.logits[:, -1].float()
        del ref
        step_logits, step_feeds = [t_logits.numpy().copy()], []
        for _ in range(steps):
            tok = t_logits.argmax(-1)
            mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype)], dim=1)
            pos = mask.sum(-1, keepdim=True) - 1
            r = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                      use_cache=True, return_dict=True)
            cache = r.past_key_values
            step_feeds.append({"input_ids": tok[:, None].numpy(), "attention_mask": mask.numpy(),
                               "position_ids": pos.numpy()})
            t_logits = r.logits[:, -1].float()
            step_logits.append(t_logits.numpy().copy())
        del cache
        return {"batch": batch, "prefill": prefill, "step_feeds": step_feeds, "step_logits": step_logits}


def _encoder_parity(reference: ParityReference, session) -> tuple[float, dict]:
    names = _input_names(session)
    ref_data = reference.encoder("token_type_ids" in names)
    feeds = {k: v for k, v in ref_data["feeds"].items() if k in names}
    mask = ref_data["mask"]
    out_name = session.get_outputs()[0].name
    got = session.run([out_name], feeds)[0]
    ref = ref_data["outputs"][out_name]
    diff = np.abs(got.astype(np.float32) - ref)
    scale = np.abs(ref)
    if diff.ndim == 3:  # per-token outputs: only real positions count
        diff = diff * mask[..., None]
        scale = scale * mask[..., None]
    detail = {"batch": len(ONNX_ENCODER_LENGTHS), "lengths": list(ONNX_ENCODER_LENGTHS), "output": out_name,
              "reference_max_abs": float(scale.max())}
    if out_name == "logits" and ref.ndim == 2:
        detail["argmax_agreement"] = float((got.argmax(-1) == ref.argmax(-1)).mean())
    return float(diff.max()), detail


def _decoder_parity(reference: ParityReference, session, steps: int, tol: float) -> tuple[float, dict]:
    ref_data = reference.decoder()
    if steps > len(ref_data["step_feeds"]):
        raise ConfigError(f"the parity reference holds {len(ref_data['step_feeds'])} cached steps, {steps} asked")
    kv_shapes = _kv_shapes(session)
    pre, batch = ref_data["prefill"], ref_data["batch"]
    feeds = {k: pre[k] for k in ("input_ids", "attention_mask", "position_ids")}
    for i, (kv, hd) in enumerate(kv_shapes):
        feeds[f"past_key_values.{i}.key"] = np.zeros((batch, kv, 0, hd), np.float32)
        feeds[f"past_key_values.{i}.value"] = np.zeros((batch, kv, 0, hd), np.float32)
    outs = session.run(None, feeds)
    valid = pre["attention_mask"][..., None]
    max_diff = float((np.abs(outs[0] - pre["logits"]) * valid).max())
    ref_max = float((np.abs(pre["logits"]) * valid).max())
    o_logits = outs[0][:, -1]
    mismatches, ties, first_mismatch, agree = 0, 0, None, 0
    for step in range(steps + 1):
        t_logits = ref_data["step_logits"][step]
        if step:
            max_diff = max(max_diff, float(np.abs(o_logits - t_logits).max()))
            ref_max = max(ref_max, float(np.abs(t_logits).max()))
        tok, o_tok = t_logits.argmax(-1), o_logits.argmax(-1)
        for b in range(batch):
            if int(tok[b]) == int(o_tok[b]):
                agree += 1
                continue
            margin = float(t_logits[b, tok[b]] - t_logits[b, o_tok[b]])
            if margin <= scaled_tolerance(tol, float(np.abs(t_logits).max())):
                ties += 1
            else:
                mismatches += 1
                if first_mismatch is None:
                    first_mismatch = dict(step=step, row=b, torch_token=int(tok[b]), onnx_token=int(o_tok[b]),
                                          torch_margin=margin)
        if step == steps:
            break
        feeds = dict(ref_data["step_feeds"][step])
        for i in range(len(kv_shapes)):
            feeds[f"past_key_values.{i}.key"] = outs[1 + 2 * i]
            feeds[f"past_key_values.{i}.value"] = outs[2 + 2 * i]
        outs = session.run(None, feeds)
        o_logits = outs[0][:, -1]
    total = batch * (steps + 1)
    detail = {"batch": batch, "prompt_lengths": list(ONNX_DECODER_LENGTHS), "padding": "left", "steps": steps,
              "kv_shapes": [list(s) for s in kv_shapes], "greedy_tokens": total,
              "token_agreement": agree / total, "token_mismatches": mismatches, "token_ties": ties,
              "first_mismatch": first_mismatch, "reference_max_abs": ref_max}
    return max_diff, detail


def open_parity_session(onnx_path: str | Path):
    """The CPU session a parity check runs `onnx_path` in: no memory arena (the compile's peak), two threads (the
    torch side is computed before ORT runs, so no pools alternate; a batch-3 decode gains ~30 % from a second
    thread, SmolLM2-135M fp32: 1.4 -> 1.0 s for 33 steps, and little from more)."""
    return make_session(onnx_path, threads=PARITY_THREADS, low_memory=True)


def check_onnx_parity(gated_model: Optional[nn.Module], onnx_path: str | Path, *, kind: str,
                      tol: float = ONNX_PARITY_TOL, steps: int = PARITY_DECODER_STEPS, what: Optional[str] = None,
                      raise_on_fail: bool = True, seed: int = 0,
                      reference: Optional[ParityReference] = None, session=None) -> dict:
    """Compare `onnx_path` (ORT CPU) with the gated torch model; returns the figures (and raises on failure).

    `reference`: a ParityReference of the gated model to reuse (its torch outputs are computed once for all the
    graphs checked against it); `gated_model` may then be None. Without one, a fresh reference is computed.
    `session`: an ORT session already open on `onnx_path` (`open_parity_session`), left open for the caller.
    """
    what = what or Path(onnx_path).name
    if reference is None:
        if gated_model is None:
            raise ConfigError("check_onnx_parity needs the gated model or a ParityReference")
        reference = ParityReference(gated_model, kind=kind, steps=steps, seed=seed)
    elif reference.kind != kind or (kind == "causal-lm" and reference.steps < steps) or reference.seed != seed:
        raise ConfigError(f"the parity reference ({reference.kind}, {reference.steps} steps, seed {reference.seed}) "
                         f"does not match this check ({kind}, {steps} steps, seed {seed})")
    session = open_parity_session(onnx_path) if session is None else session
    try:
        if kind == "causal-lm":
            max_diff, detail = _decoder_parity(reference, session, steps, tol)
        else:
            max_diff, detail = _encoder_parity(reference, session)
    finally:
        del session
    base_tol, tol = tol, scaled_tolerance(tol, detail["reference_max_abs"])
    passed = max_diff <= tol and not detail.get("token_mismatches")
    # One vocabulary in compile_report.json: "check" says whether this comparison gates the compile ("gated":
    # failing aborts it, so a written entry has passed) or is measured only ("report-only": int8 / QDQ files,
    # whose rounding is expected to exceed the fp32 tolerance; no "passed" key, so no script reads a failure).
    result = {"file": what, "reference": "gated torch model (fg_edge.load)", "runtime": "onnxruntime CPU",
              "check": "gated" if raise_on_fail else "report-only", "max_abs_diff": max_diff, "tolerance": base_tol,
              "effective_tolerance": tol, "tolerance_rule": "max abs diff <= tolerance * max(1, max|gated output|)",
              "within_tolerance": passed, **({"passed": passed} if raise_on_fail else {}), **detail}
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
