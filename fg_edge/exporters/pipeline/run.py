"""`compile_model_dir`: check the options and the output folder, then run the enabled `STAGES` in one loop."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional

from fg_edge.exporters.pipeline.options import CompileOptions, default_output
from fg_edge.exporters.pipeline.progress import Progress
from fg_edge.exporters.pipeline.stages import STAGES, CompileState, stage_enabled

log = logging.getLogger(__name__)


def compile_model_dir(model_dir: str | Path, out: Optional[str | Path] = None, *,
                      options: Optional[CompileOptions] = None, overwrite: bool = False,
                      progress: bool = False) -> dict:
    """Compile, export and check a model_dir; returns the compile report (also written to the output)."""
    from fg_edge.formats.atomic import check_not_an_input, check_output_dir

    options = (options or CompileOptions()).validate()
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else default_output(model_dir)
    check_output_dir(out, overwrite)
    check_not_an_input(out, {"model_dir": model_dir, "--calibration file": options.calibration,
                             "--eval-data file": options.eval_data})

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
