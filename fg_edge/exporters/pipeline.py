"""model_dir -> compiled_dir: compile (fg_edge.compiler), export to ONNX, parity gate, baseline, int8, ORT format.

    report = compile_model_dir("runs/minilm", "runs/minilm_compiled", options=CompileOptions(quantize="int8"))

compiled_dir (written atomically: nothing appears unless every stage and every parity check passed):

    model.onnx (+ model.onnx.data)   the compiled graph (fp32); per-layer KV shapes for decoders
    baseline.onnx                    the dense model (gates folded, nothing removed), same export settings
    model.int8.onnx, baseline.int8.onnx    with --quantize int8 (dynamic)
    model.qdq.onnx, baseline.qdq.onnx      with --quantize qdq (static QDQ, for NPU EPs)
    model.ort, baseline.ort (+ .int8.ort), required_operators.config    with --ort-format
    config.json                      HF config + the per-layer shape record `fg_edge_layers` (fg_edge.compiler)
    model.safetensors, compile_plan.json   the compiled torch weights and removal plan (fg_edge.compiler.load_compiled)
    tokenizer files                  when the model_dir has a tokenizer
    compile_report.json              compiler report + "export", "onnx_parity", "quantization", "ort_format",
                                     "mobile_partitions", "files" (bytes), "summary"
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from fg_edge.arch import model_kind
from fg_edge.errors import ConfigError, FgEdgeError, ModelDirError, OutputPathError
from fg_edge.formats.names import REPORT_FILE
from fg_edge.exporters import onnx_export as _ox
from fg_edge.exporters.onnx_export import DEFAULT_OPSET, validate_opset
from fg_edge.exporters.onnx_parity import DEFAULT_STEPS, DEFAULT_TOL, check_onnx_parity
from fg_edge.exporters.quantize import QUANTIZE_MODES

log = logging.getLogger(__name__)



@dataclass
class CompileOptions:
    opset: int = DEFAULT_OPSET
    quantize: str = "none"
    per_channel: bool = False
    #: int8 / QDQ: also quantize the LM head (vocabulary projection) of causal LMs; off = kept fp32
    quantize_lm_head: bool = False
    calibration: Optional[str] = None
    ort_format: bool = False
    baseline: bool = True
    external_data: Optional[bool] = None
    tol: float = DEFAULT_TOL
    decoder_steps: int = DEFAULT_STEPS
    eval_data: Optional[str] = None
    eval_max_rows: int = 256

    def validate(self) -> "CompileOptions":
        validate_opset(self.opset)
        if self.quantize not in QUANTIZE_MODES:
            raise ConfigError(f"--quantize {self.quantize!r}: use one of {', '.join(QUANTIZE_MODES)}")
        for opt, value in (("--calibration", self.calibration), ("--eval-data", self.eval_data)):
            if value is not None and not str(value).startswith("hf:") and not Path(value).is_file():
                raise ConfigError(f"{opt} {value}: no such file")
        if self.calibration is not None and self.quantize != "qdq":
            log.warning("--calibration is only used by --quantize qdq; ignoring it")
        if not (self.tol > 0):
            raise ConfigError(f"parity tolerance must be > 0; got {self.tol}")
        return self


def default_output(model_dir: str | Path) -> Path:
    model_dir = Path(model_dir)
    return model_dir.with_name(model_dir.name + "_compiled")


class _RssSampler:
    """Peak resident memory of this process per stage: a daemon thread samples /proc/self/statm every 20 ms
    (the kernel's ru_maxrss gives the running peak when /proc is not there)."""

    def __init__(self, interval: float = 0.02):
        import threading

        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._proc = Path("/proc/self/statm").exists()
        self._thread = threading.Thread(target=self._run, name="fg-edge-rss", daemon=True)
        if self._proc:
            self._thread.start()

    def _now(self) -> int:
        if self._proc:
            try:
                return int(Path("/proc/self/statm").read_text().split()[1]) * self._page
            except (OSError, ValueError, IndexError):
                return 0
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._now())

    def take(self) -> int:
        """Peak bytes since the last take(), and reset."""
        peak, self.peak = max(self.peak, self._now()), 0
        return peak

    def stop(self) -> None:
        self._stop.set()


