"""Parity of every table family and of the derived-spec types, through the real compile pipeline (issue 10).

    python benchmarks/architectures.py                  # writes benchmarks/results/architectures.{json,md}
    python benchmarks/architectures.py qwen3 phi3       # only these

For each model type: a tiny random model with structured gates, layer 0 losing every head and a third of its FFN
channels, layer 1 half its heads (one kv group) and every FFN channel; `compile_model_dir` with int8 (dynamic
int8 for encoders; weight-only int8, `--quantize int8-wo`, for decoders, which refuse dynamic int8) and 32
cached greedy steps (decoders), then the folder reloaded alone (`load_compiled`) and compared again. Prints and
writes max |compiled - gated| for the torch model, model.onnx, the reloaded model and the int8 file (int8 is
reported, not gated).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
HEADS = {0: [0, 1, 2, 3], 1: [2, 3]}
CHANNELS = {0: slice(None, None, 3), 1: slice(None)}


def _tokenizer(task: str):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import tiny_tokenizer   # the tests' word-level tokenizer (58 ids)

    return tiny_tokenizer("decoder" if task == "causal-lm" else "encoder")


def _gated(model_type: str):
    from fg_edge.arch import spec_for
    from fg_edge.formats.gate_config import GateConfig
    from fg_edge.gates.inject import gated_modules, inject_gates
    from fg_edge.testing import UNLISTED_CONFIGS, task_of, tiny_model, unlisted_model

    if model_type in UNLISTED_CONFIGS:
        model, task = unlisted_model(model_type)
    else:
        model, task = tiny_model(model_type), task_of(model_type)
    config = GateConfig(task=task)
    inject_gates(model, config)
    spec, g = spec_for(model), torch.Generator().manual_seed(0)
    for name, gl in gated_modules(model).items():
        layer, _, inner = name.split(f"{spec.layers}.", 1)[1].partition(".")
        logits = gl.group_gate.logits.data
        logits.copy_(torch.rand(logits.shape, generator=g) * 2)
        logits[HEADS[int(layer)] if inner == spec.o else CHANNELS[int(layer)]] = -3.0
    return model.eval(), config, task


def measure(model_type: str, root: Path) -> dict:
    from fg_edge.compiler import check_parity, load_compiled
    from fg_edge.exporters.pipeline import CompileOptions, compile_model_dir
    from fg_edge.model_dir import save_model_dir

    model, config, task = _gated(model_type)
    model_dir = save_model_dir(model, config, root / model_type, tokenizer=_tokenizer(task))
    mode = "int8-wo" if task == "causal-lm" else "int8"
    options = CompileOptions(quantize=mode, decoder_steps=32, baseline=False)
    report = compile_model_dir(model_dir, root / f"{model_type}-compiled", options=options)
    steps = 32 if task == "causal-lm" else 0
    reloaded = check_parity(model, load_compiled(root / f"{model_type}-compiled"), tol=1e-5, decoder_steps=steps)
    onnx = report["onnx_parity"]["model.onnx"]
    int8 = report["quantization"]["files"][f"model.{mode}.onnx"]["vs_gated_model"]
    t = report["totals"]
    return {"model_type": model_type, "spec": report["architecture"]["source"],
            "removal": report["architecture"]["removal"], "heads_removed": t["heads_removed"],
            "heads_total": t["heads_total"], "ffn_removed": t["ffn_channels_removed"],
            "ffn_total": t["ffn_channels_total"], "torch": report["parity"]["max_abs_diff"],
            "onnx": onnx["max_abs_diff"], "onnx_tolerance": onnx["effective_tolerance"],
            "tokens_identical": onnx.get("token_agreement") == 1.0 if steps else None,
            "reloaded": reloaded["max_abs_diff"], "int8": int8["max_abs_diff"],
            "int8_mode": mode, "int8_token_agreement": int8.get("token_agreement")}


def markdown(rows: list[dict]) -> str:
    lines = ["| model type | spec | heads / FFN channels removed | torch compiled vs gated | ONNX fp32 vs gated "
             "| cached greedy tokens identical (3 × 33) | reloaded vs gated | int8 vs gated (reported, not gated) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tok = "–" if r["tokens_identical"] is None else ("yes" if r["tokens_identical"] else "no")
        agree = r["int8_token_agreement"]
        int8 = f"{r['int8']:.1e}" + ("" if agree is None else f", {agree:.0%} tokens") + f" ({r['int8_mode']})"
        lines.append(f"| `{r['model_type']}` | {r['spec']} | {r['heads_removed']}/{r['heads_total']} / "
                     f"{r['ffn_removed']}/{r['ffn_total']} | {r['torch']:.1e} | {r['onnx']:.1e} | {tok} | "
                     f"{r['reloaded']:.1e} | {int8} |")
    return "\n".join(lines)


def main() -> None:
    from fg_edge.testing import NEW_FAMILIES, UNLISTED_CONFIGS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_types", nargs="*", default=list(NEW_FAMILIES) + sorted(UNLISTED_CONFIGS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(m, Path(tmp)) for m in args.model_types]
    table = markdown(rows)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "architectures.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "architectures.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
