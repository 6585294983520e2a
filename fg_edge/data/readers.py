"""Training / evaluation data: read local TSV / CSV / JSONL / text files (or a `hf:` dataset) and check them.

Stdlib only (the torch-free runtime reads evaluation data with it); turning the data into token ids and tensors
is `fg_edge.data.tokenize`.

Two kinds of data:

* `ClassificationData` — text (and optionally a second text for sentence pairs) + an integer label per row.
  Labels may be integers (used as class ids) or strings (sorted unique strings → ids 0..n−1; the mapping is kept
  as ``id2label`` so it can be stored in the model config). Integers are names too when they are negative or
  sparse (the largest + 1 is more than twice the number of distinct values, e.g. 0 / 1700000000).
* `TextData` — documents for causal-LM training; `fg_edge.data.tokenize.lm_blocks` tokenises them, joins them
  with EOS and cuts the token stream into blocks of ``max_length`` tokens.

Rows come from `fg_edge.data.rows` (TSV / CSV / JSONL / `hf:` readers). Every problem with a file raises
`fg_edge.errors.DataError` with one sentence that names the file (and line) and says what to do. Reading never
needs a tokenizer, so the CLI can validate data before loading a model.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from fg_edge.data.rows import FORMATS, HF_PREFIX, check_file, detect_format, read_lines, read_rows  # noqa: F401
from fg_edge.errors import DataError

log = logging.getLogger(__name__)


# -- data containers -----------------------------------------------------------------------------------------
@dataclass
class ClassificationData:
    """Rows of a classification data set (after optional subsampling)."""

    source: str
    texts: list[str]
    labels: list[int]
    num_labels: int
    text_pairs: Optional[list[str]] = None
    #: id → label name: the original strings when the labels were strings (or a dataset's class names)
    id2label: Optional[dict[int, str]] = None
    #: True when the file's labels were strings mapped to ids (dev files are then mapped by name)
    string_labels: bool = False
    #: rows in the file before `max_rows` subsampling
    total_rows: int = 0
    format: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def label2id(self) -> Optional[dict[str, int]]:
        return None if self.id2label is None else {v: k for k, v in self.id2label.items()}

    def label_config(self) -> dict:
        """id2label / label2id for the HF model config (generic LABEL_i names for plain integer labels)."""
        names = self.id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        return {"id2label": dict(names), "label2id": {v: k for k, v in names.items()}}

    def summary(self) -> dict:
        return {"path": self.source, "format": self.format, "rows_in_file": self.total_rows,
                "rows_used": len(self), "num_labels": self.num_labels}


@dataclass
class TextData:
    """Documents for causal-LM training (one per paragraph of a text file or per JSONL row)."""

    source: str
    texts: list[str]
    total_rows: int = 0
    format: str = ""
    #: keep at most this many token blocks (sampled with `seed`) when the text is chunked (`lm_blocks`)
    max_blocks: Optional[int] = None
    seed: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def summary(self) -> dict:
        return {"path": self.source, "format": self.format, "documents": self.total_rows,
                "max_blocks": self.max_blocks}


# -- columns -------------------------------------------------------------------------------------------------
def _looks_like_data(cell: str) -> bool:
    """A header cell that reads like a value: a number (a label) or a sentence (four words or more)."""
    text = str(cell).strip()
    try:
        float(text)
        return True
    except ValueError:
        return len(text.split()) >= 4


def _require_columns(columns: Sequence[str], wanted: dict[str, Optional[str]], source: str, what: str) -> None:
    for option, col in wanted.items():
        if col is not None and col not in columns:
            if any(_looks_like_data(c) for c in columns):
                shown = ", ".join(repr(str(c)[:40]) for c in columns)
                raise DataError(f"{what} {source}: its first line looks like a data row, not a header (columns "
                                f"would be {shown}); add a header line naming the columns, or pass --no-header "
                                f"and name the columns by position, e.g. --text-column 1 --label-column 0")
            raise DataError(f"{what} {source} has no column {col!r} (columns found: {', '.join(map(str, columns))}); "
                            f"pass {option} with one of them")


def _cell(row: dict, col: str, lineno: int, source: str, what: str) -> Any:
    if col not in row:
        raise DataError(f"{what} {source}: line {lineno} has no {col!r} field; every row needs it")
    return row[col]


# -- labels --------------------------------------------------------------------------------------------------
_INT_RE = re.compile(r"^[+-]?\d+$")


def _as_int(value: Any) -> Optional[int]:
    """The integer a label stands for, or None when it is not int-like ('1', 1, 1.0 are; 'pos', 1.5 are not)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_RE.match(value.strip()):
        return int(value.strip())
    return None


