"""Weight-only quantization settings compared on one decoder graph: perplexity and top-1 agreement with fp32.

Each setting quantizes COMPILED_DIR/model.onnx with fg_edge.exporters.weight_only and is scored teacher-forced
on the first ROWS texts of DATA (one forward per text): perplexity, the share of positions whose argmax equals
the fp32 graph's, the max |logit difference|, and the median time of one cached decode step (batch 1, 1 thread).
This is what chose fg-edge's int4 defaults (README).

    python benchmarks/weight_only_methods.py /tmp/fg_dense_smollm2/compiled ../shared/data/SST-2/dev.tsv \
        benchmarks/results/decoder/smollm2_weight_only_methods.json

where /tmp/fg_dense_smollm2/compiled is `fg-edge compile` of `benchmarks/make_gated.py
HuggingFaceTB/SmolLM2-135M-Instruct DIR --close 0 --open-low 1` (every gate exactly open: the original model).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SETTINGS = [
    dict(method="rtn", symmetric=False, lm_head_bits=4),
    dict(method="rtn", symmetric=True, lm_head_bits=8),
    dict(method="hqq", lm_head_bits=8, integer_zero_points=False),
    dict(method="hqq", lm_head_bits=8),                                 # the int4 default
    dict(method="hqq", lm_head_bits=8, accuracy_level=1),
    dict(method="hqq", lm_head_bits=4),
    dict(method="hqq", include_lm_head=False),
    dict(bits=8),
]


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _logits(path: Path, docs: list[np.ndarray], threads: int) -> list[np.ndarray]:
    s = _session(path, threads)
    out = []
    for ids in docs:
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
        for i in s.get_inputs():
            if i.name.startswith("past"):
                feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        out.append(s.run(["logits"], feeds)[0][0])
    return out


def _decode_ms(path: Path, steps: int = 12) -> float:
    """Median ms of one cached decode step (batch 1, past 32 tokens, 1 thread)."""
    s = _session(path, 1)
    ids = np.arange(100, 132, dtype=np.int64)[None]
    past = [i for i in s.get_inputs() if i.name.startswith("past")]
    names = [o.name for o in s.get_outputs()]
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(32)[None],
             **{i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in past}}
    outs, times = s.run(None, feeds), []
    for k in range(steps):
        f = {"input_ids": np.array([[5]], np.int64), "attention_mask": np.ones((1, 33 + k), np.int64),
             "position_ids": np.array([[32 + k]]),
             **{i.name: outs[names.index(i.name.replace("past_key_values", "present"))] for i in past}}
        t0 = time.perf_counter()
        outs = s.run(None, f)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _perplexity(docs: list[np.ndarray], logits: list[np.ndarray]) -> float:
    nll = n = 0.0
    for ids, lg in zip(docs, logits):
        x = lg[:-1].astype(np.float64)
        x -= x.max(-1, keepdims=True)
        lp = x - np.log(np.exp(x).sum(-1, keepdims=True))
        t = ids[0, 1:]
        nll -= lp[np.arange(t.size), t].sum()
        n += t.size
    return float(np.exp(nll / n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("compiled_dir", type=Path)
    ap.add_argument("data", type=Path, help="TSV with a text column first (SST-2 dev.tsv)")
    ap.add_argument("output", type=Path)
    ap.add_argument("--rows", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from tokenizers import Tokenizer

    from fg_edge.exporters.weight_only import quantize_weight_only

    tok = Tokenizer.from_file(str(args.compiled_dir / "tokenizer.json"))
    texts = [line.split("\t")[0] for line in args.data.read_text().splitlines()[1:]][: args.rows]
    docs = [np.array(tok.encode(t).ids, dtype=np.int64)[None] for t in texts]
    src = args.compiled_dir / "model.onnx"
    ref = _logits(src, docs, args.threads)
    rows = [{"setting": "fp32", "perplexity": _perplexity(docs, ref), "decode_ms": _decode_ms(src)}]
    print(f"fp32: perplexity {rows[0]['perplexity']:.3f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for setting in SETTINGS:
            t0 = time.perf_counter()
            used = quantize_weight_only(src, Path(tmp) / "q.onnx", **setting)
            seconds = time.perf_counter() - t0
            got = _logits(Path(tmp) / "q.onnx", docs, args.threads)
            agree = float(np.mean(np.concatenate([g.argmax(-1) == r.argmax(-1) for g, r in zip(got, ref)])))
            row = {"setting": setting, "resolved": {k: used.get(k) for k in ("bits", "method", "block_size", "symmetric",
                                                                              "accuracy_level", "lm_head",
                                                                              "zero_points")},
                   "perplexity": _perplexity(docs, got), "top1_agreement": agree,
                   "max_abs_logit_diff": float(max(np.abs(g - r).max() for g, r in zip(got, ref))),
                   "quantize_s": round(seconds, 1), "decode_ms": _decode_ms(Path(tmp) / "q.onnx")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"compiled_dir": str(args.compiled_dir), "data": str(args.data),
                                       "load_average_end": list(os.getloadavg()),
                                       "rows": len(docs), "tokens": int(sum(d.size for d in docs)),
                                       "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
