"""The ort-format stage's work: `.ort` files for each `--ort-target`, the parity of the NNAPI files, ORT's
NNAPI / CoreML partition estimate of every shipped file, and the lines the compile table shows about them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from fg_edge.errors import ConfigError
from fg_edge.exporters.pipeline.options import CompileOptions

log = logging.getLogger(__name__)

#: the EPs the compile table's mobile lines show (keys of ort_format.partition_summary)
SHOWN_EPS = ("NNAPI", "CoreML MLProgram")


def refuse_nnapi_decoder(options: CompileOptions, model_dir: Path) -> None:
    """--ort-target nnapi is for encoders: raise ConfigError for a causal LM."""
    if "nnapi" in options.ort_target_list and options.ort_format:
        raise ConfigError(
            f"--ort-target nnapi is refused for decoders such as {model_dir}: the NNAPI EP takes only nodes with "
            f"fixed shapes, and a KV-cache decoder's past length grows with every token, so no fixed-shape graph "
            f"serves generation (its nodes would run on the CPU EP). Use --ort-target cpu (the default) for a "
            f"decoder's .ort files")


def _parity(tmp: Path, name: str, gated: bool, options: CompileOptions, kind: str, reference) -> dict:
    from fg_edge.exporters.onnx_parity import check_onnx_parity

    return check_onnx_parity(None, tmp / name, kind=kind, tol=options.tol, steps=options.decoder_steps,
                             raise_on_fail=gated, reference=reference)


def ort_format_stage(tmp: Path, graphs: list[str], quant_graphs: list[str], options: CompileOptions, kind: str,
                     reference) -> tuple[dict, dict]:
    """Convert every graph for every target; returns (report["ort_format"], report["mobile_partitions"]).

    cpu files must load in ORT; nnapi files are checked against the gated model like the .onnx they come from
    (fp32: gated, the compile fails beyond --tolerance; QDQ: report only)."""
    from fg_edge.exporters.ort_format import convert_to_ort, partition_summary
    from fg_edge.runtimes.session import create_session

    sources = [tmp / g for g in graphs + quant_graphs]
    targets, shipped = {}, {"model.onnx": partition_summary(tmp / "model.onnx")}
    for target in options.ort_target_list:
        info = convert_to_ort(sources, tmp, partitions=True, target=target)
        shipped.update(info.pop("partitions"))
        targets[target] = info
    parity = {}
    for target, info in targets.items():
        for src, name in zip(graphs + quant_graphs, info["files"]):
            if target == "cpu":
                create_session(tmp / name, "cpu")    # each .ort must load in ORT
            else:
                parity[name] = _parity(tmp, name, src in graphs, options, kind, reference)
    if "nnapi" in targets:
        targets["nnapi"]["hints"] = _nnapi_hints(targets["nnapi"]["files"], shipped, options.opset)
    files = [name for info in targets.values() for name in info["files"]]
    report = {"files": files, "targets": targets,
              "for": {name: ep for info in targets.values() for name, ep in info["for"].items()},
              "required_operators": [info["required_operators"] for info in targets.values()],
              "optimization_style": "Fixed", "tool": "onnxruntime.tools.convert_onnx_models_to_ort",
              "parity": parity}
    return report, shipped


def _nnapi_hints(files: list[str], shipped: dict, opset: int) -> list[str]:
    """What would let NNAPI take more of the .nnapi.ort files, from ORT's estimate of them (logged too)."""
    lacking = {op.split(":", 1)[-1] for name in files
               for op in ((shipped.get(name) or {}).get("NNAPI") or {}).get("with_fixed_shapes", {}).get(
                   "unsupported_ops", [])}
    hints = []
    if "LayerNormalization" in lacking and opset >= 17:
        hints.append(f"NNAPI takes no LayerNormalization, which opset {opset} exports as one op: --opset 16 exports "
                     f"it as ReduceMean / Sub / Pow / Sqrt / Div, which it takes (all-MiniLM-L6-v2: 13 NNAPI "
                     f"partitions instead of 20, measured)")
    if "Shape" in lacking:
        hints.append("Shape nodes (the dynamic-shape arithmetic) fold away only when the inputs are fixed before "
                     "conversion (README, Mobile: make_dynamic_shape_fixed, then convert at the basic level)")
    if "Erf" in lacking:
        hints.append("Erf (exact GELU) has no NNAPI kernel: each FFN's activation runs on the CPU EP")
    for hint in hints:
        log.info("--ort-target nnapi: %s", hint)
    return hints


def _ep_cell(summary: dict, ep: str) -> str:
    entry = summary.get(ep) or {}
    if "error" in entry or "with_fixed_shapes" not in entry:
        return f"{ep} estimate failed ({entry.get('error', 'missing')})"
    fixed, dyn = entry["with_fixed_shapes"], entry["as_exported"]
    lacks = ", ".join(op.split(":", 1)[-1] for op in fixed["unsupported_ops"]) or "nothing"
    return (f"{ep} {fixed['supported_percent']:.1f}% of {fixed['nodes']} nodes in {fixed['partitions']} "
            f"partitions ({dyn['supported_percent']:.1f}% as shipped), lacks {lacks}")


def mobile_lines(report: dict) -> list[str]:
    """One line per .ort file converted for a mobile EP target (not cpu): ORT's estimate of what NNAPI and
    CoreML take of it, with fixed shapes (and as shipped, with dynamic shapes)."""
    ort = report.get("ort_format") or {}
    parts = report.get("mobile_partitions") or {}
    names = [n for t, info in (ort.get("targets") or {}).items() if t != "cpu" for n in info.get("files", [])]
    lines = []
    for name in names:
        summary: Optional[dict] = parts.get(name)
        if summary:
            lines.append(f"{name}: " + "; ".join(_ep_cell(summary, ep) for ep in SHOWN_EPS))
    if lines:
        lines.insert(0, "mobile estimate (ORT usability checker, by op type; % of nodes once shapes are fixed, "
                        "then as shipped):")
        lines += [f"hint: {h}" for h in (ort.get("targets") or {}).get("nnapi", {}).get("hints", [])]
    return lines
