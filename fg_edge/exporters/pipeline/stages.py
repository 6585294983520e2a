"""The compile stages, in order (`STAGES`), each a function of the one `CompileState` they read and fill in.

`compile_model_dir` (fg_edge.exporters.pipeline.run) runs the enabled ones in a single loop; the stage names are
the ones the progress bar and compile_report.json ("timings_s") show.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from fg_edge.arch import model_kind
from fg_edge.errors import CompileError, ConfigError
from fg_edge.exporters import onnx_export as _ox
from fg_edge.exporters.onnx_parity import check_onnx_parity
from fg_edge.exporters.pipeline.graphs import export_graph, quantize_graphs
from fg_edge.exporters.pipeline.loading import (calibration_texts, choose_int4_method, input_record, load_eval_data,
                                                load_gated, load_tokenizer)
from fg_edge.exporters.pipeline.memory import release
from fg_edge.exporters.pipeline.mobile import ort_format_stage, refuse_nnapi_decoder
from fg_edge.exporters.pipeline.options import CompileOptions
from fg_edge.exporters.pipeline.progress import Progress
from fg_edge.exporters.pipeline.summary import quantized_name, summary_rows
from fg_edge.formats.names import INPUTS_KEY, REPORT_FILE


@dataclass
class CompileState:
    """Everything one compile holds between stages. Large objects are dropped as soon as they are used up:
    the gated model after the compile (which works on it in place), each torch model once it is exported."""

    model_dir: Path
    out: Path
    options: CompileOptions
    overwrite: bool
    progress: Progress
    stack: contextlib.ExitStack          # holds the atomic output folder open until every stage has passed
    tmp: Optional[Path] = None           # that folder, once the "save" stage opened it
    gated: Any = None
    tokenizer: Any = None
    calib: Optional[tuple[list[str], str]] = None
    eval_data: Any = None
    kind: str = ""
    reference: Any = None                # the gated model's side of every ONNX parity check (ParityReference)
    torch_reference: Optional[dict] = None   # decoders: the gated side of the compiler's check (gated_reference)
    models: dict = field(default_factory=dict)
    plan: Any = None
    creport: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    info: Any = None                     # ExportInfo of model.onnx
    graphs: list[str] = field(default_factory=list)
    quant_graphs: list[str] = field(default_factory=list)
    packed: bool = False
    method_choice: str = ""               # why --quantize int4 took the method it did (no --quant-method)
    baseline: Optional[dict] = None       # the report's "baseline" entry, once baseline.onnx is written
    quality: Any = None                   # quantized decoders: the QualityMeter, its fp32 side measured at "parity"


def _refuse_int8_decoder(options: CompileOptions, model_dir: Path) -> None:
    if options.quantize == "int8":
        raise ConfigError(
            f"--quantize int8 (dynamic: weights and activations in int8) is refused for decoders such as "
            f"{model_dir}: per-tensor activation scales cannot follow a causal LM's outlier channels (on "
            f"SmolLM2-135M it kept 24% of fp32's greedy tokens, max logit error 26). Use the weight-only path: "
            f"--quantize int4 (MatMulNBits, 4-bit blocks) or --quantize int8-wo (8-bit weights, float activations)")


def _load(st: CompileState) -> None:
    st.gated = load_gated(st.model_dir)
    if model_kind(st.gated) == "causal-lm":
        _refuse_int8_decoder(st.options, st.model_dir)
        refuse_nnapi_decoder(st.options, st.model_dir)
    st.tokenizer = load_tokenizer(st.model_dir)
    if st.options.quantize == "int4" and st.options.quant_method is None:
        st.options, st.calib, st.method_choice = choose_int4_method(st.options, st.model_dir, st.tokenizer)
    needs = st.options.needs_calibration
    if needs and st.calib is None:
        if st.tokenizer is None:
            raise ConfigError(f"{needs} tokenizes calibration text but {st.model_dir} has no tokenizer files")
        st.calib = calibration_texts(st.options, st.model_dir)
    if st.options.eval_data:
        st.eval_data = load_eval_data(st.options, st.gated, st.tokenizer, st.model_dir)


def _reference(st: CompileState) -> None:
    # the gated model's side of every parity check, computed once (ORT is fed torch's greedy tokens, so the torch
    # trajectory does not depend on the graph under test) and reused for model / baseline / quantized; computed
    # before the compile, which then works on the gated model itself (no second copy). Decoders: one greedy
    # trajectory serves the compiler's torch check too
    from fg_edge.compiler import gated_model_reference
    from fg_edge.exporters.onnx_parity import ParityReference, torch_threads

    st.kind = model_kind(st.gated)
    steps = st.options.decoder_steps
    if st.kind == "causal-lm":
        with torch_threads(1):
            st.torch_reference = gated_model_reference(st.gated, steps)
        st.reference = ParityReference.from_torch(st.torch_reference, steps=steps)
    if st.reference is None:
        st.reference = ParityReference(st.gated, kind=st.kind, steps=steps).compute()
    st.reference.release_model()


def _output(st: CompileState) -> Path:
    """The atomic output folder, opened by the first stage that writes into it."""
    from fg_edge.formats.atomic import atomic_output_dir

    if st.tmp is None:
        st.tmp = st.stack.enter_context(atomic_output_dir(st.out, overwrite=st.overwrite))
    return st.tmp


def _export_baseline(st: CompileState, folded) -> None:
    """compile_model's `on_folded`: the dense baseline is the model being compiled with its gates folded and
    nothing removed yet, so it is exported right there (no second load of the model_dir, no copy)."""
    from fg_edge.exporters.pipeline.graphs import export_folded_baseline

    t0 = time.perf_counter()
    params = export_folded_baseline(folded, _output(st) / "baseline.onnx", st.options.opset, st.kind)
    st.baseline = {"what": "gates folded (W' = diag(r)(W+sBA)diag(c)), nothing removed", "params": params,
                   "exported": "from the model being compiled, after the fold and before the removal (in the "
                               "compile stage)", "export_seconds": round(time.perf_counter() - t0, 3)}


def _compile(st: CompileState) -> None:
    from fg_edge.compiler import compile_model
    from fg_edge.exporters.onnx_parity import torch_threads

    on_folded = (lambda folded: _export_baseline(st, folded)) if st.options.baseline else None
    # one torch thread: the parity generation is a batch-3 decode (latency-bound), and with 2+ threads on a
    # shared or busy machine OpenMP's barriers made it ~30x slower (measured: 3.8 s vs 0.13 s per token)
    with torch_threads(1):
        compiled, st.plan, st.creport = compile_model(st.gated, tol=st.options.tol,
                                                      decoder_steps=st.options.decoder_steps, inplace=True,
                                                      on_folded=on_folded, reference=st.torch_reference)
    st.torch_reference = None
    st.gated = None  # consumed: `compiled` is the same module, folded and pruned
    st.models["compiled"] = compiled  # export_graph frees it as soon as it is traced
    del compiled
    release()


def _save(st: CompileState) -> None:
    from fg_edge.compiler import save_compiled

    _output(st)
    # compiler files first (config.json with fg_edge_layers, weights, plan, tokenizer), moved to the top level
    staging = st.tmp / ".torch"
    setattr(st.models["compiled"].config, INPUTS_KEY, input_record(st.model_dir))
    save_compiled(st.models["compiled"], st.plan, st.creport, staging, tokenizer=st.tokenizer)
    for f in staging.iterdir():
        if f.name != REPORT_FILE:
            shutil.move(str(f), st.tmp / f.name)
    shutil.rmtree(staging)
    st.report = dict(st.creport)


def _export(st: CompileState) -> None:
    import torch

    if model_kind(st.models["compiled"]) != st.kind:
        raise CompileError(f"the compiled model exports as {model_kind(st.models['compiled'])!r}, the gated model "
                           f"as {st.kind!r}")
    st.info = export_graph(st.models, "compiled", st.tmp / "model.onnx", st.options, st.kind,
                           st.options.external_data)
    st.report["export"] = {**st.info.to_dict(), "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                           "torch_version": torch.__version__, "dynamic_axes": True,
                           "graph_optimization": "none written offline: ORT applies ORT_ENABLE_ALL at session "
                                                 "creation, and the parity gate runs with it",
                           "patches": "optimum-onnx sdpa/eager mask without vmap, DynamicLayer.update"}


def _parity(st: CompileState) -> None:
    from fg_edge.exporters.onnx_parity import open_parity_session

    o = st.options
    session = open_parity_session(st.tmp / "model.onnx")
    st.report["onnx_parity"] = {"model.onnx": check_onnx_parity(None, st.tmp / "model.onnx", kind=st.kind, tol=o.tol,
                                                                steps=o.decoder_steps, reference=st.reference,
                                                                session=session)}
    if st.kind == "causal-lm" and o.quantize != "none":
        # the quantized decoders' quality is measured against model.onnx: its side now, in the parity's session
        from fg_edge.exporters.pipeline.quality import QualityMeter

        data = st.eval_data
        st.quality = QualityMeter(st.tmp, o.quality_tokens, data.texts if data is not None else None,
                                  data.source if data is not None else None)
        st.quality.reference("compiled", session=session)
    del session
    st.report["parity_reference"] = {"computed": "once, reused for every graph", "from": st.reference.origin,
                                     "seconds": st.progress.times.get("reference")}
    st.graphs = ["model.onnx"]
    release()


def _baseline(st: CompileState) -> None:
    o = st.options
    if st.baseline is None:
        raise CompileError("the compiler never called back with the folded model, so baseline.onnx was not "
                           "exported")
    # written during the compile stage (`_export_baseline`); checked here against the gated model like model.onnx
    st.report["onnx_parity"]["baseline.onnx"] = check_onnx_parity(None, st.tmp / "baseline.onnx", kind=st.kind,
                                                                  tol=o.tol, steps=o.decoder_steps,
                                                                  reference=st.reference)
    st.report["baseline"] = st.baseline
    st.graphs.append("baseline.onnx")
    release()


def _quantize(st: CompileState) -> None:
    from fg_edge.exporters.mixed_bits import layer_modules

    mode = st.options.quantize
    layout = layer_modules((st.report.get("architecture") or {}).get("fields"))
    meter = st.quality

    def measure(graph: str, session) -> None:
        # baseline.onnx computes the compiled model's function (parity-checked against the gated model like
        # model.onnx), so both quantized files are measured against one fp32 reference: model.onnx's; each in
        # the session its parity check just used
        meter.compare("compiled", mode if graph == "model.onnx" else f"baseline-{mode}", session=session)

    st.report["quantization"] = quantize_graphs(st.tmp, st.graphs, st.reference, st.kind, st.info, st.tokenizer,
                                                st.options, st.calib, st.eval_data, layout=layout,
                                                on_quantized=measure if meter is not None else None)
    if st.method_choice:
        st.report["quantization"]["method_choice"] = st.method_choice
    st.quant_graphs = [quantized_name(g, mode) for g in st.graphs]
    if meter is not None:
        st.report["quantization"]["quality"] = meter.record()
        st.quality = None
        release()


def _genai(st: CompileState) -> None:
    """Decoders: genai_config.json, so ONNX Runtime GenAI runs the folder (fg_edge.exporters.genai_config)."""
    from fg_edge.exporters.genai_config import write_genai_config

    if st.kind == "causal-lm":
        write_genai_config(st.tmp, "model.onnx")
        st.report["genai"] = {"config": "genai_config.json", "decoder": "model.onnx",
                              "past_present_share_buffer": False,
                              "note": "set model.decoder.filename to another variant (e.g. model.int4.onnx) to run "
                                      "that one with onnxruntime_genai"}


def _pack_once(st: CompileState) -> None:
    """One self-contained file per graph unless the layout is external data, as the report says; done once, by
    the first stage after the quantizer (which reads the external-data layout) that needs the final files."""
    if not st.packed and not st.info.external_data:
        for g in st.graphs + st.quant_graphs:
            _ox.pack_onnx(st.tmp / g)
    st.packed = True


def _ort_format(st: CompileState) -> None:
    """.ort files per --ort-target (fg_edge.exporters.pipeline.mobile); the mobile estimate covers model.onnx as
    exported and every .ort as shipped (the graph ORT optimised offline into it)."""
    _pack_once(st)
    st.report["ort_format"], st.report["mobile_partitions"] = ort_format_stage(
        st.tmp, st.graphs, st.quant_graphs, st.options, st.kind, st.reference)


def _files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}


def _report(st: CompileState) -> None:
    from fg_edge import __version__

    _pack_once(st)
    prog, report, tmp = st.progress, st.report, st.tmp
    report.setdefault("quantization", {"mode": "none"})
    report.update({"fg_edge_version": __version__, "source": str(st.model_dir), "options": asdict(st.options)})
    report["timings_s"] = {**prog.times, "total": round(time.perf_counter() - prog.t0, 3)}   # per stage + total
    report["peak_rss_mib"] = {"sampled_per_stage": dict(prog.peaks),
                              "process_high_water_at_stage_end": dict(prog.high_water)}
    report["files"] = _files(tmp)
    report["summary"] = summary_rows(report)
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    report["files"][REPORT_FILE] = (tmp / REPORT_FILE).stat().st_size


#: every stage in the order it runs; `stage_enabled` says which of them the options skip
STAGES: list[tuple[str, Callable[[CompileState], None]]] = [
    ("load", _load), ("reference", _reference), ("compile", _compile), ("save", _save), ("export", _export),
    ("parity", _parity), ("baseline", _baseline), ("quantize", _quantize), ("genai", _genai),
    ("ort-format", _ort_format), ("report", _report),
]


def stage_enabled(name: str, options: CompileOptions) -> bool:
    return {"baseline": options.baseline, "quantize": options.quantize != "none",
            "ort-format": options.ort_format}.get(name, True)
