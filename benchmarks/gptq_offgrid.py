"""Int4 methods on SmolLM2-135M with its weights off the packaged Q4_1 grid: HQQ vs GPTQ settings.

    python benchmarks/gptq_offgrid.py COMPILED_DIR [--work /tmp/fg_gptq_offgrid] [--out FILE] [--only 5,6,7]

COMPILED_DIR: SmolLM2-135M compiled with every gate open (e.g. benchmarks/decoder_compression.py's
dense/compiled). The packaged SmolLM2 is a dequantized Q4_1 GGUF, so its weights sit exactly on a 4-bit block-32
grid and any int4 method looks nearly lossless on it. Folding gates and merging adapters move a compiled model's
weights off that grid; to measure the methods where that matters without training, every projection's input
rows are scaled by U(0.85, 1.15) (seed 0; what folded input gates do), the LM head left as it is. Each method
quantizes this fp32 graph (4-bit blocks of 32, 8-bit RTN head, accuracy level 4) and `fg-edge eval` measures
perplexity on the 872 SST-2 dev sentences against the perturbed fp32 graph. quantize_s is wall time on the
2-core machine while a training run shared it (compare the rows with each other only). GPTQ calibrates on the SST-2
training file, packed into the chunk length each row names (fg-edge compile uses gptq.GPTQ_CHUNK_TOKENS).

Writes benchmarks/results/decoder/smollm2_gptq_offgrid.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("SST2_DIR", ROOT.parent / "shared" / "data" / "SST-2"))
#: (name, method, GPTQ settings): act_order, clip_search, calibration tokens, tokens per chunk
VARIANTS = [("hqq", "hqq", None),
            ("gptq in order, min/max grid, 4096 tokens in 256-token chunks", "gptq", (False, False, 4096, 256)),
            ("gptq act-order, min/max grid, 4096 tokens in 256-token chunks", "gptq", (True, False, 4096, 256)),
            ("gptq act-order, clipped grid, 4096 tokens in 256-token chunks", "gptq", (True, True, 4096, 256)),
            ("gptq act-order, clipped grid, 8192 tokens in 256-token chunks", "gptq", (True, True, 8192, 256)),
            ("gptq act-order, clipped grid, 4096 tokens in 64-token chunks", "gptq", (True, True, 4096, 64)),
            ("gptq act-order, clipped grid, 4096 tokens in 32-token chunks", "gptq", (True, True, 4096, 32)),
            ("gptq act-order, clipped grid, 4096 tokens in 16-token chunks", "gptq", (True, True, 4096, 16))]


def _perturbed(src: Path, dst: Path) -> None:
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    proto = onnx.load(str(src / "model.onnx"))
    inits = {t.name: t for t in proto.graph.initializer}
    done = 0
    for node in proto.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and node.name != "fg_edge/lm_head":
            t = inits[node.input[1]]
            w = numpy_helper.to_array(t)
            if w.ndim == 2:
                w = w * rng.uniform(0.85, 1.15, size=(w.shape[0], 1)).astype(np.float32)
                t.CopyFrom(numpy_helper.from_array(w, t.name))
                done += 1
    dst.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(dst / "model.onnx"))
    for f in src.iterdir():     # tokenizer, config, compile_report: what `fg-edge eval` reads
        if f.suffix != ".onnx" and not f.name.endswith(".data") and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    print(f"scaled the input rows of {done} MatMul weights", flush=True)


def _ppl(cdir: Path, model: str, data: Path = SST2 / "dev.tsv") -> float:
    out = subprocess.run([sys.executable, "-m", "fg_edge.cli", "eval", str(cdir), "--data", str(data),
                          "--models", model, "--threads", "1", "--json", "-"], capture_output=True, text=True,
                         check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout)["results"][model]["value"]


def _docs_row(vdir: Path, docs: Path, result: dict) -> dict:
    ppl = _ppl(vdir, "int4", docs)
    return {"python_docs_perplexity": ppl,
            "python_docs_vs_fp32": round(ppl / result["fp32_python_docs_perplexity"] - 1, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compiled_dir", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fg_gptq_offgrid"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decoder" /
                    "smollm2_gptq_offgrid.json")
    ap.add_argument("--only", default="", help="comma-separated indices into VARIANTS to measure (default: all)")
    ap.add_argument("--python-docs", action="store_true",
                    help="also perplexity on prose of Python's own documentation (longer texts, another domain; "
                         "benchmarks/decoder_compression.py's held-out text)")
    opts = ap.parse_args()
    only = {int(i) for i in opts.only.split(",") if i.strip()}
    docs = None
    if opts.python_docs:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from decoder_compression import _python_docs_text

        docs = _python_docs_text(opts.work / "python_docs.txt")
    from transformers import AutoTokenizer

    import fg_edge.exporters.gptq as gptq
    from fg_edge.exporters.quantize import read_calibration_texts
    from fg_edge.exporters.weight_only import quantize_weight_only

    fp = opts.work / "fp32"
    if not (fp / "model.onnx").is_file():
        _perturbed(opts.compiled_dir, fp)
    perturbed = len(gptq.gptq_targets(__import__("onnx").load(str(fp / "model.onnx")), ["fg_edge/lm_head"]))
    tok = AutoTokenizer.from_pretrained(str(opts.compiled_dir))
    kv = [tuple(s) for s in json.loads(
        {p.key: p.value for p in __import__("onnx").load(str(fp / "model.onnx"), load_external_data=False)
         .metadata_props}["fg_edge.kv_shapes"])]
    texts = read_calibration_texts(SST2 / "train.tsv", gptq.GPTQ_CALIBRATION_TEXTS)
    result = {"compiled_dir": str(opts.compiled_dir), "perturbed_matmuls": perturbed,
              "fp32_perplexity": _ppl(fp, "compiled"), "rows": []}
    if docs is not None:
        result["fp32_python_docs_perplexity"] = _ppl(fp, "compiled", docs)
    original = gptq.gptq_quantize_graph
    for k, (name, method, settings) in enumerate(VARIANTS):
        if only and k not in only:
            continue
        done = opts.work / f"v{k}.json"     # a re-run measures only the variants not measured yet
        vdir = opts.work / f"v{k}"
        if done.is_file() and json.loads(done.read_text())["variant"] == name:
            row = json.loads(done.read_text())
            if docs is not None and "python_docs_perplexity" not in row:
                row.update(_docs_row(vdir, docs, result))
                done.write_text(json.dumps(row) + "\n")
            result["rows"].append(row)
            continue
        calib = None
        if settings is not None:
            act, clip, tokens, chunk = settings
            feeds = gptq.packed_decoder_feeds(texts, tok, ["input_ids", "attention_mask", "position_ids"], kv,
                                              chunk=chunk, max_tokens=tokens)
            calib = gptq.save_feeds(feeds, opts.work / "calibration.npz")
            gptq.gptq_quantize_graph = (lambda *a, _a=act, _c=clip, **kw:
                                        original(*a, **{**kw, "act_order": _a, "clip_search": _c}))
        vdir.mkdir(exist_ok=True)
        for f in fp.iterdir():
            if f.name != "model.onnx" and not (vdir / f.name).exists():
                (vdir / f.name).symlink_to(f.resolve())
        t0 = time.time()
        quantize_weight_only(fp / "model.onnx", vdir / "model.int4.onnx", method=method, calibration=calib)
        seconds = round(time.time() - t0, 1)
        gptq.gptq_quantize_graph = original
        ppl = _ppl(vdir, "int4")
        row = {"variant": name, "perplexity": ppl, "vs_fp32": round(ppl / result["fp32_perplexity"] - 1, 4),
               "quantize_s": seconds}
        if docs is not None:
            row.update(_docs_row(vdir, docs, result))
        print(json.dumps(row), flush=True)
        done.write_text(json.dumps(row) + "\n")
        result["rows"].append(row)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
