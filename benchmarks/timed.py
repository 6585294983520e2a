"""Run a command, record its wall time, peak RSS (the child's ru_maxrss), CPU time (user + system of the child
and every process it waited for) and the machine's steal time meanwhile (/proc/stat: time the hypervisor ran
something else while this VM's CPUs wanted to run; where the wall time drifts and the CPU time does not, that
is where it went) as JSON.

    python benchmarks/timed.py RESULT.json -- CMD ARGS...
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time


def _steal_s():
    """Seconds of steal time summed over the CPUs so far (/proc/stat), None where there is no such file."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def main() -> None:
    out, sep, *cmd = sys.argv[1:]
    if sep != "--" or not cmd:
        raise SystemExit("usage: timed.py RESULT.json -- CMD ARGS...")
    steal0, t0 = _steal_s(), time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    steal1 = _steal_s()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kib = usage.ru_maxrss
    result = {"command": " ".join(cmd), "exit_code": rc, "wall_s": round(wall, 2), "peak_rss_mib": round(peak_kib / 1024, 1),
              "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
              "steal_s": None if steal0 is None or steal1 is None else round(steal1 - steal0, 2),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    with open(out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result))
    sys.exit(rc)


if __name__ == "__main__":
    main()
