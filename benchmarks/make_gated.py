"""Write a model_dir whose structured gates close a chosen fraction of heads and FFN channels (no training).

Used by the compile / bench benchmarks for models we do not train here (e.g. SmolLM2-135M): it exercises
exactly the path a trained model takes, with a known amount of removal. Closed gates get logit -3 (eval 0);
open gates get eval values in [0.7, 1] so the fold is a real scale, not the identity.

    python benchmarks/make_gated.py HuggingFaceTB/SmolLM2-135M-Instruct /tmp/smollm2_gated --task causal-lm \
        --close 0.3
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch


def close_fraction_(model, fraction: float, seed: int, whole_groups_odd_layers: bool = False,
                    open_low: float = 0.7) -> dict:
    """Close `fraction` of query heads (the same count in every kv group, so they are removable) and of FFN
    channels in every layer; returns what was closed. With `whole_groups_odd_layers`, odd layers instead lose
    one whole kv group (all its query heads), so kv-head counts differ between layers."""
    from fg_edge.arch import head_layout, spec_for
    from fg_edge.gates.inject import gated_modules

    spec = spec_for(model)
    layout = head_layout(model.config, spec)
    g = torch.Generator().manual_seed(seed)
    closed = {"heads": 0, "heads_total": 0, "channels": 0, "channels_total": 0}
    per_group = round(fraction * layout.group_size)
    for name, module in gated_modules(model).items():
        gate = module.group_gate
        if gate is None:
            continue
        n = gate.logits.numel()
        # open: eval value u in [open_low, 1) -> logit atanh(u - 0.5); open_low >= 1: exactly 1 (logit 3)
        u = open_low + (1 - open_low) * torch.rand(n, generator=g)
        logits = torch.atanh(u - 0.5) if open_low < 1 else torch.full((n,), 3.0)
        if name.endswith(spec.o) and whole_groups_odd_layers and _layer_index(name) % 2 == 1:
            logits[:layout.group_size] = -3.0
            closed["heads"] += layout.group_size
            closed["heads_total"] += n
        elif name.endswith(spec.o):
            for kv in range(layout.num_kv_heads):
                heads = kv * layout.group_size + torch.randperm(layout.group_size, generator=g)[:per_group]
                logits[heads] = -3.0
            closed["heads"] += per_group * layout.num_kv_heads
            closed["heads_total"] += n
        else:
            k = int(math.floor(fraction * n))
            logits[torch.randperm(n, generator=g)[:k]] = -3.0
            closed["channels"] += k
            closed["channels_total"] += n
        gate.logits.data.copy_(logits)
    return closed


def _layer_index(name: str) -> int:
    return int(next(p for p in name.split(".") if p.isdigit()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("output")
    ap.add_argument("--task", default="causal-lm", choices=["causal-lm", "classification"])
    ap.add_argument("--close", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--open-low", type=float, default=0.7,
                    help="open gates get eval values in [OPEN_LOW, 1); 1: exactly 1 (with --close 0: the dense model)")
    ap.add_argument("--whole-groups-odd-layers", action="store_true",
                    help="odd layers lose one whole kv group instead (layers then differ in kv-head count)")
    args = ap.parse_args()

    from fg_edge.formats.gate_config import GateConfig
    from fg_edge.gates.inject import inject_gates
    from fg_edge.model_dir import save_model_dir
    from fg_edge.sources import load_pretrained

    t0 = time.perf_counter()
    model, tokenizer = load_pretrained(args.source, args.task, num_labels=2 if args.task == "classification" else None)
    cfg = GateConfig(granularity="structured", task=args.task)
    inject_gates(model, cfg)
    closed = close_fraction_(model, args.close, args.seed, args.whole_groups_odd_layers, args.open_low)
    model.eval()
    save_model_dir(model, cfg, args.output, tokenizer=tokenizer, overwrite=True,
                   metadata={"source": args.source, "synthetic_gates": closed, "note": "gates set by make_gated.py"})
    print(json.dumps({"output": args.output, "closed": closed, "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
