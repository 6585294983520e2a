"""Where does the time go? ORT's profiler per op type, compiled vs dense baseline, on one compiled_dir.

    python benchmarks/profile_ops.py /tmp/fg_bench_minilm/compiled --variant int8 --batch 1 --seq 128

Prints, per ONNX op type, the summed kernel time of `runs` runs for the compiled and the dense model and
their ratio, so a speed-up below the FLOP ceiling can be traced to the ops that do not shrink with pruning.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort

FILES = {"fp32": ("model.onnx", "baseline.onnx"), "int8": ("model.int8.onnx", "baseline.int8.onnx")}


def profile(path: str, feeds: dict, runs: int, threads: int) -> dict[str, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "prof")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feeds)
    sess.end_profiling()
    opts.enable_profiling = True
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    for _ in range(3):  # warm-up (profiled too, dropped below by taking the last `runs`)
        sess.run(None, feeds)
    for _ in range(runs):
        sess.run(None, feeds)
    events = json.load(open(sess.end_profiling()))
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3 / (runs + 3)
    return dict(per_op)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("compiled_dir")
    ap.add_argument("--variant", choices=sorted(FILES), default="int8")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    compiled, dense = (os.path.join(args.compiled_dir, f) for f in FILES[args.variant])
    rng = np.random.default_rng(0)
    sess = ort.InferenceSession(compiled, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = rng.integers(1000, 2000, (args.batch, args.seq)).astype(np.int64)
        else:
            feeds[i.name] = np.ones((args.batch, args.seq), np.int64) if i.name == "attention_mask" \
                else np.zeros((args.batch, args.seq), np.int64)
    a = profile(compiled, feeds, args.runs, args.threads)
    b = profile(dense, feeds, args.runs, args.threads)
    ops = sorted(set(a) | set(b), key=lambda k: -b.get(k, 0))
    print(f"{'op':28s} {'dense ms':>9s} {'compiled ms':>12s} {'ratio':>7s} {'dense share':>12s}")
    tb, ta = sum(b.values()), sum(a.values())
    for k in ops:
        da, db = a.get(k, 0.0), b.get(k, 0.0)
        print(f"{k:28s} {db:9.3f} {da:12.3f} {db / da if da else float('inf'):7.2f} {100 * db / tb:11.1f}%")
    print(f"{'total (kernel time)':28s} {tb:9.3f} {ta:12.3f} {tb / ta:7.2f}")


if __name__ == "__main__":
    main()
