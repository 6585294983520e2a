"""What a benchmark records about the machine: platform / CPU, an RSS probe, and latency statistics."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np


def memory_probe() -> tuple[str, Callable[[], float]]:
    """(method, fn returning MB): psutil current RSS if installed, else resource peak RSS."""
    try:
        import psutil

        proc = psutil.Process()
        return "psutil current RSS delta", lambda: proc.memory_info().rss / 2**20
    except ImportError:
        pass
    try:
        import resource

        scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024       # bytes on macOS, KiB on Linux
        return "resource.getrusage peak RSS delta", lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    except ImportError:  # pragma: no cover - Windows without psutil
        return "unavailable", lambda: float("nan")


def machine_info() -> dict[str, Any]:
    return {"platform": platform.platform(), "system": platform.system(), "machine": platform.machine(),
            "processor": platform.processor() or _cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version()}


def load_average() -> Optional[list[float]]:
    """The 1 / 5 / 15-minute load averages (None where the OS has none): other work on the machine inflates
    latencies, so bench.json records them at the start and the end of the run."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def busy_note(machine: dict) -> Optional[str]:
    """A warning when the 1-minute load was above the CPU count at the start or the end of the run."""
    cpus = machine.get("cpu_count") or 1
    loads = [x[0] for x in (machine.get("load_average_start"), machine.get("load_average_end")) if x]
    if loads and max(loads) > cpus:
        return (f"the machine was busy (1-minute load {max(loads):.1f} on {cpus} CPUs): other work inflated "
                f"these latencies; rerun on an idle machine before trusting the ratios")
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def latency_stats(seconds: Sequence[float]) -> dict[str, Any]:
    """Timings in seconds -> {median, p90, p99, mean, min, max} in ms, plus n."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
            "mean": float(ms.mean()), "min": float(ms.min()), "max": float(ms.max()), "n": int(ms.size)}
