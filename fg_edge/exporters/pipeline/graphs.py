"""The work a compile does on ONNX graphs: trace + write one (freeing the torch model in between), the dense
baseline's export (from the model being compiled, between fold and prune), and quantizing the written graphs
with their parity and accuracy."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from fg_edge.exporters import onnx_export as _ox
from fg_edge.exporters.onnx_parity import check_onnx_parity
from fg_edge.exporters.pipeline.memory import release
from fg_edge.exporters.pipeline.options import CompileOptions
from fg_edge.exporters.pipeline.summary import quantized_name


def _trace_then_write(model, path: Path, opset: int, kind: str, between: Callable[[], None]):
    """Trace `model` to a scratch ONNX file (linears re-laid out: no transposed copy of the weights), call
    `between` (the caller frees or restores the torch model there), then write the final graph (metadata, LM
    head) to `path` with external data; returns (the raw export, its ExportInfo)."""
    scratch = Path(tempfile.mkdtemp(prefix=".fg-export-", dir=path.parent))
    try:
        # looked up on the module at call time (tests substitute onnx_export.trace_to_onnx)
        raw = _ox.trace_to_onnx(model, scratch / "raw.onnx", opset=opset, kind=kind, consume=True)
        del model
        between()
        release()
        return raw, _ox.finalize_onnx(raw, path, kind=kind, external_data=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def export_graph(model_holder: dict, key: str, path: Path, options: CompileOptions, kind: str,
                 external_data: Optional[bool]):
    """Trace the torch model `model_holder[key]` to ONNX, free it, then write the final graph — so the torch
    weights and the graph's protobuf copy are never in memory together."""
    raw, info = _trace_then_write(model_holder[key], path, options.opset, kind, lambda: model_holder.pop(key))
    # written with external data whatever the final layout (ORT sessions and the quantizer load such a graph
    # with less memory); `info.external_data` is the final layout, the report stage packs the graphs to it
    info.external_data = bool(external_data if external_data is not None
                              else raw.param_bytes > _ox.EXTERNAL_DATA_THRESHOLD)
    return info


def export_folded_baseline(model, path: Path, opset: int, kind: str) -> int:
    """The dense baseline from the model being compiled, at the moment its gates are folded in and nothing is
    removed yet (compile_model's `on_folded`): traced like model.onnx, its linears then put back
    (restore_linears_), so the compile goes on with the same weights. Returns its parameter count."""
    params = sum(p.numel() for p in dict(model.named_parameters()).values())
    _trace_then_write(model, path, opset, kind, lambda: _ox.restore_linears_(model))
    return int(params)


class _GraphClassifier:
    """`.logits(texts, pairs)` of a classifier graph just written, tokenized with the model_dir's HF tokenizer
    (what runtimes.evaluate.accuracy needs; the compiled_dir's Runner is not there yet)."""

    def __init__(self, onnx_path: Path, tokenizer, token_type_ids: bool, max_length: int = 128):
        from fg_edge.exporters.onnx_parity import make_session

        self.session, self.tokenizer = make_session(onnx_path), tokenizer
        self.token_type_ids, self.max_length = token_type_ids, max_length

    def logits(self, texts, pairs=None):
        import numpy as np

        enc = self.tokenizer(texts, pairs, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="np")
        feeds = {"input_ids": enc["input_ids"].astype(np.int64),
                 "attention_mask": enc["attention_mask"].astype(np.int64)}
        if self.token_type_ids:
            feeds["token_type_ids"] = enc.get("token_type_ids", np.zeros_like(enc["input_ids"])).astype(np.int64)
        return self.session.run(["logits"], feeds)[0]


def _eval_accuracy(onnx_path: Path, data, tokenizer, info) -> float:
    from fg_edge.runtimes.evaluate import accuracy

    model = _GraphClassifier(onnx_path, tokenizer, info.token_type_ids)
    return accuracy(model, data.texts, data.labels, batch_size=16, text_pairs=data.text_pairs or None)["value"]


def _graph_kv_shapes(path: Path) -> list[tuple[int, int]]:
    """(kv_heads, head_dim) per layer from the graph's metadata `fg_edge.kv_shapes` (each graph its own: the
    baseline keeps every kv head the compiled model may have dropped)."""
    import json

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return [(int(h), int(d)) for h, d in json.loads(meta.get("fg_edge.kv_shapes", "[]"))]


def _first_tokens(feeds: list[dict], limit: int) -> list[dict]:
    """The leading feeds that hold about `limit` tokens in all (at least one)."""
    total = 0
    for k, feed in enumerate(feeds):
        total += feed["input_ids"].size
        if total >= limit:
            return feeds[:k + 1]
    return feeds


def _position_limit(tmp: Path):
    """The saved config's position limit (GPTQ's packed calibration chunks stay inside it), or None."""
    import json

    from fg_edge.formats.positions import position_limit

    path = tmp / "config.json"
    return position_limit(json.loads(path.read_text())) if path.is_file() else None


