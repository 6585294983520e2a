"""The compile summary: one row per written graph (size, params, FLOP ratio, parity), and its text table."""

from __future__ import annotations

from fg_edge.formats.parity import ONNX_PARITY_TOL


def quantized_name(graph: str, mode: str) -> str:
    """model.onnx -> model.int8.onnx (dynamic int8) / model.qdq.onnx (static QDQ)."""
    return graph[: -len(".onnx")] + (".int8.onnx" if mode == "int8" else ".qdq.onnx")


def summary_rows(report: dict) -> list[dict]:
    """One row per graph: file, MB, parity (max abs diff vs the gated model), plus the compiler totals."""
    files = report.get("files", {})
    rows = []
    parity = dict(report.get("onnx_parity", {}))
    for name, entry in (report.get("quantization", {}).get("files") or {}).items():
        parity[name] = entry["vs_gated_model"]
    totals = report.get("totals", {})
    for name in sorted(n for n in files if n.endswith((".onnx", ".ort"))):
        size = files[name] + files.get(name + ".data", 0)
        p = parity.get(name)
        dense = name.startswith("baseline")
        rows.append({
            "file": name, "bytes": size,
            "params": report.get("baseline", {}).get("params") if dense else totals.get("params_after"),
            "flop_ratio": 1.0 if dense else totals.get("flop_ratio"),
            "max_abs_diff": None if p is None else p["max_abs_diff"],
            "parity": None if p is None else ("pass" if p.get("check", "gated") == "gated" else "report only"),
            "token_agreement": None if p is None else p.get("token_agreement"),
        })
    return rows


def format_summary(report: dict) -> str:
    rows = report.get("summary", [])
    t = report.get("totals", {})
    lines = [f"{'file':<24} {'size':>10} {'params':>12} {'FLOP ratio':>10} {'max |diff|':>11} {'parity':>12}"]
    for r in rows:
        params = f"{r['params']:,}" if r["params"] is not None else "-"
        ratio = f"{r['flop_ratio']:.2f}x" if r["flop_ratio"] is not None else "-"
        diff = f"{r['max_abs_diff']:.2e}" if r["max_abs_diff"] is not None else "-"
        parity = r["parity"] or "-"
        if r.get("token_agreement") is not None and r["parity"] != "pass":
            parity += f" ({100 * r['token_agreement']:.0f}% tok)"
        lines.append(f"{r['file']:<24} {r['bytes'] / 1e6:>8.2f}MB {params:>12} {ratio:>10} {diff:>11} {parity:>12}")
    if t:
        lines.append(f"params {t.get('params_before', 0):,} -> {t.get('params_after', 0):,} "
                     f"({t.get('params_removed', 0):,} removed); FLOP ratio {t.get('flop_ratio') or float('inf'):.2f}x "
                     f"(the speed-up ceiling); ONNX parity tolerance {report.get('options', {}).get('tol', ONNX_PARITY_TOL):.0e}")
    arch = report.get("architecture")
    if arch:   # which spec the compiler used, so a user can check it (table entry / derived / none: fold only)
        lines.append(f"architecture: {arch.get('spec') or 'no spec fits, gates folded'}; removal: {arch.get('removal')}")
    metric = report.get("quantization", {}).get("task_metric")
    if metric:
        mode = report["quantization"]["settings"]["mode"]
        q = quantized_name("model.onnx", mode)
        lines.append(f"accuracy on {metric['rows']} rows of {metric['data']}: fp32 {metric['model.onnx']:.4f}, "
                     f"{mode} {metric[q]:.4f} ({metric['quantized_change']:+.4f})")
    return "\n".join(lines)
