"""Torch-free evaluation of a compiled_dir's models side by side: accuracy (classifiers) or perplexity (causal LMs).

Data files are read by `fg_edge.data.readers` (stdlib only): TSV (GLUE style, no quoting), CSV, JSONL with a header /
keys, or plain text for perplexity.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, Optional, Sequence

import numpy as np

from fg_edge.errors import DataError, ModelDirError
from fg_edge.formats.compiled_dir import CompiledDir
from fg_edge.formats.names import VARIANTS
from fg_edge.runtimes.runner import Runner

_INT = re.compile(r"^[+-]?\d+$")
#: every variant, dense-folded and compiled fp32 first, then each quantized pair (names.VARIANTS)
EVAL_VARIANTS = ("baseline", "compiled") + tuple(v for v in VARIANTS if v not in ("baseline", "compiled"))
#: What each row is. "baseline" is the gated model with its gates folded and nothing removed, so its outputs
#: equal "compiled" by construction (the compiler's parity gate); the cost of removal shows only against a
#: separately trained dense model, which `--reference` evaluates beside them.
VARIANT_MEANING = {
    "baseline": "dense-folded: gated model, gates folded, nothing removed (= compiled by construction)",
    "compiled": "compiled: closed heads / FFN channels physically removed",
    "int8": "compiled, int8 weights (dynamic quantization)",
    "baseline-int8": "dense-folded, int8 weights",
    "qdq": "compiled, static QDQ int8 (calibrated activations)",
    "baseline-qdq": "dense-folded, static QDQ int8",
    "int4": "compiled, 4-bit weights (weight-only MatMulNBits)",
    "baseline-int4": "dense-folded, 4-bit weights",
    "int8-wo": "compiled, 8-bit weights (weight-only MatMulNBits)",
    "baseline-int8-wo": "dense-folded, 8-bit weights",
    "nnapi": "compiled, fp32 .ort for NNAPI / CoreML (ORT basic optimisation, no contrib ops)",
    "baseline-nnapi": "dense-folded, fp32 .ort for NNAPI / CoreML",
    "qdq-nnapi": "compiled, static QDQ int8 .ort for NNAPI (ORT basic optimisation, no contrib ops)",
    "baseline-qdq-nnapi": "dense-folded, static QDQ int8 .ort for NNAPI",
    "reference": "reference model (--reference, PyTorch), e.g. the dense finetuned teacher",
}


def _integer_labels(runner: Runner, data) -> Optional[list[int]]:
    """The rows' labels as integers when they are integers: class ids, or (negative / sparse values, which the
    reader keeps as names) integers that are not the model's label names either."""
    if not data.string_labels:
        return list(data.labels)
    names = [data.id2label[lab] for lab in data.labels]
    if set(names) <= set(runner.cdir.id2label().values()) or not all(_INT.match(n) for n in names):
        return None
    return [int(n) for n in names]


def _label_ids(runner: Runner, data) -> list[int]:
    """Data labels as the model's class ids (string labels mapped through config.json label2id)."""
    ints = _integer_labels(runner, data)
    if ints is not None:
        classes = len(runner.cdir.id2label()) or runner.cdir.config.get("num_labels")
        outside = sorted({lab for lab in ints if not (0 <= lab < classes)}) if classes else []
        if outside:
            raise DataError(f"{data.source}: labels {outside[:5]} are not class ids of this model (0..{classes - 1}, "
                            f"config.json id2label); check --label-column, or label the rows with the model's names "
                            f"{sorted(runner.cdir.id2label().values())[:5]}")
        return ints
    model_ids = {name: i for i, name in runner.cdir.id2label().items()}
    out = []
    for lab in data.labels:
        name = data.id2label[lab]
        if name not in model_ids:
            raise DataError(f"{data.source}: label {name!r} is not one of the model's labels "
                            f"{sorted(model_ids)} (config.json id2label)")
        out.append(model_ids[name])
    return out


