"""The compile report: what the gates zeroed, what the compiler physically removed, and what that buys.

FLOPs are counted at REFERENCE_SHAPE (batch 1, 128 tokens) as 2·in·out per token for every linear of a block
plus 2·S·S·head_dim per query head for each of the attention score and context matmuls; outside the blocks,
linears (pooler, classifier, LM head) count once per token for causal LMs and once per sequence for
classification. Bias adds, norms, softmax and activations are not counted. `flop_ratio` = before / after is the
speed-up ceiling. "zeroed by gates" counts weight and bias entries that a closed gate (eval value exactly 0)
makes zero; "zeroed, not removed" is the part of those still present in the compiled model.
"""

from __future__ import annotations

from torch import nn

from typing import Optional

from fg_edge.arch import ArchSpec, head_layout, layers_of, layers_prefix, model_task
from fg_edge.gates.inject import gated_modules
from fg_edge.gates.layer import GatedLinear
from fg_edge.compiler.plan import CompilePlan, column_scale, row_scale
from fg_edge.compiler.surgery import attention_keep, ffn_keep, is_conv1d

REPORT_FORMAT_VERSION = 1
REFERENCE_SHAPE = {"batch": 1, "seq_len": 128}


def _linear_dims(module: nn.Module):
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]
    return None


def _linear_flops(root: nn.Module, tokens: int, skip_prefix: str = "") -> int:
    total = 0
    for name, module in root.named_modules():
        dims = _linear_dims(module)
        if dims and not (skip_prefix and name.startswith(skip_prefix)):
            total += 2 * dims[0] * dims[1] * tokens
    return total


def _block_keeps(gated_model: nn.Module, spec: ArchSpec, plan: CompilePlan):
    """(layer plan, block, {linear path: (kept rows, kept cols)}) per block."""
    layout = head_layout(gated_model.config, spec)
    for lp, block in zip(plan.layers, layers_of(gated_model, spec), strict=True):
        keep = {**attention_keep(spec, layout, lp.kept_heads, lp.kept_kv_heads, block),
                **ffn_keep(spec, lp.kept_ffn, lp.ffn_size)}
        yield lp, block, keep


def _zeros(layer: GatedLinear, rows, cols) -> tuple[int, int]:
    """(entries zeroed by closed gates, of those the ones still present after keeping rows / cols)."""
    r, c = row_scale(layer) == 0, column_scale(layer) == 0
    mask = r[:, None] | c[None, :]
    bias = layer.base_layer.bias is not None
    zeroed = int(mask.sum()) + (int(r.sum()) if bias else 0)
    kept_mask = mask if rows is None else mask[rows]
    kept_mask = kept_mask if cols is None else kept_mask[:, cols]
    return zeroed, int(kept_mask.sum()) + (int((r if rows is None else r[rows]).sum()) if bias else 0)


def gate_zero_counts(gated_model: nn.Module, spec: Optional[ArchSpec], plan: CompilePlan) -> list[dict]:
    """Per layer: weight + bias entries zeroed by closed gates, and how many of those the plan keeps. Without a
    spec (fold only) one entry for the whole model: every zero stays."""
    if spec is None or not plan.layers:
        zeroed = sum(_zeros(g, None, None)[0] for g in gated_modules(gated_model).values())
        return [{"params_zeroed_by_gates": zeroed, "params_zeroed_not_removed": zeroed}]
    counts = []
    for _, block, keep in _block_keeps(gated_model, spec, plan):
        zeroed = kept = 0
        for path, (rows, cols) in keep.items():
            layer = block.get_submodule(path)
            if isinstance(layer, GatedLinear):
                z, k = _zeros(layer, rows, cols)
                zeroed, kept = zeroed + z, kept + k
        counts.append({"params_zeroed_by_gates": zeroed, "params_zeroed_not_removed": kept})
    return counts