class _Progress:
    """Stage display on stderr (tqdm); silent when disabled. Records seconds and peak RSS per stage."""

    def __init__(self, stages: list[str], enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(stages), desc="compile", unit="stage", file=sys.stderr, leave=False,
                            bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar:20}| {elapsed}")
        self.t0 = time.perf_counter()
        self.times: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.high_water: dict[str, float] = {}
        self.rss = _RssSampler()

    def stage(self, name: str) -> None:
        self._current = name
        self._start = time.perf_counter()
        self.rss.take()
        if self.bar is not None:
            self.bar.set_description_str(f"compile: {name}")
        log.debug("stage: %s", name)

    def done(self) -> None:
        self.times[self._current] = round(time.perf_counter() - self._start, 3)
        self.peaks[self._current] = round(self.rss.take() / 2**20, 1)
        # the sampler thread needs the GIL and misses spikes inside long C++ calls (torch.onnx.export's
        # serialisation); the kernel's high-water mark at the end of each stage shows where the true peak was
        import resource

        self.high_water[self._current] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        log.debug("stage %s: %.1f s, peak RSS %.0f MiB", self._current, self.times[self._current],
                  self.peaks[self._current])
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        self.rss.stop()
        if self.bar is not None:
            self.bar.close()


def _release() -> None:
    """Collect freed torch / protobuf objects and hand the freed heap back to the OS (glibc)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _unmap_weights(model, model_dir: Path) -> int:
    """Give the weights that from_pretrained left on a memory map of the model_dir's safetensors file(s) their own
    memory, read with plain file reads (the page cache does not count as this process's memory; touched pages of
    a mapping do, until the whole mapping is gone). The compile and baseline then fold layer by layer, each old
    weight freed as its new one is made, instead of holding the mapped file and the folded copy at once.
    Returns the number of tensors read; anything not found in the files is left as it is."""
    import struct

    import torch

    targets: dict[str, list] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
        targets.setdefault(name.replace(".base_layer.", "."), []).append(t)
    done: set[int] = set()
    for file in sorted(model_dir.glob("*.safetensors")):
        if file.name == "fg_edge_gates.safetensors":
            continue
        try:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
                start = 8 + n
                for key, meta in header.items():
                    if key == "__metadata__" or key not in targets:
                        continue
                    dtype = getattr(torch, _SAFETENSORS_DTYPES.get(meta.get("dtype"), ""), None)
                    lo, hi = meta["data_offsets"]
                    for t in targets[key]:
                        if id(t) in done or dtype is None or t.dtype != dtype or list(t.shape) != meta["shape"]:
                            continue
                        buf = bytearray(hi - lo)
                        f.seek(start + lo)
                        if f.readinto(buf) != hi - lo:
                            raise OSError(f"{file}: truncated tensor {key}")
                        fresh = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
                        t.data = fresh.reshape(t.shape)
                        done.add(id(t))
        except (OSError, ValueError, KeyError, struct.error) as exc:  # leave the model as loaded
            log.debug("could not re-read weights from %s: %s", file, exc)
    return len(done)


def _load_gated(model_dir: Path):
    from fg_edge.model_dir import load

    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: no such model_dir (expected the folder written by `fg-edge train`)")
    try:
        model = load(model_dir)
        _unmap_weights(model, model_dir)
        return model
    except FgEdgeError:
        raise
    except Exception as exc:  # corrupted weights / config files surface as assorted library errors
        raise ModelDirError(f"{model_dir}: cannot load the gated model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _load_tokenizer(model_dir: Path):
    from fg_edge.model_dir import load_tokenizer

    try:
        return load_tokenizer(model_dir)
    except Exception as exc:  # noqa: BLE001 - transformers raises assorted errors for folders without tokenizer
        log.debug("no usable tokenizer in %s (%s: %s)", model_dir, type(exc).__name__, exc)
        return None


def _calibration_texts(options: CompileOptions, model_dir: Path) -> tuple[list[str], str]:
    from fg_edge.model_dir import read_training_metadata
    from fg_edge.exporters.quantize import calibration_texts_from_training, read_calibration_texts

    if options.calibration:
        return read_calibration_texts(options.calibration), str(options.calibration)
    try:
        meta = read_training_metadata(model_dir)
    except (OSError, json.JSONDecodeError):
        meta = {}
    texts = calibration_texts_from_training(meta)
    if not texts:
        raise ConfigError(f"--quantize qdq needs calibration text and {model_dir}/training.json records no readable "
                          f"training data: pass --calibration FILE (one sentence per line, or a TSV/CSV/JSONL "
                          f"file with a 'text' column)")
    return texts, "training data recorded in training.json"


def _eval_accuracy(onnx_path: Path, data, tokenizer, info, max_length: int = 128) -> float:
    import numpy as np

    from fg_edge.exporters.onnx_parity import make_session

    session = make_session(onnx_path)
    correct = 0
    for start in range(0, len(data), 16):
        texts = data.texts[start:start + 16]
        pairs = data.text_pairs[start:start + 16] if data.text_pairs else None
        enc = tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        feeds = {"input_ids": enc["input_ids"].astype(np.int64),
                 "attention_mask": enc["attention_mask"].astype(np.int64)}
        if info.token_type_ids:
            feeds["token_type_ids"] = enc.get("token_type_ids", np.zeros_like(enc["input_ids"])).astype(np.int64)
        logits = session.run(["logits"], feeds)[0]
        correct += int((logits.argmax(-1) == np.asarray(data.labels[start:start + 16])).sum())
    return correct / max(len(data), 1)


def _check_writable(out: Path) -> None:
    """Fail before any work when the output folder cannot be created (parent is a file, read-only, …)."""
    import tempfile

    probe = out.resolve().parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputPathError(f"cannot create output folder {out}: {probe} is a file, not a folder; choose another "
                              f"--output")
    try:
        tempfile.TemporaryDirectory(prefix=".fg-probe-", dir=probe).cleanup()
    except OSError as exc:
        raise OutputPathError(f"cannot write under {probe} ({exc.strerror or exc}); choose another --output") from None


def _files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}


def compile_model_dir(model_dir: str | Path, out: Optional[str | Path] = None, *,
                      options: Optional[CompileOptions] = None, overwrite: bool = False,
                      progress: bool = False) -> dict:
    """Compile, export and check a model_dir; returns the compile report (also written to the output)."""
    from fg_edge import __version__
    from fg_edge.formats.atomic import atomic_output_dir, check_output_dir

    options = (options or CompileOptions()).validate()
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else default_output(model_dir)
    check_output_dir(out, overwrite)
    _check_writable(out)
    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"the output folder {out} is the model_dir itself; choose another --output")

    stages = ["load", "reference", "compile", "save", "export", "parity"]
    stages += ["baseline"] if options.baseline else []
    stages += ["quantize"] if options.quantize != "none" else []
    stages += ["ort-format"] if options.ort_format else []
    stages += ["report"]
    prog = _Progress(stages, progress)
    try:
        prog.stage("load")
        gated = _load_gated(model_dir)
        tokenizer = _load_tokenizer(model_dir)
        calib = None
        if options.quantize == "qdq":
            if tokenizer is None:
                raise ConfigError(f"--quantize qdq tokenizes calibration text but {model_dir} has no tokenizer files")
            calib = _calibration_texts(options, model_dir)
        eval_data = None
        if options.eval_data:
            eval_data = _load_eval_data(options, gated, tokenizer, model_dir)
        prog.done()

        from fg_edge.compiler import compile_model, save_compiled

        from fg_edge.exporters.onnx_parity import ParityReference, torch_threads

        # the gated model's side of every ONNX parity check, computed once (ORT is fed torch's greedy tokens, so
        # the torch trajectory does not depend on the graph under test) and reused for model / baseline /
        # quantized; computed before the compile, which then works on the gated model itself (no second copy)
        prog.stage("reference")
        kind = model_kind(gated)
        reference = ParityReference(gated, kind=kind, steps=options.decoder_steps).compute()
        reference.release_model()
        prog.done()

        prog.stage("compile")
        # one torch thread: the parity generation is a batch-3 decode (latency-bound), and with 2+ threads on a
        # shared or busy machine OpenMP's barriers made it ~30x slower (measured: 3.8 s vs 0.13 s per token)
        with torch_threads(1):
            compiled, plan, creport = compile_model(gated, tol=options.tol, decoder_steps=options.decoder_steps,
                                                    inplace=True)
        del gated  # consumed: `compiled` is the same module, folded and pruned
        _release()
        prog.done()

        with atomic_output_dir(out, overwrite=overwrite) as tmp:
            models = {"compiled": compiled}
            del compiled  # _write_all frees each model as soon as it is done with it
            report = _write_all(tmp, models, plan, creport, tokenizer, options, prog, calib, eval_data,
                                save_compiled, model_dir, reference, kind)
            report.update({"fg_edge_version": __version__, "source": str(model_dir),
                           "options": asdict(options)})
            prog.stage("report")
            report["stage_seconds"] = prog.times
            report["timings_s"] = {**prog.times, "total": round(time.perf_counter() - prog.t0, 3)}
            report["peak_rss_mib"] = {"sampled_per_stage": dict(prog.peaks),
                                      "process_high_water_at_stage_end": dict(prog.high_water)}
            report["files"] = _files(tmp)
            report["summary"] = summary_rows(report)
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
            report["files"][REPORT_FILE] = (tmp / REPORT_FILE).stat().st_size
            prog.done()
    finally:
        prog.close()
    log.info("wrote compiled model %s", out)
    report["output"] = str(out)
    return report


def _load_eval_data(options: CompileOptions, gated, tokenizer, model_dir: Path):
    from fg_edge.data.readers import load_classification
    from fg_edge.model_dir import read_gate_config

    task = read_gate_config(model_dir).task
    if task != "classification":
        raise ConfigError(f"--eval-data measures classification accuracy; this model_dir's task is {task!r}")
    if tokenizer is None:
        raise ConfigError(f"--eval-data needs the tokenizer, and {model_dir} has no tokenizer files")
    return load_classification(options.eval_data, max_rows=options.eval_max_rows, what="--eval-data file")


def _export(model_holder: dict, key: str, path: Path, options: CompileOptions, kind: str,
            external_data: Optional[bool]):
    """Trace the torch model `model_holder[key]` to ONNX, free it, then write the final graph (metadata, LM head)
    — so the torch weights and the graph's protobuf copy are never in memory together."""
    scratch = Path(tempfile.mkdtemp(prefix=".fg-export-", dir=path.parent))
    try:
        raw = _ox.trace_to_onnx(model_holder[key], scratch / "raw.onnx", opset=options.opset, kind=kind,
                                consume=True)
        del model_holder[key]
        _release()
        # written with external data whatever the final layout (ORT sessions and the quantizer load such a graph
        # with less memory); `info.external_data` is the final layout, `_pack_graphs` applies it at the end
        decided = external_data if external_data is not None else raw.param_bytes > _ox.EXTERNAL_DATA_THRESHOLD
        info = _ox.finalize_onnx(raw, path, kind=kind, external_data=True)
        info.external_data = bool(decided)
        return info
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def export_baseline(model_dir: str, path: str, opset: int, kind: str, external_data: bool) -> int:
    """The baseline stage's work (run in a child process by the pipeline): load the gated model, fold its
    gates, export it to `path`; returns its parameter count."""
    from fg_edge.exporters.baseline import dense_baseline

    models = {"dense": dense_baseline(_load_gated(Path(model_dir)), inplace=True)}
    params = sum(p.numel() for p in dict(models["dense"].named_parameters()).values())
    _export(models, "dense", Path(path), CompileOptions(opset=opset), kind, external_data)
    return int(params)


