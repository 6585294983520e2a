"""The accuracy study (issue: accuracy at sparsity): all-MiniLM-L6-v2 on SST-2, one protocol for every method.

    python benchmarks/accuracy/study.py                  # the whole study (about 1 h 45 min on 2 cores)
    python benchmarks/accuracy/study.py --quick          # a smoke run: 1 seed, tiny budget (minutes)

Protocol
- data: N_TRAIN training rows and N_VAL validation rows drawn (seed 0, disjoint) from SST-2 train.tsv; the
  validation rows pick every method's checkpoint; the 872 GLUE dev rows are the test set, seen only by the
  final evaluation. Every method gets the same rows, steps, batch size, max length and seeds.
- methods (each through the real CLI):
  dense      `fg-edge finetune` (every weight, lr 5e-5, linear decay)        — also the teacher of `fg-best`
  lora       `fg-edge finetune --lora-rank 8 --lr 5e-4` (PEFT, query/value)
  fg-best    `fg-edge train` with its defaults (block-parameter target, Lagrangian control, uniform pressure,
             frozen-mask phase, adapters on every linear) + `--teacher` (the dense model of the same seed) + `--train-base`
             (the blocks' weights train too, as in CoFi)
  fg-adapters the same with the base frozen (adapters, biases, norms and head train: ~2% of the parameters)
  fg-plain   `fg-edge train` with fg-edge 0.1's recipe: per-layer gate-count penalty λ|mean P − keep| (λ 50),
             adapters on the gated linears only, no teacher, no frozen-mask phase
  FineGates rows at 20 / 40 / 55 % of block parameters; each goes through `fg-edge compile --quantize int8`,
  `fg-edge eval` (ONNX fp32 / int8 test accuracy) and, after all training, `fg-edge bench` (B=1, S=128,
  1 thread: compiled vs its dense baseline, measured in one run).
- outputs: benchmarks/results/accuracy/sst2.json (one object per run), sst2.md (runs + headline means ± std),
  sst2.png (test accuracy against measured speed-up).

Training runs two at a time, each on one thread (two 1-thread processes do more work on these 2-core machines
than one 2-thread process); the benchmark runs alone at the end. Finished runs are kept in --work and skipped
on a rerun, so an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
FG = [sys.executable, "-m", "fg_edge.cli"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    return env


def run(cmd: list[str], log: Path) -> float:
    """Run a command (logged to `log`); returns its wall time. Raises on a non-zero exit."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    if rc:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit {rc}; see {log}")
    return time.perf_counter() - t0


