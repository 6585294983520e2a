"""The execution-provider table: short name -> ONNX Runtime EP, default options, and where to get it.

    >>> from fg_edge.runtimes.providers import resolve_provider
    >>> resolve_provider("cpu").ep
    'CPUExecutionProvider'

`resolve_provider` checks availability up front (`onnxruntime.get_available_providers()`, plus the devices of
plugin EP libraries registered with `register_ep_libraries`) and raises `ProviderUnavailableError` naming the
package or build that provides a missing EP, or `ProviderError` for a name that is not in the table.

The `mobile` profile is not a real EP: it is the CPU EP with 1-2 threads, the `.ort` model when present and the
int8 model when present, and every output labels it "mobile (emulated on CPU EP)".
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from fg_edge.errors import ProviderError, ProviderUnavailableError

log = logging.getLogger(__name__)

MOBILE_LABEL = "mobile (emulated on CPU EP)"


@dataclass(frozen=True)
class ProviderSpec:
    """One row of the provider table."""

    name: str                                   # short name used on the command line
    ep: str                                     # ONNX Runtime execution-provider name
    install: str                                # the package / build that provides the EP
    default_options: Mapping[str, str] = field(default_factory=dict)
    label: str = ""                             # how reports show it (defaults to the short name)
    emulated: bool = False                      # a profile emulated on another EP (mobile)
    max_threads: Optional[int] = None           # thread cap of a profile (mobile: 2)
    prefer_ort_format: bool = False             # use model.ort / model.int8.ort when present
    #: quantized variants used instead of `compiled` when present, first found wins (mobile: int8 for encoders,
    #: the weight-only int4 / int8-wo that decoders ship as, since int8 dynamic is refused for them)
    prefer_quantized: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        return self.label or self.name

    def preferred_variant(self, cdir) -> Optional[str]:
        """The first of prefer_quantized that compiled dir `cdir` holds, or None."""
        return next((v for v in self.prefer_quantized if cdir.find(v) is not None), None)


#: short name -> ProviderSpec. Default options are the ORT defaults made explicit where they matter for a fair,
#: reproducible benchmark (one device, no fp16 down-casting behind the user's back).
PROVIDERS: dict[str, ProviderSpec] = {
    "cpu": ProviderSpec("cpu", "CPUExecutionProvider", "pip install onnxruntime (every ORT build has it)"),
    "cuda": ProviderSpec(
        "cuda", "CUDAExecutionProvider",
        "pip install onnxruntime-gpu (needs CUDA 12 and cuDNN 9 on the machine)",
        {"device_id": "0", "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC",
         "do_copy_in_default_stream": "1"}),
    "tensorrt": ProviderSpec(
        "tensorrt", "TensorrtExecutionProvider",
        "pip install onnxruntime-gpu plus the TensorRT 10 libraries (pip install tensorrt)",
        {"device_id": "0", "trt_fp16_enable": "False", "trt_engine_cache_enable": "True",
         "trt_engine_cache_path": ".trt_cache"}),
    "xnnpack": ProviderSpec(
        "xnnpack", "XnnpackExecutionProvider",
        "an onnxruntime build with --use_xnnpack (the Android / iOS packages onnxruntime-android and "
        "onnxruntime-c / onnxruntime-objc include it)",
        {"intra_op_num_threads": "1"}),
    "nnapi": ProviderSpec(
        "nnapi", "NnapiExecutionProvider",
        "an Android onnxruntime build (the onnxruntime-android AAR, or a build with --use_nnapi)",
        {}),
    "coreml": ProviderSpec(
        "coreml", "CoreMLExecutionProvider",
        "pip install onnxruntime on macOS (the macOS wheels include CoreML; or onnxruntime-objc on iOS)",
        {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"}),
    "qnn": ProviderSpec(
        "qnn", "QNNExecutionProvider",
        "pip install onnxruntime-qnn (Windows on Snapdragon) or an Android build with --use_qnn",
        {"backend_path": "QnnHtp.dll" if os.name == "nt" else "libQnnHtp.so"}),
    "openvino": ProviderSpec(
        "openvino", "OpenVINOExecutionProvider", "pip install onnxruntime-openvino",
        {"device_type": "CPU"}),
    "dml": ProviderSpec(
        "dml", "DmlExecutionProvider", "pip install onnxruntime-directml (Windows, DirectX 12 GPU)",
        {"device_id": "0"}),
    "webgpu": ProviderSpec(
        "webgpu", "WebGpuExecutionProvider",
        "an onnxruntime build with --use_webgpu (or onnxruntime-web in a browser)", {}),
    "mobile": ProviderSpec(
        "mobile", "CPUExecutionProvider", "pip install onnxruntime (emulated on the CPU EP)",
        label=MOBILE_LABEL, emulated=True, max_threads=2, prefer_ort_format=True,
        prefer_quantized=("int8", "int4", "int8-wo")),
}

_EP_TO_SHORT = {spec.ep: name for name, spec in PROVIDERS.items() if not spec.emulated}

#: registration name -> (library path, EP names its devices carry), filled by `register_ep_libraries`
_REGISTERED_LIBRARIES: dict[str, tuple[str, tuple[str, ...]]] = {}


@dataclass(frozen=True)
class ResolvedProvider:
    """A provider that is available now: what to pass to an `InferenceSession`."""

    spec: ProviderSpec
    options: Mapping[str, str]
    plugin: bool = False                        # comes from a registered EP library (use ep devices)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ep(self) -> str:
        return self.spec.ep

    @property
    def label(self) -> str:
        return self.spec.display

    def ep_devices(self) -> list:
        import onnxruntime as ort

        return [d for d in ort.get_ep_devices() if d.ep_name == self.ep]


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - the runtime extra always has it
        raise ProviderUnavailableError(
            "onnxruntime is not installed; pip install fg-edge (or onnxruntime-gpu for CUDA)") from exc
    return ort


def available_providers() -> list[str]:
    """EP names this onnxruntime offers, built-in ones plus the EPs of registered plugin libraries."""
    ort = _ort()
    names = list(ort.get_available_providers())
    if hasattr(ort, "get_ep_devices"):
        for dev in ort.get_ep_devices():
            if dev.ep_name not in names:
                names.append(dev.ep_name)
    return names


def parse_ep_library(text: str) -> tuple[str, str]:
    """`NAME=PATH` -> (name, path)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ProviderError(f"--ep-library {text!r}: expected NAME=PATH (e.g. MyEP=/opt/myep/libmyep.so)")
    return name.strip(), path.strip()


