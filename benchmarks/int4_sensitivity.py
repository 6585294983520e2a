"""Where a decoder's int4 perplexity goes, and what the --mixed-bits policies buy back.

    python benchmarks/int4_sensitivity.py COMPILED_DIR [--data FILE] [--max-rows 300] [--work DIR] [--out FILE]

COMPILED_DIR: a decoder compiled with `--quantize int4 --mixed-bits none` (every projection of model.int4.onnx in
4 bits; the LM head in 8 bits as by default). From its model.onnx (fp32) and model.int4.onnx it builds, under
--work, graphs that differ in which MatMuls are quantized, and measures each one's perplexity on the first
--max-rows texts of --data against the fp32 graph (fg_edge.runtimes.evaluate.perplexity, 2 threads), and its
decode speed (B=1, 32-token prompt, 64 greedy steps, 1 thread, median of 3 runs taken in rotation):

* `int4`: model.int4.onnx as it is; `fp32`: model.onnx;
* `only <group> int4`: that group's MatMuls as in model.int4.onnx, every other projection back to fp32 (the LM
  head stays 8-bit): how much of the int4 loss each kind of projection carries;
* `mixed <policy>`: model.int4.onnx with the MatMuls fg_edge.exporters.mixed_bits promotes under that policy
  re-quantized to 8-bit RTN symmetric, as `fg-edge compile --mixed-bits <policy>` writes them.

Writes a JSON list of {variant, perplexity, change_vs_fp32, tokens, decode_tokens_per_s}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SST2_DEV = Path(os.environ.get("SST2_DIR", ROOT.parent / "shared" / "data" / "SST-2")) / "dev.tsv"
#: projection groups by module name (LLaMA-family names; a group that matches nothing is skipped)
GROUPS = {"q/k/v": r"/self_attn/(q|k|v)_proj/", "o": r"/self_attn/o_proj/", "gate/up": r"/mlp/(gate|up)_proj/",
          "down": r"/mlp/down_proj/"}


def _graphs(cdir: Path):
    import onnx

    return onnx.load(str(cdir / "model.int4.onnx")), onnx.load(str(cdir / "model.onnx"))


def _folder(cdir: Path, work: Path, name: str, proto) -> Path:
    """A compiled folder whose model.int4.onnx is `proto`, every other file linked from `cdir`."""
    import onnx

    out = work / re.sub(r"[^A-Za-z0-9]+", "_", name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for f in cdir.iterdir():
        if not f.name.startswith("model.int4.onnx"):
            os.symlink(f.resolve(), out / f.name)
    onnx.save(proto, str(out / "model.int4.onnx"), save_as_external_data=True, location="model.int4.onnx.data")
    return out


def _with_fp32(q, f, keep_int4) -> object:
    """`q` with every quantized projection whose fp32 name fails `keep_int4` replaced by its fp32 MatMul."""
    import onnx

    fnodes = {n.name: n for n in f.graph.node}
    finits = {t.name: t for t in f.graph.initializer}
    g = onnx.ModelProto()
    g.CopyFrom(q)
    nodes, used = [], set()
    for n in g.graph.node:
        orig = fnodes.get(n.name[:-3]) if n.op_type == "MatMulNBits" and n.name.endswith("_Q4") else None
        if orig is not None and not keep_int4(orig.name):
            nodes.append(orig)
            used.add(orig.input[1])
        else:
            nodes.append(n)
    g.graph.ClearField("node")
    g.graph.node.extend(nodes)
    g.graph.initializer.extend(finits[name] for name in used)
    live = {i for n in nodes for i in n.input}
    kept = [t for t in g.graph.initializer if t.name in live]
    g.graph.ClearField("initializer")
    g.graph.initializer.extend(kept)
    return g


def _mixed(q, f, policy: str, layout: dict):
    """`q` with the MatMuls `policy` promotes in 8 bits (RTN symmetric, as weight_only's 8-bit pass)."""
    from fg_edge.exporters.graph_rewrites import LM_HEAD_NODE
    from fg_edge.exporters.mixed_bits import promoted_nodes
    from fg_edge.exporters.weight_only import WeightOnlyConfig, _algo_config, _nbits_module

    names = set(promoted_nodes(f, policy, layout)["names"])
    g = _with_fp32(q, f, lambda name: name not in names)
    with _nbits_module() as nbits:
        cfg = WeightOnlyConfig(bits=8, method="rtn", symmetric=True).validate()
        quantizer = nbits.MatMulNBitsQuantizer(g, algo_config=_algo_config(nbits, cfg), nodes_to_exclude=[LM_HEAD_NODE])
        quantizer.process()
    return quantizer.model.model, len(names)


def _decode_ms(runner, prompt: int = 32, steps: int = 64) -> float:
    """Seconds per greedy step after a `prompt`-token prefill (batch 1, EOS ignored)."""
    model = runner.model
    ids = np.arange(3, 3 + prompt, dtype=np.int64)[None]
    mask = np.ones_like(ids)
    logits, past = model.decoder_step(ids, mask, np.arange(prompt, dtype=np.int64)[None], model.empty_past(1))
    t0 = time.perf_counter()
    for k in range(steps):
        tok = np.array([[int(logits[0, -1].argmax())]], dtype=np.int64)
        mask = np.ones((1, prompt + k + 1), dtype=np.int64)
        logits, past = model.decoder_step(tok, mask, np.array([[prompt + k]], dtype=np.int64), past)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compiled_dir", type=Path)
    ap.add_argument("--data", type=Path, default=SST2_DEV)
    ap.add_argument("--max-rows", type=int, default=300)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fg_int4_sensitivity"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/decoder/int4_sensitivity.json")
    args = ap.parse_args()

    from fg_edge.data.readers import load_texts
    from fg_edge.exporters.mixed_bits import layer_modules
    from fg_edge.runtimes.evaluate import perplexity
    from fg_edge.runtimes.runner import Runner

    cdir = args.compiled_dir.resolve()
    report = json.loads((cdir / "compile_report.json").read_text())
    policy = report["quantization"]["settings"].get("mixed_bits", {}).get("policy", "none")
    if policy != "none":
        raise SystemExit(f"{cdir}: compiled with --mixed-bits {policy}; compile with --mixed-bits none so "
                         f"model.int4.onnx is all 4-bit")
    layout = layer_modules(report["architecture"].get("fields"))
    texts = load_texts(str(args.data), what="evaluation file").texts[:args.max_rows]
    q, f = _graphs(cdir)
    folders = {"fp32": (cdir, "compiled"), "int4": (cdir, "int4")}
    for group, pattern in GROUPS.items():
        if any(re.search(pattern, n.name) for n in f.graph.node if n.op_type == "MatMul"):
            folders[f"only {group} int4"] = (_folder(cdir, args.work, group, _with_fp32(
                q, f, lambda name, p=pattern: re.search(p, name) is not None)), "int4")
    promoted = {}
    for mixed in ("edges", "llama.cpp"):
        proto, promoted[mixed] = _mixed(q, f, mixed, layout)
        folders[f"mixed {mixed}"] = (_folder(cdir, args.work, mixed, proto), "int4")
    del q, f
    rows = []
    for name, (folder, variant) in folders.items():
        ppl = perplexity(Runner(folder, model=variant, threads=2), texts)
        rows.append({"variant": name, "perplexity": ppl["value"], "tokens": ppl["tokens"],
                     **({"promoted_matmuls": promoted[name[6:]]} if name.startswith("mixed ") else {})})
        print(f"{name}: perplexity {ppl['value']:.3f}", flush=True)
    runners = {name: Runner(folder, model=variant, threads=1) for name, (folder, variant) in folders.items()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(3):
        for name, runner in runners.items():
            times[name].append(_decode_ms(runner))
    fp32 = rows[0]["perplexity"]
    for row in rows:
        row["change_vs_fp32"] = row["perplexity"] / fp32 - 1
        row["decode_tokens_per_s"] = 1.0 / statistics.median(times[row["variant"]])
    record = {"compiled_dir": str(cdir), "data": str(args.data), "max_rows": args.max_rows,
              "command": " ".join(sys.argv), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for row in rows:
        print(f"{row['variant']:<22} {row['perplexity']:9.3f} {100 * row['change_vs_fp32']:+6.2f} % "
              f"{row['decode_tokens_per_s']:6.1f} tok/s")


if __name__ == "__main__":
    main()
