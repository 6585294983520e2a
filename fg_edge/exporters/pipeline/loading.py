"""What the compile reads from the model_dir and the options: gated model, tokenizer, calibration and eval data."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fg_edge.errors import ConfigError, FgEdgeError, ModelDirError
from fg_edge.exporters.pipeline.memory import unmap_weights
from fg_edge.exporters.pipeline.options import CompileOptions

log = logging.getLogger(__name__)


def load_gated(model_dir: Path):
    from fg_edge.model_dir import load

    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: no such model_dir (expected the folder written by `fg-edge train`)")
    try:
        model = load(model_dir)
        unmap_weights(model, model_dir)
        return model
    except FgEdgeError:
        raise
    except Exception as exc:  # corrupted weights / config files surface as assorted library errors
        raise ModelDirError(f"{model_dir}: cannot load the gated model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def load_tokenizer(model_dir: Path):
    from fg_edge.model_dir import load_tokenizer as _load

    try:
        return _load(model_dir)
    except FgEdgeError:   # tokenizer files that are there but corrupt: refuse rather than ship without them
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises assorted errors for folders without tokenizer
        log.debug("no usable tokenizer in %s (%s: %s)", model_dir, type(exc).__name__, exc)
        return None


def _training_texts(model_dir: Path, limit: int) -> list[str]:
    """Up to `limit` texts of the training data training.json records ([] when there is none or it is unreadable)."""
    from fg_edge.model_dir import read_training_metadata
    from fg_edge.exporters.quantize import calibration_texts_from_training

    try:
        meta = read_training_metadata(model_dir)
    except (OSError, json.JSONDecodeError):
        meta = {}
    return calibration_texts_from_training(meta, limit)


def calibration_texts(options: CompileOptions, model_dir: Path) -> tuple[list[str], str]:
    """The calibration texts of --quantize qdq / --quant-method gptq (options.needs_calibration names which)."""
    from fg_edge.exporters.quantize import read_calibration_texts

    limit = options.calibration_limit
    if options.calibration:
        return read_calibration_texts(options.calibration, limit), str(options.calibration)
    texts = _training_texts(model_dir, limit)
    if not texts:
        raise ConfigError(f"{options.needs_calibration} needs calibration text and {model_dir}/training.json records "
                          f"no readable training data: pass --calibration FILE (plain text, paragraphs separated by "
                          f"blank lines, or a TSV/CSV/JSONL file with a 'text' column)")
    return texts, "training data recorded in training.json"


def choose_int4_method(options: CompileOptions, model_dir: Path, tokenizer) -> tuple[CompileOptions, Optional[tuple],
                                                                                    str]:
    """--quantize int4 without --quant-method (and without --calibration, which picks gptq in
    CompileOptions.validate): GPTQ on the training data training.json records when it can still be read and the
    model_dir has a tokenizer, else HQQ (no calibration needed). Returns (options with the method set, the
    calibration texts or None, why, for the log and the report). Folded gates move every weight off the grid a
    packaged checkpoint was trained near, and only calibration sees which rounding errors matter: on SmolLM2-135M
    with 30 % of block parameters removed by trained gates, int4 perplexity over the fp32 graph was +55 % with HQQ
    and +5.5 % with GPTQ (benchmarks/decoder_compression.py, README)."""
    from dataclasses import replace

    gptq = replace(options, quant_method="gptq")
    texts: list[str] = []
    if tokenizer is not None:
        texts = _training_texts(model_dir, gptq.calibration_limit)
    if texts:
        why = "default with calibration text at hand: gptq on the training data recorded in training.json"
        log.info("--quantize int4: %s (--quant-method hqq needs none and compiles faster)", why)
        return gptq, (texts, "training data recorded in training.json"), why
    why = ("default without calibration text: hqq (" + ("no tokenizer in the model_dir" if tokenizer is None else
           "training.json records no readable training data") + "); --calibration FILE selects gptq")
    log.info("--quantize int4: %s, far more accurate on trained models", why)
    return replace(options, quant_method="hqq"), None, why


def input_record(model_dir: Path) -> dict:
    """How training fed the model (training.json `inputs`: max_length, text / pair / label columns); {} when the
    model_dir predates the record or was written by other code."""
    from fg_edge.model_dir import read_training_metadata

    inputs = read_training_metadata(model_dir).get("inputs")
    return {k: v for k, v in inputs.items() if v is not None} if isinstance(inputs, dict) else {}


@dataclass
class EvalTexts:
    """Decoder --eval-data: documents whose perplexity the compile measures (fp32 vs quantized)."""

    texts: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)


def load_eval_data(options: CompileOptions, gated, tokenizer, model_dir: Path):
    """--eval-data: classification rows (accuracy before / after quantization) or, for a causal LM, plain text
    (or a text column) whose perplexity the quality check measures."""
    from fg_edge.data.readers import load_classification, load_texts
    from fg_edge.model_dir import read_gate_config

    task = read_gate_config(model_dir).task
    if tokenizer is None:
        raise ConfigError(f"--eval-data needs the tokenizer, and {model_dir} has no tokenizer files")
    inputs = input_record(model_dir)   # the columns training read, so a pair model is scored on its pairs
    if task == "causal-lm":
        docs = [t for t in load_texts(options.eval_data, text_column=inputs.get("text_column", "text"),
                                                what="--eval-data file").texts if t.strip()]
        return EvalTexts(docs[: options.eval_max_rows], str(options.eval_data))
    if task != "classification":
        raise ConfigError(f"--eval-data measures classification accuracy or causal-LM perplexity; this "
                          f"model_dir's task is {task!r}")
    return load_classification(options.eval_data, max_rows=options.eval_max_rows, what="--eval-data file",
                               text_column=inputs.get("text_column", "text"),
                               text_pair_column=inputs.get("text_pair_column"),
                               label_column=inputs.get("label_column", "label"))
