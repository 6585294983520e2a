"""Decode-step latency of decoder ONNX files against the length of the cached context.

    python benchmarks/decode_context.py A.onnx B.onnx [...] [--context 96,512,2000] [--threads 1]
        [--rounds 8] [--steps 10] [-o result.json]

For each context length P: one prefill of P random tokens (B = 1, through the first file) gives a real KV
cache; then one decode step (1 new token, P cached) is timed on every file, the files alternating, `--rounds`
rounds of `--steps` runs each; median and min per file are printed and written as JSON. All files must share
the interface (fg-edge causal-lm graphs: input_ids, attention_mask, position_ids, past_key_values.*).

Used for the grouped-attention rewrite (fg_edge/exporters/grouped_attention.py): compile the same model_dir
at the commit before it and after it, then pass both model files.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import onnxruntime as ort


def _session(path: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _prefill(sess, length: int, rng) -> dict:
    feeds = {"input_ids": rng.integers(0, 5000, (1, length)).astype(np.int64),
             "attention_mask": np.ones((1, length), np.int64),
             "position_ids": np.arange(length, dtype=np.int64)[None]}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    return feeds


def _step(sess, prefill: dict, rng) -> dict:
    outs = sess.run(None, prefill)
    length = prefill["input_ids"].shape[1]
    feeds = {"input_ids": rng.integers(0, 5000, (1, 1)).astype(np.int64),
             "attention_mask": np.ones((1, length + 1), np.int64),
             "position_ids": np.array([[length]], np.int64)}
    for o, value in zip(sess.get_outputs(), outs):
        if o.name.startswith("present."):
            feeds[o.name.replace("present.", "past_key_values.", 1)] = value
    return feeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--context", default="96,512,2000")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    sessions = {f: _session(f, args.threads) for f in args.files}
    first = sessions[args.files[0]]
    rng = np.random.default_rng(0)
    rows = []
    for length in (int(c) for c in args.context.split(",")):
        feeds = _step(first, _prefill(first, length, rng), rng)
        times: dict[str, list[float]] = {f: [] for f in args.files}
        for _ in range(args.rounds):
            for f, sess in sessions.items():
                sess.run(None, feeds)
                t = time.perf_counter()
                for _ in range(args.steps):
                    sess.run(None, feeds)
                times[f].append((time.perf_counter() - t) / args.steps * 1e3)
        for f, ts in times.items():
            row = {"file": f, "context": length, "median_ms": round(float(np.median(ts)), 3),
                   "min_ms": round(min(ts), 3)}
            rows.append(row)
            print(json.dumps(row))
    if args.output:
        with open(args.output, "w") as fh:
            json.dump({"threads": args.threads, "rounds": args.rounds, "steps": args.steps,
                       "machine": platform.processor() or platform.machine(), "onnxruntime": ort.__version__,
                       "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
