"""Run one heavy compile step in a fresh Python process, so its memory peak is not added to this process's.

    settings = run_isolated("fg_edge.exporters.quantize:quantize_int8_dynamic", src=..., dst=...)

The function gets JSON-able keyword arguments and returns a JSON-able value. Its log records go to this process's
stderr; an fg-edge error raised in the child is raised here again (same class when it takes a message alone,
else ExportError), anything else becomes an ExportError naming the step.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from fg_edge import errors
from fg_edge.errors import ExportError

_RESULT, _ERROR = "FG_EDGE_RESULT ", "FG_EDGE_ERROR "

_CHILD = """
import importlib, json, logging, sys
a = json.loads(sys.argv[1])
logging.basicConfig(level=a["log_level"], format="%(levelname)s %(name)s: %(message)s")
from fg_edge.errors import FgEdgeError
module, _, name = a["target"].partition(":")
try:
    result = getattr(importlib.import_module(module), name)(**a["kwargs"])
except FgEdgeError as e:
    print("FG_EDGE_ERROR " + json.dumps([type(e).__name__, str(e)]), file=sys.stderr)
    sys.exit(3)
except OSError as e:   # disk full, read-only: the parent reports it like its own, without this traceback
    print("FG_EDGE_ERROR " + json.dumps(["OSError", [e.errno, e.strerror, e.filename]]), file=sys.stderr)
    sys.exit(3)
except MemoryError:
    print("FG_EDGE_ERROR " + json.dumps(["MemoryError", ""]), file=sys.stderr)
    sys.exit(3)
print("FG_EDGE_RESULT " + json.dumps(result))
"""


def run_isolated(target: str, what: str, **kwargs):
    """Call `target` ("package.module:function") with `kwargs` in a child process and return its result."""
    args = {"target": target, "kwargs": kwargs, "log_level": logging.getLogger().getEffectiveLevel()}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    error = None
    for line in proc.stderr.splitlines():
        if line.startswith(_ERROR):
            error = json.loads(line[len(_ERROR):])
        else:
            sys.stderr.write(line + "\n")
    if error is not None and error[0] == "OSError":
        raise OSError(*error[1])
    if error is not None and error[0] == "MemoryError":
        raise MemoryError(f"{what}: out of memory in the worker process")
    if error is not None:
        cls = getattr(errors, error[0], None)
        try:
            exc = cls(error[1]) if isinstance(cls, type) and issubclass(cls, errors.FgEdgeError) else None
        except TypeError:
            exc = None
        raise exc if exc is not None else ExportError(error[1])
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"{what} failed in its worker process (exit {proc.returncode}): {tail}")
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):])
    raise ExportError(f"{what}: the worker process returned no result")