def register_ep_libraries(specs: Iterable[str | tuple[str, str]]) -> list[str]:
    """Register plugin execution-provider libraries (`NAME=PATH`) with ORT; returns the EP names they add.

    Uses `onnxruntime.register_execution_provider_library` (ORT >= 1.22). Registering the same name twice is a
    no-op. The EPs then resolve by their EP name (or by the registration NAME) in `resolve_provider`.
    """
    ort = _ort()
    added: list[str] = []
    for item in specs:
        name, path = parse_ep_library(item) if isinstance(item, str) else item
        if name in _REGISTERED_LIBRARIES:
            added.extend(_REGISTERED_LIBRARIES[name][1])
            continue
        if not hasattr(ort, "register_execution_provider_library"):
            raise ProviderUnavailableError(
                f"--ep-library {name}={path}: onnxruntime {ort.__version__} has no "
                "register_execution_provider_library; plugin EP libraries need onnxruntime >= 1.22")
        if not os.path.isfile(path):
            raise ProviderError(f"--ep-library {name}={path}: no such file")
        before = {d.ep_name for d in ort.get_ep_devices()}
        try:
            ort.register_execution_provider_library(name, os.path.abspath(path))
        except Exception as exc:  # ORT raises its own RuntimeError / Fail types
            if "already registered" not in str(exc).lower():
                raise ProviderError(f"--ep-library {name}={path}: onnxruntime cannot register it: {exc}") from None
        new = tuple(sorted({d.ep_name for d in ort.get_ep_devices()} - before)) or (name,)
        _REGISTERED_LIBRARIES[name] = (path, new)
        log.info("registered EP library %s (%s): %s", name, path, ", ".join(new))
        added.extend(new)
    return added


def parse_provider_list(text: str | Iterable[str]) -> list[str]:
    """'cpu,mobile' -> ['cpu', 'mobile'] (order kept, duplicates dropped)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        item = item.strip()
        if item and item not in out:
            out.append(item)
    if not out:
        raise ProviderError("no execution provider given (e.g. --providers cpu,mobile)")
    return out


def get_spec(name: str) -> ProviderSpec:
    """The table row for a short name or a full EP name; plugin EPs get an ad-hoc row."""
    key = name.strip()
    if key.lower() in PROVIDERS:
        return PROVIDERS[key.lower()]
    if key in _EP_TO_SHORT:
        return PROVIDERS[_EP_TO_SHORT[key]]
    for reg_name, (path, eps) in _REGISTERED_LIBRARIES.items():
        if key == reg_name or key in eps:
            ep = key if key in eps else eps[0]
            return ProviderSpec(key, ep, f"the plugin EP library {path} (--ep-library {reg_name}={path})")
    raise ProviderError(
        f"unknown execution provider {name!r}; known: {', '.join(PROVIDERS)} (or a full ORT EP name such as "
        "CUDAExecutionProvider, or a plugin EP registered with --ep-library NAME=PATH)")


def resolve_provider(name: str, options: Optional[Mapping[str, Any]] = None) -> ResolvedProvider:
    """Look `name` up in the table and check that this onnxruntime offers it (raises a typed error if not)."""
    spec = get_spec(name)
    ort = _ort()
    merged = {**spec.default_options, **{k: str(v) for k, v in (options or {}).items()}}
    if spec.ep in ort.get_available_providers():
        return ResolvedProvider(spec, merged, plugin=False)
    if hasattr(ort, "get_ep_devices") and any(d.ep_name == spec.ep for d in ort.get_ep_devices()):
        return ResolvedProvider(spec, merged, plugin=True)
    raise ProviderUnavailableError(
        f"execution provider {spec.name!r} ({spec.ep}) is not available in this onnxruntime {ort.__version__} "
        f"build (available: {', '.join(available_providers())}); it comes with: {spec.install}")


def provider_table() -> list[dict[str, Any]]:
    """The table as rows (name, ep, available, install, default_options) for `--list-providers` style output."""
    avail = set(available_providers())
    return [dict(name=s.name, ep=s.ep, label=s.display, available=s.ep in avail, install=s.install,
                 default_options=dict(s.default_options)) for s in PROVIDERS.values()]
