"""What quantization costs a decoder, measured at compile time against the fp32 graph it was made from.

For every quantized decoder file against an fp32 graph (the compile measures model.int4.onnx and
baseline.int4.onnx, …, both against model.onnx: baseline.onnx computes the same function, parity-checked, so one
fp32 reference serves both), with the torch-free runtime `fg-edge run` / `eval` use (fg_edge.runtimes), on the
folder being written:

* perplexity on `--eval-data` text (or SAMPLE_TEXT, a few built-in English sentences; its first documents up to
  MAX_EVAL_TOKENS tokens), computed as `fg-edge eval`
  computes it (same windows), fp32 and quantized;
* greedy-token agreement: the fp32 graph generates `new_tokens` greedy tokens from each of PROMPTS (left-padded
  batch, no EOS stop); the quantized graph is fed the same sequences (teacher forcing) and its argmax is compared
  at every generated position — the share that agree, and the max |logit difference| there;
* free-running match: the share of new tokens the quantized graph, generating on its own, would produce before
  its first difference from the fp32 tokens (one early difference changes everything after it). Greedy
  decoding repeats the fp32 tokens exactly as long as its argmax on the fp32 prefix agrees, so this is the share
  before the first teacher-forced disagreement, read from the same pass (a cached generation computes the same
  logits up to float rounding; generating again cost ~2 s a file on SmolLM2-135M).

A file is flagged when greedy agreement < MIN_GREEDY_AGREEMENT or perplexity rises by more than
MAX_PERPLEXITY_INCREASE; `fg-edge compile` prints it in red, compile_report.json says why.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

PROMPTS = ("The quick brown fox", "Once upon a time, in a small village by the sea,",
           "The capital of France is", "Here is a short list of things to pack for a trip:")
SAMPLE_TEXT = (
    "The city library opens at nine in the morning and closes at six in the evening. On weekends it keeps shorter "
    "hours, and the reading room on the second floor is often full of students preparing for their exams.",
    "Tom planted tomatoes, beans and a row of sunflowers in the garden behind his house. By the end of the summer "
    "the sunflowers were taller than the fence, and the neighbours came by to take pictures of them.",
    "To make a simple bread, mix flour, water, salt and a little yeast, then leave the dough to rise for a few "
    "hours. Bake it in a hot oven until the crust is brown and the loaf sounds hollow when you tap it.",
    "The train was late again, so Maria called her sister to say that she would miss the beginning of the "
    "concert. She promised to bring dinner for everyone to make up for it.",
)
MIN_GREEDY_AGREEMENT = 0.90
MAX_PERPLEXITY_INCREASE = 0.10
#: perplexity is measured on the first documents of the text up to this many tokens: a ratio of two perplexities
#: on 4k tokens is stable to well under the 10 % threshold, and every graph is scored on the same text
MAX_EVAL_TOKENS = 4096


def _fp32_tokens(runner, prompts: list[list[int]], n: int):
    """(ids, mask) of prompt + n greedy tokens of the fp32 graph (left-padded), and the generated block."""
    from fg_edge.runtimes.generate import generate, left_pad

    pad = runner.cdir.pad_token_id()
    ids, mask = left_pad(prompts, pad)
    out = generate(runner.model, ids, mask, max_new_tokens=n, pad_id=pad, stop_at_eos=False)
    full_mask = np.concatenate([mask, np.ones_like(out.new_tokens)], axis=1)
    return out.sequences, full_mask, out.new_tokens


def _teacher_forced_logits(model, seq: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Logits (B, n, V) that predict the last n tokens of `seq`, from one forward over seq[:, :-1]."""
    from fg_edge.runtimes.generate import positions_from_mask

    ids, m = seq[:, :-1], mask[:, :-1]
    logits, _ = model.decoder_step(ids, m, positions_from_mask(m), model.empty_past(ids.shape[0])
                                   if model.has_cache else None)
    return logits[:, -n:].astype(np.float32)


def _free_running_match(agree: np.ndarray) -> float:
    """Mean share of each row's new tokens before its first disagreement, from teacher-forced `agree` (B, n)."""
    prefix = [int(np.argmin(row)) if not row.all() else row.size for row in agree]
    return float(np.mean(prefix) / agree.shape[1])


class _Reference:
    """The fp32 graph's side: perplexity, greedy tokens and their teacher-forced logits (computed once)."""

    def __init__(self, runner, prompts: list[list[int]], n: int, texts: Sequence[str]):
        from fg_edge.runtimes.evaluate import perplexity

        self.ppl = perplexity(runner, texts)
        self.seq, self.mask, self.new = _fp32_tokens(runner, prompts, n)
        self.logits = _teacher_forced_logits(runner.model, self.seq, self.mask, n)


def _compare(runner, ref: _Reference, texts: Sequence[str]) -> dict:
    from fg_edge.runtimes.evaluate import perplexity

    n = ref.new.shape[1]
    logits = _teacher_forced_logits(runner.model, ref.seq, ref.mask, n)
    same = logits.argmax(-1) == ref.new
    agree = float(same.mean())
    ppl = perplexity(runner, texts)
    change = ppl["value"] / ref.ppl["value"] - 1.0
    reasons = []
    if agree < MIN_GREEDY_AGREEMENT:
        reasons.append(f"greedy agreement {agree:.1%} < {MIN_GREEDY_AGREEMENT:.0%}")
    if change > MAX_PERPLEXITY_INCREASE:
        reasons.append(f"perplexity +{change:.1%} > +{MAX_PERPLEXITY_INCREASE:.0%}")
    return {"perplexity": ppl["value"], "perplexity_fp32": ref.ppl["value"], "perplexity_change": change,
            "greedy_agreement": agree, "greedy_tokens": int(ref.new.size),
            "free_running_match": _free_running_match(same),
            "max_abs_logit_diff": float(np.abs(logits - ref.logits).max()),
            "fp32_max_abs_logit": float(np.abs(ref.logits).max()),
            "flagged": bool(reasons), "flag_reasons": reasons}


