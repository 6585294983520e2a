"""`compile_model_dir`: check the options and the output folder, then run the enabled `STAGES` in one loop."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional

from fg_edge.errors import ConfigError, OutputPathError
from fg_edge.exporters.pipeline.options import CompileOptions, default_output
from fg_edge.exporters.pipeline.progress import Progress
from fg_edge.exporters.pipeline.stages import STAGES, CompileState, stage_enabled

log = logging.getLogger(__name__)


def _check_writable(out: Path) -> None:
    """Fail before any work when the output folder cannot be created (parent is a file, read-only, …)."""
    import tempfile

    probe = out.resolve().parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputPathError(f"cannot create output folder {out}: {probe} is a file, not a folder; choose another "
                              f"--output")
    try:
        tempfile.TemporaryDirectory(prefix=".fg-probe-", dir=probe).cleanup()
    except OSError as exc:
        raise OutputPathError(f"cannot write under {probe} ({exc.strerror or exc}); choose another --output") from None


def compile_model_dir(model_dir: str | Path, out: Optional[str | Path] = None, *,
                      options: Optional[CompileOptions] = None, overwrite: bool = False,
                      progress: bool = False) -> dict:
    """Compile, export and check a model_dir; returns the compile report (also written to the output)."""
    from fg_edge.formats.atomic import check_output_dir

    options = (options or CompileOptions()).validate()
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else default_output(model_dir)
    check_output_dir(out, overwrite)
    _check_writable(out)
    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"the output folder {out} is the model_dir itself; choose another --output")

    stages = [(name, run) for name, run in STAGES if stage_enabled(name, options)]
    prog = Progress([name for name, _ in stages], progress)
    with contextlib.ExitStack() as stack:
        stack.callback(prog.close)  # exits last: after the output folder is committed (or removed on error)
        state = CompileState(model_dir=model_dir, out=out, options=options, overwrite=overwrite, progress=prog,
                             stack=stack)
        for name, run in stages:
            prog.stage(name)
            run(state)
            prog.done()
    log.info("wrote compiled model %s", out)
    state.report["output"] = str(out)
    return state.report
