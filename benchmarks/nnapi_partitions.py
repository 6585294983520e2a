"""What NNAPI / CoreML would take of a compiled_dir's .ort files: as compile wrote them, and with the input shapes
fixed before conversion (what a phone app with one input size can ship).

    python benchmarks/nnapi_partitions.py /tmp/nnapi_md_compiled --seq 128 --json benchmarks/results/minilm/nnapi.json

Per file (the .nnapi.ort / .ort files of `fg-edge compile --ort-format --ort-target cpu --ort-target nnapi`) the
estimate recorded in compile_report.json (`mobile_partitions`, dynamic shapes as shipped, and ORT's "if the
shapes were fixed" count); then each source .onnx with its inputs fixed to (1, --seq)
(onnxruntime.tools.onnx_model_utils.make_input_shape_fixed) and converted again for the nnapi target, so
ORT's constant folding can remove the shape arithmetic (Shape -> Gather -> Concat) as well.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

EPS = ("NNAPI", "CoreML MLProgram")


def _cells(summary: dict) -> dict:
    out = {}
    for ep in EPS:
        fixed, dyn = summary[ep]["with_fixed_shapes"], summary[ep]["as_exported"]
        out[ep] = {"supported": f"{fixed['supported_nodes']}/{fixed['nodes']}", "percent": fixed["supported_percent"],
                   "partitions": fixed["partitions"], "percent_dynamic": dyn["supported_percent"],
                   "unsupported": [op.split(":", 1)[-1] for op in fixed["unsupported_ops"]]}
    return out


def fixed_shape_estimates(cdir: Path, graphs: list[str], seq: int) -> dict:
    """Each graph with inputs fixed to (1, seq), converted for the nnapi target: {name: cells}."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    from fg_edge.exporters.ort_format import convert_to_ort

    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for g in graphs:
            proto = onnx.load(str(cdir / g))
            for inp in proto.graph.input:
                make_input_shape_fixed(proto.graph, inp.name, [1, seq])
            fixed = Path(tmp) / g
            onnx.save(proto, str(fixed))
            info = convert_to_ort([fixed], tmp, partitions=True, target="nnapi")
            result[f"{info['files'][0]} (1x{seq})"] = _cells(info["partitions"][info["files"][0]])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compiled_dir", type=Path)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    report = json.loads((args.compiled_dir / "compile_report.json").read_text())
    rows = {name: _cells(s) for name, s in report["mobile_partitions"].items() if name.endswith(".ort")}
    graphs = [g for g in ("model.onnx", "model.qdq.onnx") if (args.compiled_dir / g).is_file()]
    rows.update(fixed_shape_estimates(args.compiled_dir, graphs, args.seq))
    print("| file | EP | nodes taken (fixed shapes) | partitions | as shipped (dynamic) | not taken |")
    print("|---|---|---|---|---|---|")
    for name, cells in rows.items():
        for ep, c in cells.items():
            print(f"| {name} | {ep} | {c['supported']} ({c['percent']:.1f} %) | {c['partitions']} | "
                  f"{c['percent_dynamic']:.1f} % | {', '.join(c['unsupported']) or '-'} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"compiled_dir": str(args.compiled_dir), "seq": args.seq,
                                         "opset": report.get("export", {}).get("opset"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