def _write_all(tmp: Path, models: dict, plan, creport: dict, tokenizer, options: CompileOptions, prog,
               calib, eval_data, save_compiled, model_dir: Path, reference, kind: str) -> dict:
    import torch

    # compiler files first (config.json with fg_edge_layers, weights, plan, tokenizer), moved to the top level
    prog.stage("save")
    staging = tmp / ".torch"
    save_compiled(models["compiled"], plan, creport, staging, tokenizer=tokenizer)
    for f in staging.iterdir():
        if f.name != REPORT_FILE:
            shutil.move(str(f), tmp / f.name)
    shutil.rmtree(staging)
    prog.done()

    report = dict(creport)
    if model_kind(models["compiled"]) != kind:
        raise FgEdgeError(f"the compiled model exports as {model_kind(models['compiled'])!r}, the gated model "
                          f"as {kind!r}")

    prog.stage("export")
    info = _export(models, "compiled", tmp / "model.onnx", options, kind, options.external_data)
    prog.done()
    report["export"] = {**info.to_dict(), "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                        "torch_version": torch.__version__, "dynamic_axes": True,
                        "graph_optimization": "none written offline: ORT applies ORT_ENABLE_ALL at session "
                                              "creation, and the parity gate runs with it",
                        "patches": "optimum-onnx sdpa/eager mask without vmap, DynamicLayer.update"}

    prog.stage("parity")
    parity = {"model.onnx": check_onnx_parity(None, tmp / "model.onnx", kind=kind, tol=options.tol,
                                              steps=options.decoder_steps, reference=reference)}
    _release()
    prog.done()
    graphs = ["model.onnx"]
    if options.baseline:
        from fg_edge.exporters.isolated import run_isolated

        prog.stage("baseline")
        # in a child process (this one keeps its heap; the child peaks on its own): reloaded from the model_dir,
        # its gates folded in place (no deep copy), exported like model.onnx
        params = run_isolated("fg_edge.exporters.pipeline:export_baseline", "the dense baseline export",
                              model_dir=str(model_dir), path=str(tmp / "baseline.onnx"), opset=options.opset,
                              kind=kind, external_data=info.external_data)
        parity["baseline.onnx"] = check_onnx_parity(None, tmp / "baseline.onnx", kind=kind, tol=options.tol,
                                                    steps=options.decoder_steps, reference=reference)
        report["baseline"] = {"what": "gates folded (W' = diag(r)(W+sBA)diag(c)), nothing removed",
                              "params": params}
        graphs.append("baseline.onnx")
        _release()
        prog.done()
    report["onnx_parity"] = parity
    report["parity_reference"] = {"computed": "once, reused for every graph",
                                  "seconds": prog.times.get("reference")}

    quant_graphs = []
    if options.quantize != "none":
        prog.stage("quantize")
        report["quantization"] = _quantize(tmp, graphs, reference, kind, info, tokenizer, options, calib,
                                           eval_data)
        quant_graphs = [quantized_name(g, options.quantize) for g in graphs]
        prog.done()
    else:
        report["quantization"] = {"mode": "none"}

    if not info.external_data:  # one self-contained file per graph, as the report says
        for g in graphs + quant_graphs:
            _ox.pack_onnx(tmp / g)

    if options.ort_format:
        from fg_edge.exporters.ort_format import convert_to_ort, partition_summary

        prog.stage("ort-format")
        ort_info = convert_to_ort([tmp / g for g in graphs + quant_graphs], tmp)
        import onnxruntime as ort

        for name in ort_info["files"]:  # each .ort must load in ORT
            ort.InferenceSession(str(tmp / name), providers=["CPUExecutionProvider"])
        report["ort_format"] = ort_info
        report["mobile_partitions"] = {"model.onnx": partition_summary(tmp / "model.onnx")}
        prog.done()
    return report


