"""Teachers for distillation: a fine-tuned dense classifier folder, its logits computed once per training row.

`load_teacher(path, student)` reads any Hugging Face sequence-classification folder (safetensors only, e.g. the
output of `fg-edge finetune`) and checks that it can teach `student`: a trained classification head, the same
number of labels, the same vocabulary (the teacher reads the student's token ids).

`CachedTeacher` runs the teacher once over the training rows before the first step (eval mode: no dropout, so
the logits are what an in-loop forward would give) and then serves `logits[batch["index"]]`: distillation costs
one inference pass over the data instead of one teacher forward per step, and the teacher's memory is released
before training starts.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from fg_edge.errors import ConfigError

log = logging.getLogger(__name__)


def _classifier_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"--teacher {path}: no config.json; expected a Hugging Face sequence-classification "
                          f"folder such as the output of `fg-edge finetune`")
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--teacher {path / 'config.json'}: unreadable ({exc})") from None


def load_teacher(path: str | Path, student: nn.Module, trust_remote_code: bool = False) -> nn.Module:
    """A frozen, eval-mode teacher classifier from a local folder, checked against `student` (see the docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"--teacher {path}: no such folder (give a fine-tuned classifier folder, e.g. from "
                          f"`fg-edge finetune`)")
    config = _classifier_config(path)
    archs = config.get("architectures") or []
    if not any("ForSequenceClassification" in a for a in archs):
        raise ConfigError(f"--teacher {path}: config.json names architectures {archs or 'none'}, not a "
                          f"*ForSequenceClassification model; a teacher needs a trained classification head "
                          f"(fine-tune one with `fg-edge finetune`)")
    if not any(path.glob("*.safetensors")):
        raise ConfigError(f"--teacher {path}: no *.safetensors weights (fg-edge never unpickles .bin / .pt files; "
                          f"re-save the model with save_pretrained(..., safe_serialization=True))")
    from transformers import AutoModelForSequenceClassification

    from fg_edge.formats.files import check_weight_files

    check_weight_files(path, ConfigError)
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        teacher = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True,
                                                                     attn_implementation="eager", **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"--teacher {path}: cannot load it as a sequence classifier ({exc})") from None
    teacher = teacher.to(torch.float32)
    s_labels, t_labels = student.config.num_labels, teacher.config.num_labels
    if s_labels != t_labels:
        raise ConfigError(f"--teacher {path}: the teacher predicts {t_labels} classes, the training data has "
                          f"{s_labels}; use a teacher fine-tuned on the same task")
    s_vocab, t_vocab = student.config.vocab_size, teacher.config.vocab_size
    if s_vocab != t_vocab:
        raise ConfigError(f"--teacher {path}: vocabulary size {t_vocab} differs from the student's {s_vocab}; the "
                          f"teacher must use the student's tokenizer (fine-tune it from the same base model)")
    names = [teacher.config.id2label.get(i) for i in range(t_labels)]
    student_names = [student.config.id2label.get(i) for i in range(s_labels)]
    if names != student_names and not all(str(n).startswith("LABEL_") for n in names + student_names):
        log.warning("teacher %s labels %s differ from the data's %s; class ids are matched by position",
                    path, names, student_names)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


class CachedTeacher:
    """Teacher logits per training row, computed once (see the module docstring)."""

    def __init__(self, logits: torch.Tensor, seconds: float):
        self.logits = logits
        self.seconds = seconds

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: nn.Module, rows: list[dict], collate, batch_size: int,
              device: Optional[torch.device] = None) -> "CachedTeacher":
        t0 = time.perf_counter()
        teacher = (teacher.to(device) if device is not None else teacher).eval()   # no dropout
        for p in teacher.parameters():
            p.requires_grad_(False)
        # Batches of similar length (padding is wasted work); results go back to row order.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        logits = None
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([rows[i] for i in idx])
            inputs = {k: v.to(teacher.device) for k, v in batch.items()
                      if k in ("input_ids", "attention_mask", "token_type_ids")}
            out = teacher(**inputs).logits.float().cpu()
            if logits is None:
                logits = torch.zeros(len(rows), out.shape[-1])
            logits[torch.tensor(idx)] = out
        logits = logits if logits is not None else torch.zeros(0)
        seconds = time.perf_counter() - t0
        log.info("teacher logits for %d rows in %.1f s", len(rows), seconds)
        return cls(logits, seconds)

    def __call__(self, batch: dict) -> torch.Tensor:
        index = batch["index"]
        return self.logits.to(index.device)[index]


__all__ = ["load_teacher", "CachedTeacher"]
