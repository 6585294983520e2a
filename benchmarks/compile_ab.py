"""Compile time of two commits, alternating, on the same machine: how a change moves `fg-edge compile`.

    python benchmarks/compile_ab.py OLD_REV [NEW_REV] --rounds 2 [--out FILE] -- COMPILE ARGS...

Each revision is checked out once (`git worktree add --detach`, under --work) and runs `python -m fg_edge.cli
compile ARGS -o <work>/<rev>/out --overwrite --no-progress` with the current interpreter, from its own tree (so
that tree's fg_edge, and its worker processes', is the one imported). The runs alternate old, new, old, new, ...
so that the machine's drift (this 2-core VM's speed moves by 10-20 % between minutes) falls on both sides alike.
Every run is timed by benchmarks/timed.py (wall time, peak RSS of the largest process of the tree); the stage
times come from each run's compile_report.json. NEW_REV defaults to the working tree as it is (uncommitted
changes included), labelled "worktree".

Example (the GPTQ compile of the synthetic-gate SmolLM2 of benchmarks/compile_smollm2.sh):

    python benchmarks/compile_ab.py 7817578 HEAD --rounds 2 --out benchmarks/results/smollm2_compile_ab.json -- \\
        /tmp/fg_bench_smollm2/model_dir --quantize int4 --quant-method gptq \\
        --calibration ../shared/data/SST-2/train.tsv
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def _tree(rev: str, work: Path) -> tuple[str, Path]:
    """(label, source tree) of `rev`; None: the working tree itself."""
    if rev is None:
        return "worktree", ROOT
    sha = _git("rev-parse", "--short", rev)
    path = work / f"tree-{sha}"
    if not path.is_dir():
        _git("worktree", "add", "--detach", str(path), sha)
    return sha, path


def _absolute(args: list[str]) -> list[str]:
    """The compile arguments with existing relative paths made absolute (each run starts in its own tree)."""
    return [str(Path(a).resolve()) if not a.startswith("-") and Path(a).exists() else a for a in args]


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit("usage: compile_ab.py OLD_REV [NEW_REV] [--rounds N] [--out FILE] -- COMPILE ARGS...")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new", nargs="?")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default="/tmp/fg_compile_ab")
    ap.add_argument("--out")
    opts = ap.parse_args(argv[:cut])
    compile_args = _absolute(argv[cut + 1:])
    if not compile_args:
        raise SystemExit("give the compile arguments after --: MODEL_DIR and options (not -o)")
    work = Path(opts.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sides = [_tree(opts.old, work), _tree(opts.new, work)]
    runs: dict[str, list[dict]] = {label: [] for label, _ in sides}
    for r in range(opts.rounds):
        for label, tree in sides:
            out, timing = work / label / "out", work / label / f"time-{r}.json"
            timing.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, str(ROOT / "benchmarks" / "timed.py"), str(timing), "--", sys.executable, "-m",
                   "fg_edge.cli", "-q", "compile", *compile_args, "-o", str(out), "--overwrite", "--no-progress"]
            print(f"round {r + 1}/{opts.rounds}: {label}", flush=True)
            env = {**os.environ, "PYTHONPATH": str(tree)}
            if subprocess.call(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL) != 0:
                raise SystemExit(f"the compile of {label} failed: {' '.join(cmd)}")
            run = json.loads(timing.read_text())
            report = json.loads((out / "compile_report.json").read_text())
            runs[label].append({"wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"],
                                "cpu_s": run.get("cpu_s"), "steal_s": run.get("steal_s"),
                                "stages_s": report.get("timings_s", {})})
    result = {"command": "python benchmarks/compile_ab.py " + " ".join(sys.argv[1:]),
              "compile_args": compile_args, "order": "alternating, old first in every round",
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "sides": {label: {"runs": got, "median_wall_s": statistics.median(r["wall_s"] for r in got),
                                "median_cpu_s": statistics.median(r["cpu_s"] for r in got),
                                "max_peak_rss_mib": max(r["peak_rss_mib"] for r in got)}
                        for label, got in runs.items()}}
    text = json.dumps(result, indent=2) + "\n"
    if opts.out:
        Path(opts.out).write_text(text)
    for label, side in result["sides"].items():
        print(f"{label}: wall {', '.join(str(r['wall_s']) for r in side['runs'])} s "
              f"(median {side['median_wall_s']}), CPU {', '.join(str(r['cpu_s']) for r in side['runs'])} s "
              f"(median {side['median_cpu_s']}), steal {', '.join(str(r['steal_s']) for r in side['runs'])} s, "
              f"peak RSS up to {side['max_peak_rss_mib']} MiB")


if __name__ == "__main__":
    main()
