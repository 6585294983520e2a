"""Run a command, record its wall time and peak RSS (the child's ru_maxrss) as JSON.

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


def main() -> None:
    out, sep, *cmd = sys.argv[1:]
    if sep != "--" or not cmd:
        raise SystemExit("usage: timed.py RESULT.json -- CMD ARGS...")
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {"command": " ".join(cmd), "exit_code": rc, "wall_s": round(wall, 2), "peak_rss_mib": round(peak_kib / 1024, 1),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    with open(out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result))
    sys.exit(rc)


if __name__ == "__main__":
    main()