def _quantize(tmp: Path, graphs: list[str], reference, kind: str, info, tokenizer, options: CompileOptions,
              calib, eval_data) -> dict:
    from fg_edge.exporters.quantize import calibration_feeds, quantize_int8_dynamic_isolated, quantize_qdq_static, quantized_op_counts

    result: dict = {"files": {}}
    feeds = None
    if options.quantize == "qdq":
        texts, source = calib
        feeds = calibration_feeds(texts, tokenizer, info.input_names, info.kv_shapes)
        result["calibration_source"] = source
    for g in graphs:
        dst = quantized_name(g, options.quantize)
        if options.quantize == "int8":
            # in a child process: this (torch) process keeps its heap, the child peaks on its own
            settings = quantize_int8_dynamic_isolated(tmp / g, tmp / dst, per_channel=options.per_channel,
                                                      include_lm_head=options.quantize_lm_head)
        else:
            settings = quantize_qdq_static(tmp / g, tmp / dst, feeds, per_channel=options.per_channel,
                                           include_lm_head=options.quantize_lm_head)
        _release()
        result["settings"] = settings
        entry = {"source": g, "quantized_ops": quantized_op_counts(tmp / dst),
                 "vs_gated_model": check_onnx_parity(None, tmp / dst, kind=kind, tol=options.tol,
                                                     steps=options.decoder_steps, raise_on_fail=False,
                                                     reference=reference)}
        _release()
        result["files"][dst] = entry
    if eval_data is not None:
        metric = {"data": eval_data.source, "rows": len(eval_data), "metric": "accuracy"}
        for g in graphs:
            metric[g] = _eval_accuracy(tmp / g, eval_data, tokenizer, info)
            dst = quantized_name(g, options.quantize)
            metric[dst] = _eval_accuracy(tmp / dst, eval_data, tokenizer, info)
        metric["quantized_change"] = metric[quantized_name("model.onnx", options.quantize)] - metric["model.onnx"]
        result["task_metric"] = metric
    return result


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
            "parity": None if p is None else ("pass" if p["passed"] else "report only"),
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
                     f"({t.get('params_removed', 0):,} removed); FLOP ratio {t.get('flop_ratio', 1.0):.2f}x "
                     f"(the speed-up ceiling); ONNX parity tolerance {report.get('options', {}).get('tol', DEFAULT_TOL):.0e}")
    metric = report.get("quantization", {}).get("task_metric")
    if metric:
        mode = report["quantization"]["settings"]["mode"]
        q = quantized_name("model.onnx", mode)
        lines.append(f"accuracy on {metric['rows']} rows of {metric['data']}: fp32 {metric['model.onnx']:.4f}, "
                     f"{mode} {metric[q]:.4f} ({metric['quantized_change']:+.4f})")
    return "\n".join(lines)
