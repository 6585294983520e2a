"""Accuracy of a plain Hugging Face classifier folder (PyTorch), for `fg-edge eval --reference DIR`.

The reference — typically the dense finetuned teacher — is scored on the same rows as the compiled variants, so
the table shows what removal really cost (the compiled model always equals its own dense-folded baseline).
Needs torch + transformers (the training install); the device runtime never imports this module otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from fg_edge.errors import ConfigError, DataError


def reference_accuracy(path: str | Path, texts: Sequence[str], labels: Sequence[str | int], string_labels: bool,
                       text_pairs: Sequence[str] | None = None, batch_size: int = 32,
                       max_length: int | None = None) -> dict[str, Any]:
    """Accuracy of the classifier folder `path` on (texts, labels); string labels go through its label2id."""
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        raise ConfigError("--reference evaluates a PyTorch model and needs the training install: "
                          "pip install 'fg-edge[train]' (torch, transformers)") from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"--reference {path}: not a Hugging Face model folder (no config.json)")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--reference {path}: cannot load a classifier with its tokenizer ({exc})") from None
    if string_labels:
        ids = {name: i for i, name in model.config.id2label.items()}
        missing = sorted({lab for lab in labels if lab not in ids})
        if missing:
            raise DataError(f"--reference {path}: labels {missing[:5]} are not among its labels {sorted(ids)}")
        targets = [ids[lab] for lab in labels]
    else:
        targets = [int(lab) for lab in labels]
    t0 = time.perf_counter()
    value = classifier_accuracy(model, tokenizer, texts, targets, text_pairs, batch_size, max_length)
    return {"metric": "accuracy", "value": value, "rows": len(texts), "seconds": time.perf_counter() - t0,
            "file": path.name}


def classifier_accuracy(model, tokenizer, texts: Sequence[str], targets: Sequence[int],
                        text_pairs: Sequence[str] | None = None, batch_size: int = 32,
                        max_length: int | None = None) -> float:
    """Accuracy of a torch sequence classifier (plain or gated) on raw texts with integer targets."""
    import torch

    limit = max_length or min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            pairs = list(text_pairs[start:start + batch_size]) if text_pairs else None
            enc = tokenizer(chunk, pairs, truncation=True, max_length=limit, padding=True, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1)
            correct += int((pred == torch.tensor(list(targets[start:start + batch_size]))).sum())
    return correct / len(texts) if len(texts) else float("nan")