def _quantize_one(tmp: Path, g: str, dst: str, options: CompileOptions, feeds, save_factors=None,
                  borrow_factors=None, layout=None) -> dict:
    """Quantize graph `g` into `dst` by options.quantize (`feeds`: qdq / gptq calibration, built for this graph;
    gptq: `save_factors` / `borrow_factors` as quantize_weight_only takes them; `layout`: the layer layout its
    mixed precision reads, fg_edge.exporters.mixed_bits.layer_modules); the settings used."""
    from fg_edge.exporters.quantize import QuantizeConfig, quantize_int8_dynamic_isolated, quantize_qdq_static
    from fg_edge.exporters.weight_only import quantize_weight_only_isolated

    if options.weight_only:
        # in a child process, like int8: this (torch) process keeps its heap, the child peaks on its own
        if feeds is None:
            return quantize_weight_only_isolated(tmp / g, tmp / dst, options.weight_only_config(), layout=layout)
        from fg_edge.exporters.gptq import save_feeds

        calib = tmp.parent / f"{tmp.name}.{g}.calibration.npz"     # beside the output folder, never in it
        try:
            return quantize_weight_only_isolated(tmp / g, tmp / dst, options.weight_only_config(),
                                                 calibration=save_feeds(feeds, calib), save_factors=save_factors,
                                                 borrow_factors=borrow_factors, layout=layout)
        finally:
            calib.unlink(missing_ok=True)
    config = QuantizeConfig(per_channel=options.per_channel, include_lm_head=options.lm_head_quantized)
    if options.quantize == "int8":
        return quantize_int8_dynamic_isolated(tmp / g, tmp / dst, config)
    return quantize_qdq_static(tmp / g, tmp / dst, feeds, config)


def quantize_graphs(tmp: Path, graphs: list[str], reference, kind: str, info, tokenizer, options: CompileOptions,
                    calib, eval_data, layout: Optional[dict] = None,
                    on_quantized: Optional[Callable[[str, object], None]] = None) -> dict:
    """Quantize each graph in `tmp` (options.quantize), measure it against the gated model (report only) and,
    with eval data, the task accuracy of every graph before and after (classifiers; decoders are measured by
    fg_edge.exporters.pipeline.quality). `layout`: the layers and modules weight-only int4's mixed precision
    reads (fg_edge.exporters.mixed_bits.layer_modules), None without an architecture spec. `on_quantized(graph,
    session)`: called per fp32 graph once its quantized file is checked, with the session that check ran in."""
    from fg_edge.exporters.gptq import GPTQ_CALIBRATION_TOKENS, GPTQ_CHUNK_TOKENS, packed_decoder_feeds
    from fg_edge.exporters.onnx_parity import open_parity_session
    from fg_edge.exporters.quantize import CALIBRATION_MAX_LENGTH, calibration_feeds, quantized_op_counts

    result: dict = {"files": {}}
    if options.needs_calibration:
        result["calibration_source"] = calib[1]
        result["calibration_texts"] = len(calib[0])
    gptq = options.needs_calibration == "--quant-method gptq"
    packed = gptq and kind == "causal-lm"
    chunk = min(GPTQ_CHUNK_TOKENS, _position_limit(tmp) or GPTQ_CHUNK_TOKENS)
    # GPTQ: the compiled graph's Hessians (its inputs are what the baseline's MatMuls read, less the removed
    # inputs) serve the dense baseline too, factored once: the baseline's calibration forward and factorisations
    # run only for what they miss
    factors = tmp.parent / f"{tmp.name}.gptq-factors.npz" if gptq and graphs[:2] == ["model.onnx", "baseline.onnx"] \
        else None
    try:
        for g in graphs:
            dst = quantized_name(g, options.quantize)
            feeds = None
            if options.needs_calibration:   # past inputs shaped for this graph's own kv heads
                kv = _graph_kv_shapes(tmp / g) if kind == "causal-lm" else []
                feeds = (packed_decoder_feeds(calib[0], tokenizer, info.input_names, kv, chunk=chunk) if packed
                         else calibration_feeds(calib[0], tokenizer, info.input_names, kv, CALIBRATION_MAX_LENGTH))
                if gptq:
                    feeds = _first_tokens(feeds, GPTQ_CALIBRATION_TOKENS)
            share = {} if factors is None else (
                {"save_factors": str(factors)} if g == "model.onnx" else
                {"borrow_factors": [str(tmp / "model.onnx"), str(factors)]} if g == "baseline.onnx" else {})
            result["settings"] = _quantize_one(tmp, g, dst, options, feeds, layout=layout, **share)
            release()
            session = open_parity_session(tmp / dst)
            entry = {"source": g, "quantized_ops": quantized_op_counts(tmp / dst),
                     "vs_gated_model": check_onnx_parity(None, tmp / dst, kind=kind, tol=options.tol,
                                                         steps=options.decoder_steps, raise_on_fail=False,
                                                         reference=reference, session=session)}
            if on_quantized is not None:
                on_quantized(g, session)
            del session
            if "gptq" in result["settings"]:
                entry["gptq_hessians"] = result["settings"]["gptq"]["hessians"]
            release()
            result["files"][dst] = entry
    finally:
        if factors is not None:
            factors.unlink(missing_ok=True)
    if eval_data is not None and kind != "causal-lm":
        metric = {"data": eval_data.source, "rows": len(eval_data), "metric": "accuracy"}
        for g in graphs:
            metric[g] = _eval_accuracy(tmp / g, eval_data, tokenizer, info)
            dst = quantized_name(g, options.quantize)
            metric[dst] = _eval_accuracy(tmp / dst, eval_data, tokenizer, info)
        metric["quantized_change"] = metric[quantized_name("model.onnx", options.quantize)] - metric["model.onnx"]
        result["task_metric"] = metric
    return result