def module_treatments(gated_model: nn.Module, spec: Optional[ArchSpec], plan: CompilePlan) -> dict[str, dict]:
    """Per gated module: "fold + removal" (a linear the compiler cuts: closed rows / columns go wherever the rules
    of docs/DESIGN.md §3 allow) or "fold only" (gates folded into the weights, zeros kept), with counts."""
    roles: dict[str, tuple[int, str, tuple]] = {}
    if spec is not None and plan.layers:
        prefix = layers_prefix(gated_model, spec)
        for lp, _, keep in _block_keeps(gated_model, spec, plan):
            for path, kept in keep.items():
                roles[f"{prefix}.{lp.index}.{path}"] = (lp.index, path, kept)
    out = {}
    for name, g in gated_modules(gated_model).items():
        r, c = row_scale(g) == 0, column_scale(g) == 0
        entry = {"treatment": "fold only", "rows_closed": int(r.sum()), "cols_closed": int(c.sum()),
                 "rows_removed": 0, "cols_removed": 0}
        if name in roles:
            index, path, (rows, cols) = roles[name]
            entry.update(treatment="fold + removal", layer=index, role=path,
                         rows_removed=0 if rows is None else g.out_features - len(rows),
                         cols_removed=0 if cols is None else g.in_features - len(cols))
        out[name] = entry
    return out


def measure_blocks(model: nn.Module, spec: Optional[ArchSpec], plan: CompilePlan, after: bool) -> dict:
    """Parameters and FLOPs (REFERENCE_SHAPE) per block, of the whole model and of the layers outside blocks
    (without a spec, every linear counts as outside: nothing is removed, the ratio is 1)."""
    batch, seq = REFERENCE_SHAPE["batch"], REFERENCE_SHAPE["seq_len"]
    tokens = batch * seq if model_task(model) == "causal-lm" else batch
    if spec is None or not plan.layers:
        return {"layers": [], "model_params": sum(p.numel() for p in model.parameters()),
                "other_flops": _linear_flops(model, tokens)}
    layers = []
    for lp, block in zip(plan.layers, layers_of(model, spec), strict=True):
        heads = len(lp.kept_heads) if after else lp.num_heads
        attention = 2 * 2 * batch * heads * seq * seq * lp.head_dim
        layers.append({"params": sum(p.numel() for p in block.parameters()),
                       "flops": _linear_flops(block, batch * seq) + attention})
    return {"layers": layers, "model_params": sum(p.numel() for p in model.parameters()),
            "other_flops": _linear_flops(model, tokens, skip_prefix=layers_prefix(model, spec) + ".")}


def _layer_entry(lp, before: dict, after: dict, zeros: dict) -> dict:
    return {
        "index": lp.index,
        "params_before": before["params"], "params_after": after["params"],
        "params_removed": before["params"] - after["params"],
        "flops_before": before["flops"], "flops_after": after["flops"],
        "heads_before": lp.num_heads, "heads_after": len(lp.kept_heads),
        "heads_removed": len(lp.heads_removed), "heads_zeroed_not_removed": len(lp.heads_zeroed),
        "kv_heads_before": lp.num_kv_heads, "kv_heads_after": len(lp.kept_kv_heads),
        "ffn_before": lp.ffn_size, "ffn_after": len(lp.kept_ffn), "ffn_removed": len(lp.ffn_removed),
        **zeros,
    }


def architecture_entry(spec: Optional[ArchSpec], plan: CompilePlan) -> dict:
    """What the report says about the spec used: its source (table entry / derived), one line, and its fields."""
    if spec is None:
        return {"spec": None, "source": None, "removal": plan.removal}
    return {"spec": spec.describe(), "source": spec.source, "family": spec.family, "removal": plan.removal,
            "fields": spec.to_dict()}