def accuracy(runner: Runner, texts: Sequence[str], labels: Sequence[int], batch_size: int = 32,
             text_pairs: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Share of rows whose argmax logit is the label, in batches of `batch_size`. `runner`: anything with
    `.logits(texts)` (a Runner), or `.logits(texts, pairs)` when `text_pairs` is given (the compile pipeline's
    classifier graphs); the one accuracy loop of fg-edge."""
    correct, t0 = 0, time.perf_counter()
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        logits = (runner.logits(batch) if text_pairs is None
                  else runner.logits(batch, text_pairs[start:start + batch_size]))
        pred = logits.argmax(axis=-1)
        correct += int((pred == np.asarray(labels[start:start + batch_size])).sum())
    n = len(texts)
    return {"metric": "accuracy", "value": correct / n if n else float("nan"), "rows": n,
            "seconds": time.perf_counter() - t0}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def perplexity(runner: Runner, texts: Sequence[str], window: Optional[int] = None) -> dict[str, Any]:
    """exp(mean NLL) over every predicted token, documents cut into windows of `window` tokens (no overlap)."""
    window = window or min(runner.max_length, 256)
    if window < 2:
        raise DataError(f"perplexity window {window} too small; it needs at least 2 tokens")
    nll, count, t0 = 0.0, 0, time.perf_counter()
    model = runner.model
    for ids in (runner.tokenizer.encode(t).ids for t in texts):
        for start in range(0, max(len(ids) - 1, 0), window - 1):
            chunk = np.asarray(ids[start:start + window], dtype=np.int64)[None]
            if chunk.shape[1] < 2:
                continue
            mask = np.ones_like(chunk)
            pos = np.arange(chunk.shape[1], dtype=np.int64)[None]
            logits, _ = model.decoder_step(chunk, mask, pos, model.empty_past(1) if model.has_cache else None)
            lp = _log_softmax(logits[0, :-1])
            tgt = chunk[0, 1:]
            nll -= float(lp[np.arange(tgt.size), tgt].sum())
            count += int(tgt.size)
    if count == 0:
        raise DataError("the evaluation text tokenises to fewer than 2 tokens; nothing to score")
    return {"metric": "perplexity", "value": math.exp(nll / count), "tokens": count, "mean_nll": nll / count,
            "seconds": time.perf_counter() - t0}


def evaluate(compiled_dir, data_path, text_column: Optional[str] = None, label_column: Optional[str] = None,
             max_rows: Optional[int] = None, variants: Optional[Sequence[str]] = None, provider: str = "cpu",
             threads: Optional[int] = None, window: Optional[int] = None, batch_size: int = 32,
             seed: int = 0, reference: Optional[str] = None, text_pair_column: Optional[str] = None,
             header: bool = True, truncate: Optional[str] = None) -> dict[str, Any]:
    """Evaluate every variant present (EVAL_VARIANTS: baseline, compiled, then each quantized pair) on one data file; `reference`:
    a HF classifier folder scored beside them with PyTorch (fg_edge.train.reference_eval). The columns default
    to those training read (config.json `fg_edge_inputs`), else 'text' / 'label'; a sentence-pair model is
    scored on both texts."""
    from fg_edge.data.readers import load_classification, load_texts

    cdir = CompiledDir(compiled_dir)
    recorded = cdir.inputs()
    text_column = text_column or recorded.get("text_column", "text")
    label_column = label_column or recorded.get("label_column", "label")
    text_pair_column = text_pair_column or recorded.get("text_pair_column")
    names = [v for v in (variants or EVAL_VARIANTS) if cdir.find(v) is not None]
    if not names:
        raise ModelDirError(f"{cdir.path} holds none of the model files for {', '.join(variants or EVAL_VARIANTS)}")
    results: dict[str, Any] = {}
    data = texts = None
    for name in names:
        runner = Runner(cdir.path, model=name, provider=provider, threads=threads, truncate=truncate)
        if runner.kind == "classification":
            if data is None:
                data = load_classification(data_path, text_column=text_column, label_column=label_column,
                                           text_pair_column=text_pair_column, max_rows=max_rows, seed=seed,
                                           what="evaluation file", header=header)
            results[name] = accuracy(runner, data.texts, _label_ids(runner, data), batch_size,
                                     text_pairs=data.text_pairs or None)
        elif runner.kind == "causal-lm":
            if texts is None:
                docs = load_texts(data_path, text_column=text_column, what="evaluation file", header=header).texts
                texts = docs[:max_rows] if max_rows else docs
            results[name] = perplexity(runner, texts, window)
        else:
            raise ModelDirError(f"{runner.file.path} is an {runner.kind} model; eval handles classifiers "
                                "(accuracy) and causal LMs (perplexity)")
        results[name]["file"] = runner.file.path.name
        results[name]["meaning"] = VARIANT_MEANING.get(name, name)
    if reference is not None:
        if data is None:
            raise ModelDirError("--reference compares classifiers; this compiled_dir is not one")
        from fg_edge.train.reference_eval import reference_accuracy

        labels = [data.id2label[lab] for lab in data.labels] if data.string_labels else list(data.labels)
        results["reference"] = reference_accuracy(reference, data.texts, labels, data.string_labels,
                                                  data.text_pairs, batch_size)
        results["reference"]["meaning"] = VARIANT_MEANING["reference"] + f" ({reference})"
    return {"compiled_dir": str(cdir.path), "data": str(data_path), "provider": provider,
            "rows": len(data) if data is not None else None, "results": results}


def format_eval(report: dict[str, Any]) -> str:
    lines = [f"fg-edge eval: {report['compiled_dir']} on {report['data']} ({report['provider']})",
             f"{'model':<14} {'file':<20} {'metric':<11} {'value':>10} {'n':>8} {'seconds':>8}"]
    for name, r in report["results"].items():
        n = r.get("rows", r.get("tokens"))
        value = f"{100 * r['value']:.2f}%" if r["metric"] == "accuracy" else f"{r['value']:.3f}"
        lines.append(f"{name:<14} {r['file']:<20} {r['metric']:<11} {value:>10} {n:>8} {r['seconds']:>8.2f}")
    lines.append("")
    lines += [f"  {name}: {r.get('meaning', name)}" for name, r in report["results"].items()]
    return "\n".join(lines)