def _token_capped(tokenizer, texts: Sequence[str], cap: int = MAX_EVAL_TOKENS) -> list[str]:
    """The leading documents of `texts` that fit in `cap` tokens (at least one)."""
    kept, total = [], 0
    for text, enc in zip(texts, tokenizer.encode_batch(list(texts))):
        ids = enc.ids
        if kept and total + len(ids) > cap:
            break
        kept.append(text)
        total += len(ids)
    return kept


def _prompt_ids(runner, n: int) -> tuple[list[list[int]], int]:
    prompts = [ids for ids in runner.encode(list(PROMPTS)) if ids]
    limit = runner.cdir.max_positions()
    longest = max(len(p) for p in prompts)
    if limit:
        n = max(1, min(n, limit - longest - 1))
    return prompts, n


class QualityMeter:
    """`measure_quality` one graph at a time, so the compile can hand over the sessions its parity checks opened
    (one session per file for both): `reference(fp32, session)` once per fp32 graph, then `compare(fp32, quant,
    session)` per quantized graph, then `record()`. Without a session a Runner opens its own."""

    def __init__(self, folder: Path, n_tokens: int, texts: Optional[Sequence[str]] = None,
                 source: Optional[str] = None):
        from fg_edge.formats.compiled_dir import CompiledDir

        self.folder, self.n_tokens, self.seconds = Path(folder), n_tokens, 0.0
        self.refs: dict[str, _Reference] = {}
        self.skipped = None if (self.folder / "tokenizer.json").is_file() else (
            "no tokenizer.json in the compiled folder (the runtime's fast tokenizer): prompts and text cannot be "
            "encoded")
        if self.skipped:
            return
        t0 = time.perf_counter()
        given = list(texts) if texts else list(SAMPLE_TEXT)
        self.texts = _token_capped(CompiledDir(self.folder).tokenizer(), given)
        self._record = {"method": "fg_edge.exporters.pipeline.quality (torch-free runtime, greedy, left-padded "
                                  "batch)",
                        "prompts": list(PROMPTS), "eval_text": source or "built-in sample (quality.SAMPLE_TEXT)",
                        "eval_documents": len(self.texts), "eval_documents_given": len(given),
                        "max_eval_tokens": MAX_EVAL_TOKENS,
                        "thresholds": {"min_greedy_agreement": MIN_GREEDY_AGREEMENT,
                                       "max_perplexity_increase": MAX_PERPLEXITY_INCREASE}, "files": {}}
        self.seconds += time.perf_counter() - t0

    def _runner(self, variant: str, session):
        from fg_edge.runtimes.runner import Runner

        return Runner(self.folder, model=variant, session=session)

    def reference(self, fp32: str, session=None) -> None:
        """The fp32 side (perplexity, greedy tokens, their logits) of variant `fp32`, computed once."""
        if self.skipped or fp32 in self.refs:
            return
        t0 = time.perf_counter()
        runner = self._runner(fp32, session)
        prompts, n = _prompt_ids(runner, self.n_tokens)
        self.refs[fp32] = _Reference(runner, prompts, n, self.texts)
        self._record.update(new_tokens=n, eval_tokens=self.refs[fp32].ppl["tokens"])
        self.seconds += time.perf_counter() - t0

    def compare(self, fp32: str, quant: str, session=None) -> None:
        """Quantized variant `quant` against the fp32 variant `fp32` (its reference computed first if needed)."""
        from fg_edge.formats.names import VARIANTS

        if self.skipped:
            return
        self.reference(fp32)
        t0 = time.perf_counter()
        entry = _compare(self._runner(quant, session), self.refs[fp32], self.texts)
        name = VARIANTS[quant][0] + ".onnx"
        self._record["files"][name] = {"vs": VARIANTS[fp32][0] + ".onnx", **entry}
        log.info("quality %s: perplexity %.3f vs %.3f fp32 (%+.1f%%), greedy agreement %.1f%% over %d tokens%s",
                 name, entry["perplexity"], entry["perplexity_fp32"], 100 * entry["perplexity_change"],
                 100 * entry["greedy_agreement"], entry["greedy_tokens"],
                 "; FLAGGED: " + ", ".join(entry["flag_reasons"]) if entry["flagged"] else "")
        self.seconds += time.perf_counter() - t0

    def record(self) -> dict:
        """The record for the report (`seconds`: the time spent measuring, sessions opened by others aside)."""
        if self.skipped:
            return {"skipped": self.skipped}
        return {**self._record, "seconds": round(self.seconds, 3)}


def measure_quality(folder: Path, pairs: Sequence[tuple[str, str]], n_tokens: int,
                    texts: Optional[Sequence[str]] = None, source: Optional[str] = None) -> dict:
    """Quality of each quantized graph against its fp32 source, `pairs` = [(fp32 variant, quantized variant)]
    in the (partly written) compiled folder `folder`; see the module docstring. The record for the report."""
    meter = QualityMeter(folder, n_tokens, texts, source)
    for fp32, quant in pairs:
        meter.compare(fp32, quant)
    return meter.record()
