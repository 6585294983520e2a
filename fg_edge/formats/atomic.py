"""Atomic output folders: everything is written to a temporary sibling, then renamed into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from fg_edge.errors import OutputExistsError, OutputPathError


def check_output_dir(path: str | Path, overwrite: bool, option: str = "--output") -> Path:
    """Fail early (before any work) when `path` exists and overwrite is off, or its parent is not writable."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output folder {path} already exists; pass --overwrite to replace it")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path {path} exists and is not a folder")
    check_writable_location(path.resolve().parent, path, option=option)
    return path


def check_writable_location(folder: str | Path, target: Optional[str | Path] = None, option: str = "--output",
                            role: str = "output folder") -> Path:
    """Fail before any work when `folder` (or, if it does not exist yet, the folder that would hold it) is a file or
    cannot be written; `target` names the output in the message (default: `folder`), `option` and `role` say which
    of the command's outputs it is."""
    path = Path(target if target is not None else folder)
    probe = Path(folder).resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputPathError(f"cannot create the {role} {path} ({option}): {probe} is a file, not a folder; choose "
                              f"another {option}")
    try:   # a real write says why (read-only file system, permission denied, no space), os.access does not
        tempfile.TemporaryDirectory(prefix=".fg-probe-", dir=probe).cleanup()
    except OSError as exc:
        raise OutputPathError(f"cannot write the {role} {path} ({option}): {probe} is not writable "
                              f"({(exc.strerror or str(exc)).lower()}); choose another {option}") from None
    return probe


def check_not_an_input(output: str | Path, inputs: dict[str, Optional[str | Path]], option: str = "--output") -> None:
    """Refuse an output folder that is, or contains, one of the command's inputs ({role: path}): replacing it
    would delete the base model or the training data. Inputs that are not local paths (hub ids, hf:) are skipped."""
    out = Path(output).resolve()
    for role, value in inputs.items():
        if value is None or not Path(value).exists():
            continue
        src = Path(value).resolve()
        if out == src or out in src.parents:
            relation = "is" if out == src else "contains"
            raise OutputPathError(f"{option} {output} {relation} the {role} {value}; writing the output there would "
                                  f"delete it; choose another {option}")


def _umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder; on success it replaces `path`; on any error it is deleted and `path` is untouched."""
    path = check_output_dir(path, overwrite)
    path.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.resolve().parent))
    os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes it 0700; the output gets the usual mode, as mkdir would
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that go by it still work); on success it is
    renamed onto `path`, so a reader never sees a partial file; on any error it is deleted and `path` is untouched."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.resolve().parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes it 0600; a finished file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through `atomic_file` (complete or not at all)."""
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)