def _label_mapping(raw: list[tuple[int, Any]], source: str,
                   what: str) -> tuple[list[int], int, Optional[dict[int, str]]]:
    """(ids, num_labels, id2label) from (line number, raw label) pairs, as documented in the module docstring."""
    ints = [(ln, _as_int(v), v) for ln, v in raw]
    int_like = [t for t in ints if t[1] is not None]
    if int_like and len(int_like) < len(ints):
        bad = next(t for t in ints if t[1] is None)
        good = int_like[0]
        raise DataError(f"{what} {source}: label {bad[2]!r} on line {bad[0]} is not an integer while other labels "
                        f"are (e.g. {good[2]!r} on line {good[0]}); use one kind of label throughout")
    dense = bool(int_like) and all(t[1] >= 0 for t in ints)
    if dense:
        top, used = max(t[1] for t in ints), len({t[1] for t in ints})
        if top + 1 > 2 * used:   # e.g. 0 and 1700000000: ids that far apart are names, not a class count
            log.warning("%s %s: integer labels go up to %d but only %d distinct values occur; treating them as "
                        "names (class ids 0..%d, id2label keeps the values)", what, source, top, used, used - 1)
            dense = False
    if dense:
        ids = [t[1] for t in ints]
        num_labels = max(ids) + 1
        distinct = len(set(ids))
        id2label = None
    else:
        # strings (or integers with negatives, e.g. -1/1): sorted unique values → 0..n−1
        if int_like:
            names = sorted({t[1] for t in ints})
            keys = [t[1] for t in ints]
            id2label = {i: str(n) for i, n in enumerate(names)}
            index = {n: i for i, n in enumerate(names)}
        else:
            keys = [str(v).strip() for _, v in raw]
            names = sorted(set(keys))
            id2label = dict(enumerate(names))
            index = {n: i for i, n in enumerate(names)}
        ids = [index[k] for k in keys]
        num_labels = distinct = len(names)
    if distinct < 2:
        only = raw[0][1] if raw else None
        raise DataError(f"{what} {source}: every row has the same label ({only!r}); classification needs at least "
                        f"2 classes")
    return ids, num_labels, id2label


def _apply_mapping(raw: list[tuple[int, Any]], reference: "ClassificationData", source: str,
                   what: str) -> list[int]:
    """Map dev labels with the training set's mapping (ids / names must exist there)."""
    ids = []
    label2id = reference.label2id if reference.string_labels else None
    for lineno, value in raw:
        if label2id is None:
            i = _as_int(value)
            if i is None or not 0 <= i < reference.num_labels:
                raise DataError(f"{what} {source}: label {value!r} on line {lineno} is not one of the training "
                                f"labels 0..{reference.num_labels - 1}")
        else:
            key = str(value).strip()
            if key not in label2id and _as_int(value) is not None:
                key = str(_as_int(value))
            if key not in label2id:
                raise DataError(f"{what} {source}: label {value!r} on line {lineno} does not occur in the training "
                                f"data (training labels: {', '.join(sorted(label2id))})")
            i = label2id[key]
        ids.append(i)
    return ids


# -- public loaders ------------------------------------------------------------------------------------------
def subsample_indices(n: int, max_rows: Optional[int], seed: int) -> list[int]:
    """Deterministic subsample of range(n) (file order kept); all of it when max_rows is None or >= n."""
    if max_rows is None or max_rows >= n:
        return list(range(n))
    if max_rows < 1:
        raise DataError(f"max rows must be >= 1; got {max_rows}")
    return sorted(random.Random(seed).sample(range(n), max_rows))


