"""The compile summary: one row per written graph (size, params, FLOP ratio, parity), and its text table."""

from __future__ import annotations

from fg_edge.exporters.pipeline.mobile import mobile_lines
from fg_edge.formats.names import quantized_file
from fg_edge.formats.parity import ONNX_PARITY_TOL


def quantized_name(graph: str, mode: str) -> str:
    """model.onnx -> model.int8.onnx / model.qdq.onnx / model.int4.onnx / model.int8-wo.onnx (names.VARIANTS)."""
    return quantized_file(graph, mode)


def summary_rows(report: dict) -> list[dict]:
    """One row per graph: file, MB, parity (max abs diff vs the gated model), plus the compiler totals; quantized
    decoders also carry their quality against the fp32 graph (fg_edge.exporters.pipeline.quality)."""
    files = report.get("files", {})
    rows = []
    parity = dict(report.get("onnx_parity", {}))
    quant = report.get("quantization", {})
    for name, entry in (quant.get("files") or {}).items():
        parity[name] = entry["vs_gated_model"]
    ort = report.get("ort_format") or {}
    parity.update(ort.get("parity") or {})          # the .nnapi.ort files, checked like their .onnx
    ep_for = ort.get("for") or {}
    quality = (quant.get("quality") or {}).get("files") or {}
    totals = report.get("totals", {})
    for name in sorted(n for n in files if n.endswith((".onnx", ".ort"))):
        size = files[name] + files.get(name + ".data", 0)
        p = parity.get(name)
        q = quality.get(name)
        dense = name.startswith("baseline")
        rows.append({
            "file": name, "bytes": size,
            "params": report.get("baseline", {}).get("params") if dense else totals.get("params_after"),
            "flop_ratio": 1.0 if dense else totals.get("flop_ratio"),
            "max_abs_diff": None if p is None else p["max_abs_diff"],
            "parity": None if p is None else ("pass" if p.get("check", "gated") == "gated" else "report only"),
            "token_agreement": None if p is None else p.get("token_agreement"),
            **({"for": ep_for[name]} if name in ep_for else {}),
            **({} if q is None else {"quality_vs": q["vs"], "perplexity_change": q["perplexity_change"],
                                     "greedy_agreement": q["greedy_agreement"], "flagged": q["flagged"]}),
        })
    return rows


def _red(text: str, color: bool) -> str:
    return f"\x1b[31m{text}\x1b[0m" if color else text


def _quality_cell(r: dict) -> str:
    if "greedy_agreement" not in r:
        return ""
    cell = f" ppl {100 * r['perplexity_change']:+.1f}%, greedy {100 * r['greedy_agreement']:.0f}%"
    return cell + (" FAR OFF" if r["flagged"] else "")


def format_summary(report: dict, color: bool = False) -> str:
    """The compile table; `color`: far-off quantized decoders in red (ANSI; click.echo strips it off a tty)."""
    rows = report.get("summary", [])
    t = report.get("totals", {})
    lines = [f"{'file':<24} {'size':>10} {'params':>12} {'FLOP ratio':>10} {'max |diff|':>11} {'parity':>12}"
             + ("  quality vs fp32" if any("greedy_agreement" in r for r in rows) else "")
             + ("  for" if any("for" in r for r in rows) else "")]
    for r in rows:
        params = f"{r['params']:,}" if r["params"] is not None else "-"
        ratio = f"{r['flop_ratio']:.2f}x" if r["flop_ratio"] is not None else "-"
        diff = f"{r['max_abs_diff']:.2e}" if r["max_abs_diff"] is not None else "-"
        parity = r["parity"] or "-"
        if r.get("token_agreement") is not None and r["parity"] != "pass":
            parity += f" ({100 * r['token_agreement']:.0f}% tok)"
        line = (f"{r['file']:<24} {r['bytes'] / 1e6:>8.2f}MB {params:>12} {ratio:>10} {diff:>11} {parity:>12}"
                + _quality_cell(r) + (f"  {r['for']}" if "for" in r else ""))
        lines.append(_red(line, color) if r.get("flagged") else line)
    if t:
        lines.append(f"params {t.get('params_before', 0):,} -> {t.get('params_after', 0):,} "
                     f"({t.get('params_removed', 0):,} removed); FLOP ratio {t.get('flop_ratio') or float('inf'):.2f}x "
                     f"(the speed-up ceiling); ONNX parity tolerance {report.get('options', {}).get('tol', ONNX_PARITY_TOL):.0e}")
    arch = report.get("architecture")
    if arch:   # which spec the compiler used, so a user can check it (table entry / derived / none: fold only)
        lines.append(f"architecture: {arch.get('spec') or 'no spec fits, gates folded'}; removal: {arch.get('removal')}")
    mixed = ((report.get("quantization") or {}).get("settings") or {}).get("mixed_bits") or {}
    if mixed.get("nodes"):
        lines.append(f"mixed bits ({mixed['policy']}): {len(mixed['nodes'])} MatMuls in {mixed['bits']} bits, "
                     f"the value and FFN output projections of layers {', '.join(map(str, mixed['layers']))} "
                     f"of {mixed['of_layers']} (--mixed-bits none: all in 4 bits)")
    lines += _quality_lines(report, color)
    lines += mobile_lines(report)
    metric = report.get("quantization", {}).get("task_metric")
    if metric:
        mode = report["quantization"]["settings"]["mode"]
        q = quantized_name("model.onnx", mode)
        lines.append(f"accuracy on {metric['rows']} rows of {metric['data']}: fp32 {metric['model.onnx']:.4f}, "
                     f"{mode} {metric[q]:.4f} ({metric['quantized_change']:+.4f})")
    return "\n".join(lines)


def _quality_lines(report: dict, color: bool) -> list[str]:
    quality = report.get("quantization", {}).get("quality") or {}
    if "skipped" in quality:
        return [f"quantized decoder quality not measured: {quality['skipped']}"]
    lines = []
    if quality.get("files"):
        lines.append(f"quality vs fp32: perplexity on {quality['eval_tokens']} tokens of {quality['eval_text']}; "
                     f"greedy agreement over {quality['new_tokens']} new tokens x {len(quality['prompts'])} prompts")
    for name, q in (quality.get("files") or {}).items():
        if q["flagged"]:
            lines.append(_red(f"{name} is far off its fp32 graph {q['vs']}: {', '.join(q['flag_reasons'])} "
                              f"(perplexity {q['perplexity']:.3f} vs {q['perplexity_fp32']:.3f}, max |logit diff| "
                              f"{q['max_abs_logit_diff']:.3g})", color))
    return lines