# -- data ----------------------------------------------------------------------------------------------------
def carve(sst2: Path, work: Path, n_train: int, n_val: int) -> tuple[Path, Path, Path]:
    lines = (sst2 / "train.tsv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    pick = random.Random(0).sample(range(len(rows)), n_train + n_val)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    train, val = data / "train.tsv", data / "val.tsv"
    train.write_text("\n".join([header] + [rows[i] for i in pick[:n_train]]) + "\n")
    val.write_text("\n".join([header] + [rows[i] for i in pick[n_train:]]) + "\n")
    return train, val, sst2 / "dev.tsv"


# -- one run of each kind ------------------------------------------------------------------------------------
class Study:
    def __init__(self, args):
        self.a = args
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.train, self.val, self.test = carve(Path(args.sst2_dir), self.work, args.n_train, args.n_val)
        self.common = ["--train", str(self.train), "--dev", str(self.val), "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--no-progress"]

    def _done(self, name: str):
        path = self.work / name / "row.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _save(self, name: str, row: dict) -> dict:
        (self.work / name / "row.json").write_text(json.dumps(row, indent=2) + "\n")
        return row

    def finetune(self, method: str, seed: int) -> dict:
        name = f"{method}-s{seed}"
        if (row := self._done(name)) is not None:
            return row
        out = self.work / name
        out.mkdir(exist_ok=True)
        extra = ["--lora-rank", "8", "--lr", "5e-4"] if method == "lora" else []
        wall = run(FG + ["finetune", MODEL, *self.common, "--seed", str(seed), "-o", str(out / "model"),
                         "--overwrite", *extra], out / "train.log")
        meta = json.loads((out / "model" / "finetune.json").read_text())["result"]
        acc = torch_accuracy(out / "model", self.test)
        return self._save(name, {"method": method, "target": None, "seed": seed, "block_params_removed": 0.0,
                                 "params_removed": 0.0, "flop_ratio": 1.0, "latency_ratio": 1.0,
                                 "acc_torch": acc, "acc_onnx_fp32": None, "acc_onnx_int8": None,
                                 "val_acc": meta["dev_accuracy"], "trainable_params": meta["trainable_params"],
                                 "base_params": meta["base_params"], "train_seconds": meta["wall_time_s"],
                                 "command_seconds": wall})

    def gates(self, recipe: str, target: float, seed: int) -> dict:
        name = f"{recipe}-t{round(100 * target)}-s{seed}"
        if (row := self._done(name)) is not None:
            return row
        out = self.work / name
        out.mkdir(exist_ok=True)
        teacher = self.work / f"dense-s{seed}" / "model"
        if recipe == "fg-best":
            extra = ["--teacher", str(teacher), "--train-base"]
        elif recipe == "fg-adapters":   # the same, base frozen: adapters + biases + norms + head train
            extra = ["--teacher", str(teacher)]
        else:  # fg-plain: fg-edge 0.1
            extra = ["--sparsity-unit", "gates", "--sparsity-control", "penalty", "--final-fraction", "0",
                     "--adapter-modules", "gated"]
        wall = run(FG + ["train", MODEL, "--task", "classification", *self.common, "--seed", str(seed),
                         "--target-sparsity", str(target), "-o", str(out / "model_dir"), "--overwrite", *extra],
                   out / "train.log")
        run(FG + ["compile", str(out / "model_dir"), "-o", str(out / "compiled"), "--overwrite",
                  "--quantize", "int8"], out / "compile.log")
        run(FG + ["eval", str(out / "compiled"), "--data", str(self.test), "--models", "compiled,int8",
                  "--threads", "1", "--json", str(out / "eval.json")], out / "eval.log")
        meta = json.loads((out / "model_dir" / "training.json").read_text())
        report = json.loads((out / "compiled" / "compile_report.json").read_text())
        ev = json.loads((out / "eval.json").read_text())["results"]
        totals = report["totals"]
        block_before = sum(layer["params_before"] for layer in report["layers"])
        block_removed = sum(layer["params_removed"] for layer in report["layers"])
        return self._save(name, {
            "method": recipe, "target": target, "seed": seed,
            "block_params_removed": block_removed / block_before,
            "params_removed": totals["params_removed"] / totals["params_before"],
            "flop_ratio": totals["flop_ratio"], "latency_ratio": None,
            "acc_torch": torch_accuracy_gated(out / "model_dir", self.test),
            "acc_onnx_fp32": ev["compiled"]["value"], "acc_onnx_int8": ev["int8"]["value"],
            "val_acc": meta["metrics"]["dev"].get("accuracy"),
            "trainable_params": meta["trainable_params"]["count"],
            "base_params": meta["trainable_params"]["base_params"],
            "train_seconds": meta["wall_time_s"], "teacher_seconds": meta.get("teacher_seconds", 0.0),
            "command_seconds": wall})

    def per_channel_int8(self, row: dict) -> dict:
        """Extra column: test accuracy of `--quantize int8 --per-channel` (per-tensor scales cost ~1 point)."""
        name = f"{row['method']}-t{round(100 * row['target'])}-s{row['seed']}"
        out = self.work / name
        if row.get("acc_onnx_int8_per_channel") is None:
            run(FG + ["compile", str(out / "model_dir"), "-o", str(out / "compiled-pc"), "--overwrite",
                      "--quantize", "int8", "--per-channel"], out / "compile-pc.log")
            run(FG + ["eval", str(out / "compiled-pc"), "--data", str(self.test), "--models", "int8",
                      "--threads", "1", "--json", str(out / "eval-pc.json")], out / "eval-pc.log")
            ev = json.loads((out / "eval-pc.json").read_text())["results"]
            row["acc_onnx_int8_per_channel"] = ev["int8"]["value"]
            self._save(name, row)
        return row

    def bench(self, row: dict) -> dict:
        name = f"{row['method']}-t{round(100 * row['target'])}-s{row['seed']}"
        out = self.work / name
        if row.get("latency_ratio") is None:
            run(FG + ["bench", str(out / "compiled"), "--batch", "1", "--seq", "128", "--threads", "1",
                      "--providers", "cpu", "--repeats", str(self.a.bench_repeats), "--no-progress",
                      "-o", str(out / "bench")], out / "bench.log")
            rows = json.loads((out / "bench" / "bench.json").read_text())["rows"]
            fp32 = [r for r in rows if r["variant"] == "compiled"]
            row["latency_ratio"] = fp32[0]["speedup"]
            int8 = [r for r in rows if r["variant"] == "int8"]
            row["latency_ratio_int8_vs_dense_fp32"] = int8[0]["speedup_vs_dense_fp32"] if int8 else None
            self._save(name, row)
        return row


# -- torch accuracies (run in a child so the study process itself stays light) --------------------------------
_ACC = """
import sys, json, torch
torch.set_num_threads(1)
from fg_edge.data.readers import load_classification
from fg_edge.train.reference_eval import classifier_accuracy, reference_accuracy
kind, path, test = sys.argv[1:4]
data = load_classification(test, what="test file")
if kind == "hf":
    print(reference_accuracy(path, data.texts, data.labels, False, batch_size=64)["value"])
else:
    import fg_edge
    from fg_edge.model_dir import load_tokenizer
    print(classifier_accuracy(fg_edge.load(path), load_tokenizer(path), data.texts, data.labels, batch_size=64,
                              max_length=512))
"""


def _child_accuracy(kind: str, path: Path, test: Path) -> float:
    out = subprocess.check_output([sys.executable, "-c", _ACC, kind, str(path), str(test)], env=_env(), cwd=ROOT,
                                  stderr=subprocess.DEVNULL)
    return float(out.decode().strip().splitlines()[-1])


def torch_accuracy(model: Path, test: Path) -> float:
    return _child_accuracy("hf", model, test)


def torch_accuracy_gated(model_dir: Path, test: Path) -> float:
    return _child_accuracy("gated", model_dir, test)


# -- reporting -----------------------------------------------------------------------------------------------
def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def headline(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    out = []
    for (method, target), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        entry = {"method": method, "target": target, "seeds": len(rs)}
        for key in ("acc_torch", "acc_onnx_fp32", "acc_onnx_int8", "acc_onnx_int8_per_channel",
                    "block_params_removed", "params_removed",
                    "flop_ratio", "latency_ratio", "train_seconds", "trainable_params"):
            entry[key], entry[key + "_std"] = _mean_std([r.get(key) for r in rs])
        out.append(entry)
    return out


def _pct(v, std=None):
    if v is None:
        return "–"
    return f"{100 * v:.1f}" + (f" ± {100 * std:.1f}" if std else "")


def write_markdown(rows: list[dict], meta: dict, path: Path) -> None:
    lines = ["# Accuracy at sparsity: all-MiniLM-L6-v2 on SST-2", "",
             f"Command: `{meta['command']}`  ", f"Protocol: {meta['protocol']}", "",
             "## Headline (mean ± std over seeds; test = the 872 GLUE dev rows)", "",
             "| method | target | seeds | test acc torch | ONNX fp32 | ONNX int8 | int8 per-channel | block params "
             "removed | all params removed | FLOP ratio | latency ratio (B=1, S=128, 1 thread) | trainable | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = rows[0]["base_params"] if rows else 1
    for h in headline(rows):
        tgt = "–" if h["target"] is None else f"{100 * h['target']:.0f}%"
        lat = "–" if h["latency_ratio"] is None else f"{h['latency_ratio']:.2f}×"
        lines.append(f"| {h['method']} | {tgt} | {h['seeds']} | {_pct(h['acc_torch'], h['acc_torch_std'])} | "
                     f"{_pct(h['acc_onnx_fp32'])} | {_pct(h['acc_onnx_int8'])} | {_pct(h['acc_onnx_int8_per_channel'])} | "
                     f"{_pct(h['block_params_removed'])} | "
                     f"{_pct(h['params_removed'])} | {h['flop_ratio']:.2f}× | {lat} | "
                     f"{100 * h['trainable_params'] / base:.2f}% | {h['train_seconds']:.0f} |")
    lines += ["", "## Every run", "", "```json", json.dumps(rows, indent=1), "```", ""]
    path.write_text("\n".join(lines))


def write_chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = {"fg-best": "tab:green", "fg-adapters": "tab:olive", "fg-plain": "tab:red"}
    for h in headline(rows):
        if h["method"] in ("dense", "lora"):
            style = {"dense": ("k", "-"), "lora": ("tab:blue", "--")}[h["method"]]
            ax.axhline(100 * h["acc_torch"], color=style[0], linestyle=style[1],
                       label=f"{h['method']} ({_pct(h['acc_torch'], h['acc_torch_std'])})")
    for method, color in colors.items():
        hs = [h for h in headline(rows) if h["method"] == method and h["latency_ratio"] is not None]
        if not hs:
            continue
        ax.errorbar([h["latency_ratio"] for h in hs], [100 * h["acc_torch"] for h in hs],
                    yerr=[100 * (h["acc_torch_std"] or 0) for h in hs], fmt="o-", color=color, label=method,
                    capsize=3)
        for h in hs:
            ax.annotate(f"{100 * h['block_params_removed']:.0f}% removed", (h["latency_ratio"], 100 * h["acc_torch"]),
                        textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("measured speed-up vs dense baseline (ONNX fp32, B=1, S=128, 1 thread)")
    ax.set_ylabel("SST-2 test accuracy (%)")
    ax.set_title("all-MiniLM-L6-v2 / SST-2: accuracy against speed-up")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sst2-dir", default=os.environ.get("SST2_DIR", str(ROOT.parent / "shared" / "data" / "SST-2")))
    p.add_argument("--work", default="/tmp/fg_edge_accuracy", help="where models are written (kept for reruns)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy"))
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--steps", type=int, default=250, help="optimiser steps of every method (250 = 2 epochs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--targets", default="0.2,0.4,0.55")
    p.add_argument("--single-seed-targets", default="0.55",
                   help="targets of fg-best run on the first seed only (to fit the time budget)")
    p.add_argument("--plain-targets", default="0.2,0.4,0.55", help="targets of the fg-plain recipe (first seed)")
    p.add_argument("--adapter-targets", default="0.4", help="targets of fg-adapters (first seed)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--bench-repeats", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 400 rows, 20 steps")
    p.add_argument("--report-only", action="store_true",
                   help="write the result files from the runs finished in --work (benchmarking any not yet timed)")
    args = p.parse_args()
    if args.quick:
        args.n_train, args.n_val, args.steps, args.seeds, args.bench_repeats = 400, 100, 20, "0", 5
        args.work = args.work + "-quick"
        args.out = str(Path(args.work) / "results")
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    single = {float(t) for t in args.single_seed_targets.split(",") if t}
    plain = [float(t) for t in args.plain_targets.split(",") if t]
    adapters = [float(t) for t in args.adapter_targets.split(",") if t]
    study = Study(args)
    t0 = time.perf_counter()

    if args.report_only:
        rows = [json.loads(p.read_text()) for p in sorted(Path(args.work).glob("*/row.json"))]
        refs = [r for r in rows if r["target"] is None]
        gated = [r for r in rows if r["target"] is not None]
        with ThreadPoolExecutor(args.jobs) as pool:
            gated = list(pool.map(study.per_channel_int8, gated))
        gated = [study.bench(r) for r in gated]
        return report(args, refs + gated, t0, partial=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        refs = list(pool.map(lambda job: study.finetune(*job), [(m, s) for s in seeds for m in ("dense", "lora")]))
        best = [("fg-best", t, s) for t in targets for s in seeds if s == seeds[0] or t not in single]
        multi = [j for j in best if j[1] not in single]
        jobs = sorted(multi, key=lambda j: (-j[1], j[2]))   # headline rows first (40%, then 20%)
        jobs += [("fg-plain", 0.4, seeds[0])] if 0.4 in plain else []
        jobs += [("fg-adapters", t, seeds[0]) for t in adapters]
        jobs += [j for j in best if j[1] in single]
        jobs += [("fg-plain", t, seeds[0]) for t in plain if t != 0.4]
        gated = list(pool.map(lambda job: study.gates(*job), jobs))
    with ThreadPoolExecutor(args.jobs) as pool:
        gated = list(pool.map(study.per_channel_int8, gated))
    gated = [study.bench(row) for row in gated]          # alone, one at a time
    report(args, refs + gated, t0)


def report(args, rows: list[dict], t0: float, partial: bool = False) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python benchmarks/accuracy/study.py" + (" --quick" if args.quick else ""),
            "protocol": f"{args.n_train} training rows + {args.n_val} validation rows (seed 0, disjoint, from "
                        f"SST-2 train.tsv; validation picks checkpoints), test = 872 GLUE dev rows; every method "
                        f"{args.steps} steps at batch {args.batch_size}, max length {args.max_length}, seeds "
                        f"{args.seeds}" + ("; report written from the finished runs (--report-only)" if partial else
                                           f"; study wall time {time.perf_counter() - t0:.0f} s")}
    (out / "sst2.json").write_text(json.dumps({"meta": meta, "rows": rows, "headline": headline(rows)},
                                              indent=2) + "\n")
    write_markdown(rows, meta, out / "sst2.md")
    write_chart(rows, out / "sst2.png")
    print((out / "sst2.md").read_text().split("## Every run")[0])


if __name__ == "__main__":
    main()
