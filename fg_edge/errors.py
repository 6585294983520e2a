"""Typed errors. Every message names the file / option / tensor at fault and the numbers involved."""

from __future__ import annotations


class FgEdgeError(Exception):
    """Base class for every error fg-edge raises on purpose (the CLI turns these into one-line messages)."""


class ConfigError(FgEdgeError, ValueError):
    """An invalid value in a gate config or a command-line option."""


class UnsupportedArchitectureError(FgEdgeError, ValueError):
    """The model's `model_type` has no entry in the architecture table."""


class DataError(FgEdgeError, ValueError):
    """A training / evaluation data file is missing, empty or malformed."""


class ModelDirError(FgEdgeError, ValueError):
    """A model_dir (or compiled_dir) is missing files or holds inconsistent ones."""


class SourceError(ModelDirError):
    """The base model a user named (path, GGUF file, llama2.c checkpoint or hub id) cannot be found or loaded."""


class GateStateError(ModelDirError):
    """The gate tensors do not fit the model: wrong name, wrong shape, or not finite."""


class ParityError(FgEdgeError):
    """A compiled / exported model disagrees with the gated model beyond tolerance."""

    def __init__(self, what: str, max_abs_diff: float, tolerance: float, detail: str = ""):
        self.what = what
        self.max_abs_diff = float(max_abs_diff)
        self.tolerance = float(tolerance)
        msg = f"{what}: max abs difference {self.max_abs_diff:.3e} exceeds tolerance {self.tolerance:.1e}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class CompileError(FgEdgeError, ValueError):
    """The compiler cannot handle this model (no architecture entry, inconsistent plan or shape record)."""


class ProviderError(ConfigError):
    """An execution provider name that fg-edge does not know, or a malformed --ep-library / provider option."""


class ProviderUnavailableError(FgEdgeError, RuntimeError):
    """A known execution provider that this onnxruntime build does not offer (names the package / build)."""


class ModelFileError(ModelDirError):
    """An .onnx / .ort file that is missing, unreadable or corrupted (names the file)."""


class InputMismatchError(FgEdgeError, ValueError):
    """Inputs given to an ONNX model do not match the inputs it declares (names expected and given)."""


class ExportError(FgEdgeError, RuntimeError):
    """Exporting a model to ONNX / ORT format or quantizing it failed (names the stage, file and cause)."""


class OutputPathError(FgEdgeError, OSError):
    """The output folder cannot be created or written (names the path and the reason)."""


class OutputExistsError(FgEdgeError):
    """The output folder exists and --overwrite was not given, or it cannot be written under (names the path)."""


class ResultFileError(FgEdgeError, ValueError):
    """A result file fg-edge wrote (bench.json) lacks a documented key or has another schema version."""


class Terminated(BaseException):
    """The process got SIGTERM / SIGHUP. A BaseException, like KeyboardInterrupt, so every atomic-output block
    removes its temporary files on the way out; `fg-edge` then exits with 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"terminated by signal {self.signum}")


#: errno -> (what happened, what to do), for file-system errors that reach the command line
_OS_ERRORS = {
    "ENOSPC": ("no space left on the device", "free some space or write somewhere else"),
    "EDQUOT": ("disk quota exceeded", "free some space or write somewhere else"),
    "EROFS": ("read-only file system", "write somewhere else (e.g. choose another output)"),
    "EACCES": ("permission denied", "check the permissions or choose another path"),
    "EPERM": ("operation not permitted", "check the permissions or choose another path"),
    "ENOTDIR": ("a part of the path is a file, not a folder", "choose another path"),
    "EISDIR": ("is a folder, not a file", "name a file"),
    "ENOENT": ("no such file or folder", "check the path"),
    "EIO": ("input/output error", "check the device"),
}


def os_error_message(exc: OSError) -> str:
    """One line for a file-system error: the path, what happened and what to do (no traceback)."""
    import errno as _errno

    name = _errno.errorcode.get(exc.errno or -1, "")
    what, todo = _OS_ERRORS.get(name, (exc.strerror or str(exc) or type(exc).__name__, "check the path"))
    if exc.filename is None:
        return f"cannot read or write: {what}; {todo}"
    return f"{exc.filename}: {what}; {todo}"


class DistributedError(FgEdgeError, RuntimeError):
    """Training processes disagree (diverged parameters, different checkpoints): nothing is written."""