def load_classification(path: str | Path, *, text_column: str = "text", label_column: str = "label",
                        text_pair_column: Optional[str] = None, fmt: Optional[str] = None,
                        max_rows: Optional[int] = None, seed: int = 0, what: Optional[str] = None,
                        reference: Optional[ClassificationData] = None, header: bool = True) -> ClassificationData:
    """Read a classification file. `reference` (the training data) fixes the label mapping for a dev file.
    `what` names the file in error messages (default 'training file' / 'dev file')."""
    source = str(path)
    what = what or ("training file" if reference is None else "dev file")
    columns, rows, label_names = read_rows(path, fmt, what, header=header,
                                           default_split="train" if reference is None else "validation")
    wanted = {"--text-column": text_column, "--label-column": label_column, "--text-pair-column": text_pair_column}
    _require_columns(columns, wanted, source, what)
    texts, pairs, raw = [], [], []
    for lineno, row in rows:
        text = _cell(row, text_column, lineno, source, what)
        if text is None or (isinstance(text, str) and not text.strip()):
            raise DataError(f"{what} {source}: line {lineno} has an empty {text_column!r}; remove the row or fill it")
        texts.append(str(text))
        if text_pair_column is not None:
            pairs.append(str(_cell(row, text_pair_column, lineno, source, what)))
        label = _cell(row, label_column, lineno, source, what)
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{what} {source}: line {lineno} has an empty {label_column!r}; every row needs a label")
        raw.append((lineno, label))
    if not texts:
        raise DataError(f"{what} {source} has a header but no data rows; add rows or pick another file")
    if reference is None:
        ids, num_labels, id2label = _label_mapping(raw, source, what)
        string_labels = id2label is not None
        class_names = label_names.get(label_column)  # a `datasets` ClassLabel: integer ids with names
        if not string_labels and class_names and len(class_names) >= num_labels:
            id2label, num_labels = dict(enumerate(class_names)), len(class_names)
    else:
        ids = _apply_mapping(raw, reference, source, what)
        num_labels, id2label, string_labels = reference.num_labels, reference.id2label, reference.string_labels
    keep = subsample_indices(len(texts), max_rows, seed)
    data = ClassificationData(
        source=source, texts=[texts[i] for i in keep], labels=[ids[i] for i in keep], num_labels=num_labels,
        text_pairs=[pairs[i] for i in keep] if text_pair_column is not None else None, id2label=id2label,
        string_labels=string_labels, total_rows=len(texts),
        format="hf" if source.startswith(HF_PREFIX) else detect_format(path, fmt))
    log.info("%s: %d rows (%d used), %d classes", source, len(texts), len(data), num_labels)
    return data


def load_texts(path: str | Path, *, text_column: str = "text", fmt: Optional[str] = None,
               max_blocks: Optional[int] = None, seed: int = 0, what: str = "training file",
               default_split: str = "train", header: bool = True) -> TextData:
    """Documents for causal-LM training: paragraphs (blank-line separated) of a text file, or a column of rows.

    `max_blocks` limits the number of token blocks used once the text is chunked (see `lm_blocks`);
    `default_split` is the split of an `hf:` dataset named without '@SPLIT'."""
    source = str(path)
    if not source.startswith(HF_PREFIX) and detect_format(path, fmt) == "text":
        path = Path(path)
        check_file(path, what)
        content = "".join(read_lines(path, what))
        docs = [d.strip() for d in re.split(r"\n\s*\n", content) if d.strip()]
        fmt_name = "text"
    else:
        columns, rows, _ = read_rows(path, fmt, what, default_split=default_split, header=header)
        _require_columns(columns, {"--text-column": text_column}, source, what)
        docs = []
        for lineno, row in rows:
            value = _cell(row, text_column, lineno, source, what)
            if value is not None and str(value).strip():
                docs.append(str(value))
        fmt_name = "hf" if source.startswith(HF_PREFIX) else detect_format(path, fmt)
    if not docs:
        raise DataError(f"{what} {source} holds no text; it needs at least one non-empty line")
    log.info("%s: %d documents", source, len(docs))
    return TextData(source=source, texts=docs, total_rows=len(docs), format=fmt_name, max_blocks=max_blocks,
                    seed=seed)


__all__ = ["ClassificationData", "TextData", "FORMATS", "detect_format", "read_rows", "load_classification",
           "load_texts", "subsample_indices"]