def build_report(model: nn.Module, spec: Optional[ArchSpec], plan: CompilePlan, before: dict, after: dict,
                 zeros: list[dict]) -> dict:
    layers = [_layer_entry(lp, b, a, z) for lp, b, a, z in
              zip(plan.layers, before["layers"], after["layers"], zeros[:len(plan.layers)], strict=True)]
    flops_before = sum(entry["flops_before"] for entry in layers) + before["other_flops"]
    flops_after = sum(entry["flops_after"] for entry in layers) + after["other_flops"]
    block_before = sum(entry["flops_before"] for entry in layers)
    block_after = sum(entry["flops_after"] for entry in layers)
    totals = {
        "params_before": before["model_params"], "params_after": after["model_params"],
        "params_removed": before["model_params"] - after["model_params"],
        "params_zeroed_by_gates": sum(z["params_zeroed_by_gates"] for z in zeros),
        "params_zeroed_not_removed": sum(z["params_zeroed_not_removed"] for z in zeros),
        "flops_before": flops_before, "flops_after": flops_after,
        # None (JSON null), never Infinity (not JSON), when nothing is left to compute
        "flop_ratio": flops_before / flops_after if flops_after else None,
        "block_flops_before": block_before, "block_flops_after": block_after,
        "block_flop_ratio": block_before / block_after if block_after else None,
        **plan.summary(),
    }
    return {"format_version": REPORT_FORMAT_VERSION, "model_type": plan.model_type, "task": model_task(model),
            "architecture": architecture_entry(spec, plan),
            "reference_shape": dict(REFERENCE_SHAPE), "layers": layers, "totals": totals, "parity": None}


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _ratio(value) -> str:
    return "inf (every block removed)" if value is None else f"{value:.3f}"


def format_report(report: dict) -> str:
    """A readable summary: one line per layer, totals, parity."""
    t, shape = report["totals"], report["reference_shape"]
    arch = report.get("architecture") or {}
    lines = [f"fg-edge compile report: {report['model_type']} ({report['task']}), FLOPs at batch "
             f"{shape['batch']} x {shape['seq_len']} tokens",
             f"architecture: {arch.get('spec') or 'no spec fits: gates folded, nothing removed'}"
             + (f"; removal: {arch['removal']}" if arch.get("removal") else ""),
             f"{'layer':>5} {'heads':>9} {'kv':>7} {'ffn':>11} {'params':>19} {'FLOPs':>19} {'zeroed kept':>11}"]
    for e in report["layers"]:
        lines.append(
            f"{e['index']:>5} {e['heads_after']:>4}/{e['heads_before']:<4} {e['kv_heads_after']:>3}/"
            f"{e['kv_heads_before']:<3} {e['ffn_after']:>5}/{e['ffn_before']:<5} "
            f"{_human(e['params_after']):>8} / {_human(e['params_before']):<8} "
            f"{_human(e['flops_after']):>8} / {_human(e['flops_before']):<8} "
            f"{_human(e['params_zeroed_not_removed']):>11}")
    lines += [
        f"params: {t['params_before']:,} -> {t['params_after']:,} ({t['params_removed']:,} removed, "
        f"{100 * t['params_removed'] / max(t['params_before'], 1):.1f}%); "
        f"zeroed by gates {t['params_zeroed_by_gates']:,}, "
        f"of which {t['params_zeroed_not_removed']:,} stay (zeroed, not removed)",
        f"heads removed {t['heads_removed']}/{t['heads_total']} (+{t['heads_zeroed_not_removed']} closed but kept), "
        f"kv heads removed {t['kv_heads_removed']}/{t['kv_heads_total']}, FFN channels removed "
        f"{t['ffn_channels_removed']}/{t['ffn_channels_total']}",
        f"FLOPs: {_human(t['flops_before'])} -> {_human(t['flops_after'])}, ratio {_ratio(t['flop_ratio'])} "
        f"(blocks only {_ratio(t['block_flop_ratio'])}) = speed-up ceiling",
    ]
    parity = report.get("parity")
    if parity:
        line = f"parity: max abs diff {parity['max_abs_diff']:.2e} (tolerance {parity['tolerance']:.0e})"
        if parity.get("decoder_steps"):
            line += (f"; {parity['decoder_steps']} cached greedy steps, tokens identical, step logits max abs diff "
                     f"{parity['generation_max_abs_diff']:.2e}")
        lines.append(line)
    return "\n".join(lines)
