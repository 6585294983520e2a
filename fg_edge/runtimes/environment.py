"""What `fg-edge env` reports: versions, execution providers, threads — what a bug report needs. Torch-free.

Package versions come from installed metadata (`importlib.metadata`), so nothing heavy is imported; ONNX Runtime
is imported to list the execution providers this build offers.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any, Optional

#: distributions worth naming, device runtime first, then the training / compile install (`fg-edge[train]`)
PACKAGES = ("fg-edge", "onnxruntime", "onnxruntime-gpu", "numpy", "tokenizers", "click", "psutil", "tqdm",
            "torch", "transformers", "accelerate", "safetensors", "onnx", "optimum", "optimum-onnx", "peft",
            "matplotlib", "gguf")
#: environment variables that change threading or hub access
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ORT_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE",
            "HF_HOME", "TRANSFORMERS_OFFLINE")
TRAIN_PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "onnx", "optimum-onnx")


def package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    """A JSON-able description of this machine and install."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "env": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
    }
    info["training_install"] = all(info["packages"][n] for n in TRAIN_PACKAGES)
    try:
        from fg_edge.runtimes.providers import available_providers

        info["execution_providers"] = available_providers()
    except Exception as exc:  # noqa: BLE001 - an env report must not fail on a broken ORT; it reports it
        info["execution_providers"] = []
        info["onnxruntime_error"] = f"{type(exc).__name__}: {exc}"
    return info


def format_environment(info: dict[str, Any]) -> str:
    width = max(len(n) for n in PACKAGES)
    lines = [f"python       {info['python']} ({info['platform']}, {info['cpu_count']} CPUs)"]
    lines += [f"  {name:<{width}}  {version}" for name, version in info["packages"].items() if version]
    missing = [name for name, version in info["packages"].items() if not version]
    if missing:
        lines.append(f"  not installed: {', '.join(missing)}")
    lines.append("training install (train / inspect / compile): "
                 + ("yes" if info["training_install"] else "no — pip install 'fg-edge[train]'"))
    lines.append(f"execution providers: {', '.join(info['execution_providers']) or 'none'}")
    if "onnxruntime_error" in info:
        lines.append(f"  onnxruntime: {info['onnxruntime_error']}")
    for name, value in info["env"].items():
        lines.append(f"{name}={value}")
    return "\n".join(lines)


def version_line() -> str:
    """`fg-edge --version`: fg-edge and the versions of the libraries that decide its numbers."""
    from fg_edge import __version__

    parts = [f"fg-edge {__version__}"]
    for name in ("onnxruntime", "onnxruntime-gpu", "torch", "transformers"):
        v = package_version(name)
        if v:
            parts.append(f"{name} {v}")
    return ", ".join(parts)
