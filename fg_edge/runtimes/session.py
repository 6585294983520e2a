"""ONNX Runtime session creation (the one factory fg-edge uses, also for the exporters' parity gate) and input checking.

    sess = create_session("compiled/model.onnx", provider="cpu", settings=SessionSettings(intra_op_threads=2))
    feeds = build_feeds(sess, {"input_ids": ids, "attention_mask": mask})   # checks names, casts dtypes

Errors: a missing / corrupted model file -> `ModelFileError` naming the file; inputs that do not match the
model's declared inputs -> `InputMismatchError` naming the expected and the given names.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from fg_edge.errors import ConfigError, InputMismatchError, ModelFileError, ProviderUnavailableError
from fg_edge.runtimes.providers import ResolvedProvider, resolve_provider

log = logging.getLogger(__name__)

#: graph optimisation levels, lowest first (ORT_DISABLE_ALL .. ORT_ENABLE_ALL); the one vocabulary fg-edge uses
GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")
EXECUTION_MODES = ("sequential", "parallel")

_NP_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass
class SessionSettings:
    """What goes into `onnxruntime.SessionOptions` (None = ORT's default)."""

    intra_op_threads: Optional[int] = None
    inter_op_threads: Optional[int] = None
    graph_optimization: str = "all"             # disable | basic | extended | all
    execution_mode: str = "sequential"          # sequential | parallel
    log_severity: int = 3                       # 0 verbose .. 4 fatal
    #: no CPU memory arena and no memory-pattern pre-allocation: a large graph's session holds its weights and
    #: little else (the parity gate); the numbers computed are the same
    low_memory: bool = False
    #: intra-op threads busy-wait for work (None = ORT's default); off where ORT alternates with torch
    spinning: Optional[bool] = None

    def validate(self) -> "SessionSettings":
        if self.graph_optimization not in GRAPH_OPT_LEVELS:
            raise ConfigError(f"graph optimisation level {self.graph_optimization!r}: expected one of "
                              f"{', '.join(GRAPH_OPT_LEVELS)}")
        if self.execution_mode not in EXECUTION_MODES:
            raise ConfigError(f"execution mode {self.execution_mode!r}: expected one of {', '.join(EXECUTION_MODES)}")
        for key in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"{key} = {value}: must be >= 0 (0 = ORT default)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def session_options(settings: SessionSettings):
    import onnxruntime as ort

    settings.validate()
    so = ort.SessionOptions()
    if settings.intra_op_threads is not None:
        so.intra_op_num_threads = int(settings.intra_op_threads)
    if settings.inter_op_threads is not None:
        so.inter_op_num_threads = int(settings.inter_op_threads)
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.graph_optimization]
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if settings.execution_mode == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.log_severity_level = int(settings.log_severity)
    if settings.low_memory:
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
    if settings.spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spinning else "0")
    return so


def _is_load_error(exc: Exception) -> bool:
    text = str(exc)
    markers = ("INVALID_PROTOBUF", "Protobuf parsing failed", "INVALID_GRAPH", "Load model from", "NO_MODEL",
               "ModelProto", "model_path", "Failed to load model", "is not a valid", "ORT format")
    return any(m in text for m in markers) or type(exc).__name__ in ("InvalidProtobuf", "InvalidGraph", "NoModel")


def create_session(path: str | os.PathLike, provider: str | ResolvedProvider = "cpu",
                   settings: Optional[SessionSettings] = None, provider_options: Optional[Mapping[str, Any]] = None):
    """An `onnxruntime.InferenceSession` for `path` on `provider` (short name or a `ResolvedProvider`).

    The provider is checked before the file is read; a CPU fallback by ORT (EP present but failing to load,
    e.g. missing CUDA libraries) raises `ProviderUnavailableError` instead of silently timing the CPU.
    """
    import onnxruntime as ort

    resolved = provider if isinstance(provider, ResolvedProvider) else resolve_provider(provider, provider_options)
    settings = settings or SessionSettings()
    if resolved.spec.max_threads is not None:
        capped = min(settings.intra_op_threads or resolved.spec.max_threads, resolved.spec.max_threads)
        settings = SessionSettings(**{**settings.to_dict(), "intra_op_threads": capped, "inter_op_threads": 1})
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    so = session_options(settings)
    try:
        if resolved.plugin:
            so.add_provider_for_devices(resolved.ep_devices(), dict(resolved.options))
            sess = ort.InferenceSession(str(path), sess_options=so)
        else:
            providers = [(resolved.ep, dict(resolved.options))]
            if resolved.ep != "CPUExecutionProvider":
                providers.append(("CPUExecutionProvider", {}))      # for nodes the EP does not take
            sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:
        if isinstance(exc, (ModelFileError, ProviderUnavailableError)):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _is_load_error(exc) or path.suffix in (".onnx", ".ort"):
            raise ModelFileError(f"cannot load model file {path}: it is corrupted or not an ONNX/ORT model "
                                 f"({first[:300]})") from None
        raise
    if resolved.ep not in sess.get_providers():
        raise ProviderUnavailableError(
            f"onnxruntime fell back from {resolved.ep} to {', '.join(sess.get_providers())} for {path}; "
            f"{resolved.spec.name} needs: {resolved.spec.install}")
    return sess


def timed_create_session(*args, **kwargs):
    """(session, seconds) — session creation time as the bench reports it."""
    t0 = time.perf_counter()
    sess = create_session(*args, **kwargs)
    return sess, time.perf_counter() - t0


def declared_inputs(sess) -> dict[str, dict[str, Any]]:
    """name -> {shape, type} of the inputs the model declares (symbolic dims as strings, unknown as None)."""
    return {i.name: {"shape": list(i.shape), "type": i.type} for i in sess.get_inputs()}


def build_feeds(sess, given: Mapping[str, Any], model_path: str | os.PathLike | None = None,
                strict_extra: bool = True) -> dict[str, np.ndarray]:
    """Check `given` against the model's declared inputs and cast each array to the declared dtype.

    Missing inputs (and, with `strict_extra`, inputs the model does not have) raise `InputMismatchError`
    naming the expected and the given names.
    """
    declared = declared_inputs(sess)
    missing = [n for n in declared if n not in given]
    extra = [n for n in given if n not in declared]
    if missing or (extra and strict_extra):
        where = f" of {model_path}" if model_path else ""
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra and strict_extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise InputMismatchError(
            f"inputs do not match the model{where} ({'; '.join(parts)}): expected {sorted(declared)}, "
            f"given {sorted(given)}")
    feeds: dict[str, np.ndarray] = {}
    for name, info in declared.items():
        arr = np.asarray(given[name])
        want = _NP_TYPES.get(info["type"])
        if want is not None and arr.dtype != want:
            arr = arr.astype(want)
        shape = info["shape"]
        if len(shape) != arr.ndim:
            raise InputMismatchError(f"input {name} of {model_path or 'the model'}: expected rank {len(shape)} "
                                     f"(shape {shape}), given shape {list(arr.shape)}")
        for dim, (want_dim, got) in enumerate(zip(shape, arr.shape)):
            if isinstance(want_dim, int) and want_dim > 0 and want_dim != got:
                raise InputMismatchError(f"input {name} of {model_path or 'the model'}: dimension {dim} must be "
                                         f"{want_dim} (declared shape {shape}), given shape {list(arr.shape)}")
        feeds[name] = arr
    return feeds


def numpy_dtype(type_str: str):
    """'tensor(float16)' -> np.float16 (float32 for anything unknown)."""
    return _NP_TYPES.get(type_str, np.float32)
