"""Rows of a data file: format detection and the TSV / CSV / JSONL / `hf:` dataset readers (stdlib only).

`read_rows` gives (column names, iterator of (line number, row dict), {column: class names}); every problem
raises `fg_edge.errors.DataError` naming the file and line. `fg_edge.data.readers` builds the data sets on top.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from pathlib import Path
from typing import Iterator, Optional

from fg_edge.errors import DataError

FORMATS = ("tsv", "csv", "jsonl", "text")
_EXTENSIONS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
               ".json": "jsonl", ".txt": "text", ".text": "text", ".md": "text"}
HF_PREFIX = "hf:"

# SST-2-like files carry long unquoted sentences; csv's 128 KiB field limit is lifted while a row is parsed.
_FIELD_SIZE_LIMIT = min(sys.maxsize, 2 ** 31 - 1)


def detect_format(path: str | Path, fmt: Optional[str] = None) -> str:
    """'tsv' / 'csv' / 'jsonl' / 'text' from `fmt` (when given and not 'auto') or the file extension."""
    if fmt not in (None, "auto"):
        if fmt not in FORMATS:
            raise DataError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(str(path)).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise DataError(f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; "
                        f"name it .tsv/.csv/.jsonl/.txt or pass --format {'/'.join(FORMATS)}")
    return _EXTENSIONS[suffix]


def check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; pass the path of an existing data file")
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file; pass the path of a TSV/CSV/JSONL/text file")
    if path.stat().st_size == 0:
        raise DataError(f"{what} {path} is empty; it needs a header line and at least one data row")


def read_lines(path: Path, what: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            yield from fh
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        f"re-encode it as UTF-8") from None


@contextlib.contextmanager
def _wide_csv_fields() -> Iterator[None]:
    """csv's field size limit is process-wide: raise it for one parse step and put the caller's value back."""
    previous = csv.field_size_limit(_FIELD_SIZE_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _delimited_rows(path: Path, fmt: str, what: str, header_line: bool = True
                    ) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """Header + (line number, row dict) of a TSV (no quoting, as GLUE ships it) or CSV (standard quoting).
    Without a header line (`header_line=False`) the columns are named by position: "0", "1", ..."""
    if fmt == "tsv":
        reader = csv.reader(read_lines(path, what), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(read_lines(path, what))
    try:
        with _wide_csv_fields():
            header = next(reader)
    except StopIteration:
        raise DataError(f"{what} {path} is empty; it needs a header line and at least one data row") from None
    except csv.Error as exc:
        raise DataError(f"{what} {path}: line 1 is not valid {fmt.upper()} ({exc})") from None
    first = None
    if not header_line:
        first, header = header, [str(i) for i in range(len(header))]
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError(f"{what} {path}: the first line must be a header naming the columns (e.g. "
                        f"text{'<TAB>' if fmt == 'tsv' else ','}label)")

    def rows() -> Iterator[tuple[int, dict]]:
        if first is not None:
            yield 1, dict(zip(header, first))
        while True:
            try:
                with _wide_csv_fields():
                    values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{what} {path}: line {reader.line_num} is not valid {fmt.upper()} ({exc})") from None
            if not values or (len(values) == 1 and not values[0].strip()):
                continue  # blank line
            if len(values) != len(header):
                sep = "tabs" if fmt == "tsv" else "commas"
                raise DataError(f"{what} {path}: line {reader.line_num} has {len(values)} field(s) but the header "
                                f"has {len(header)} ({', '.join(header)}); fix that row (stray {sep}?)")
            yield reader.line_num, dict(zip(header, values))

    return header, rows()


def _jsonl_rows(path: Path, what: str) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    def parsed() -> Iterator[tuple[int, dict]]:
        for lineno, line in enumerate(read_lines(path, what), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{what} {path}: line {lineno} is not valid JSON ({exc.msg}); "
                                f"each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise DataError(f"{what} {path}: line {lineno} is a JSON {type(row).__name__}, not an object; "
                                f"each line must be one JSON object like {{\"text\": ..., \"label\": ...}}")
            yield lineno, row

    it = parsed()
    try:
        first = next(it)
    except StopIteration:
        raise DataError(f"{what} {path} holds no JSON rows; it needs at least one line") from None

    def rows() -> Iterator[tuple[int, dict]]:
        yield first
        yield from it

    return list(first[1]), rows()


def _hf_rows(spec: str, what: str, default_split: str) -> tuple[list[str], Iterator[tuple[int, dict]], dict]:
    """Rows of `hf:NAME[@SPLIT]` via `datasets` (optional dependency). Returns (columns, rows, label names)."""
    name = spec[len(HF_PREFIX):]
    name, _, split = name.partition("@")
    split = split or default_split
    try:
        import datasets
    except ImportError:
        raise DataError(f"{what} {spec} needs the `datasets` package (pip install datasets) and network access; "
                        f"or save the split as a TSV/CSV/JSONL file and pass its path") from None
    attempts = [(name,)]
    if name.count("/") == 1:  # 'glue/sst2' is dataset 'glue', config 'sst2'
        attempts.append(tuple(name.split("/")))
    errors = []
    for args in attempts:
        try:
            ds = datasets.load_dataset(*args, split=split)
            break
        except Exception as exc:  # noqa: BLE001 - datasets raises many types (network, config, split)
            errors.append(f"{'/'.join(args)}: {type(exc).__name__}: {exc}")
    else:
        raise DataError(f"{what} {spec}: cannot load split {split!r} ({'; '.join(errors)[:400]}); check the name, "
                        f"the split (hf:NAME@SPLIT) and network access, or pass a local file")
    label_names = {}
    for col, feature in ds.features.items():
        names = getattr(feature, "names", None)
        if names:
            label_names[col] = list(names)
    return list(ds.column_names), ((i + 1, dict(row)) for i, row in enumerate(ds)), label_names


def read_rows(path: str | Path, fmt: Optional[str] = None, what: str = "data file",
              default_split: str = "train", header: bool = True) -> tuple[list[str], Iterator[tuple[int, dict]], dict]:
    """(column names, iterator of (line number, row dict), {column: class names}) of a table-like source.
    `header=False`: a TSV / CSV without a header line, its columns named "0", "1", ... by position."""
    if str(path).startswith(HF_PREFIX):
        return _hf_rows(str(path), what, default_split)
    path = Path(path)
    fmt = detect_format(path, fmt)
    check_file(path, what)
    if fmt in ("tsv", "csv"):
        columns, rows = _delimited_rows(path, fmt, what, header_line=header)
        return columns, rows, {}
    if not header:
        raise DataError(f"{what} {path}: --no-header applies to TSV / CSV files; a {fmt} file names its fields")
    if fmt == "jsonl":
        header, rows = _jsonl_rows(path, what)
    else:
        raise DataError(f"{what} {path}: a plain text file has no columns; classification needs a TSV/CSV/JSONL "
                        f"file with a text and a label column")
    return header, rows, {}
