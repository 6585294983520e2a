"""`fg-edge compile MODEL_DIR`: fold + prune the gates away, export ONNX, check parity, write a compiled_dir.

Order of work, so bad input fails fast and leaves nothing behind: check options (opset, quantize, files) and the
output folder → load the gated model_dir → compile (fg_edge.compiler) → export + parity gate (+ baseline,
int8, ORT format) into a temporary folder that replaces the output only when every stage passed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import click

from fg_edge.formats.names import ORT_TARGETS
from fg_edge.formats.parity import ONNX_PARITY_TOL, PARITY_DECODER_STEPS
from fg_edge.exporters.weight_only import DEFAULT_ACCURACY_LEVEL, DEFAULT_BLOCK_SIZE
from fg_edge.cli.options import emit_json, json_option, overwrite_option, progress_option, show_progress

log = logging.getLogger(__name__)


@click.command(context_settings={"max_content_width": 110})
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="compiled_dir to write [default: MODEL_DIR_compiled]; must not exist unless --overwrite.")
@overwrite_option
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (14–20).")
@click.option("--quantize", type=click.Choice(["none", "int8", "qdq", "int4", "int8-wo"]), default="none",
              show_default=True,
              help="int4 / int8-wo: weight-only MatMulNBits (4- / 8-bit weight blocks, float activations; what "
                   "decoders should use): model.int4.onnx, baseline.int4.onnx (model.int8-wo.onnx, ...). int8: "
                   "dynamic int8 MatMuls for CPU encoders (refused for decoders). qdq: static QDQ with calibration "
                   "text, for NPU execution providers (model.qdq.onnx, baseline.qdq.onnx).")
@click.option("--per-channel", is_flag=True, help="int8 / qdq: weights per output channel (default: per tensor).")
@click.option("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, show_default=True,
              help="int4 / int8-wo: weights per quantization block along the input dimension (a power of 2 >= 16).")
@click.option("--symmetric/--asymmetric", default=None,
              help="int4 / int8-wo: symmetric blocks (no zero points) or a zero point per block [default: "
                   "symmetric for rtn (faster, and slightly better on SmolLM2-135M), asymmetric for hqq and gptq].")
@click.option("--accuracy-level", type=int, default=DEFAULT_ACCURACY_LEVEL, show_default=True,
              help="int4 / int8-wo: MatMulNBits compute type on CPU: 0 op default, 1 fp32, 2 fp16, 3 bf16, "
                   "4 int8 (activations quantized per block at run time; fastest).")
@click.option("--quant-method", type=click.Choice(["rtn", "hqq", "gptq"]), default=None,
              help="int4 / int8-wo: hqq (half-quadratic optimised scales and zero points, no calibration data; "
                   "asymmetric; its float zero points become integer ones plus an exact correction, so it runs "
                   "on ORT's fast kernels), gptq (rounding error compensated on calibration activations: "
                   "--calibration FILE or the training data; integer zero points) or rtn (round to nearest on "
                   "each block's range). [default for int4: gptq when there is calibration text (--calibration, "
                   "or the training data training.json records; trained SmolLM2-135M, 30% removed: +5.5% "
                   "perplexity vs +55% with hqq), else hqq; rtn for int8-wo]")
@click.option("--lm-head-bits", type=click.Choice(["4", "8"]), default="8", show_default=True,
              help="int4: bits of the quantized LM head (8: RTN symmetric; a 4-bit head cost SmolLM2-135M the most "
                   "perplexity of any layer choice).")
@click.option("--mixed-bits", type=click.Choice(["edges", "llama.cpp", "none"]), default="edges",
              show_default=True,
              help="int4: MatMuls kept in 8 bits (RTN, like the LM head): the value (or fused qkv) and FFN output "
                   "projections of the first and last eighth of the layers (edges), also of every third layer "
                   "between (llama.cpp, as its Q4_K_M and ORT GenAI's k_quant_mixed), or none. Trained "
                   "SmolLM2-135M, 30% removed, GPTQ: SST-2 dev perplexity +5.4% (none) -> +3.9% (edges, same "
                   "decode speed; llama.cpp +3.4% vs edges +3.7% on 300 sentences, ~3% slower decode).")
@click.option("--lm-head/--no-lm-head", "quantize_lm_head", default=None,
              help="Quantize the LM head of decoders [default: yes for int4 / int8-wo, no for int8 / qdq].")
@click.option("--quantize-embedding", is_flag=True,
              help="int4 / int8-wo: also store the token embedding in 4 / 8 bits (GatherBlockQuantized; needs "
                   "hidden size divisible by --block-size).")
@click.option("--quality-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Quantized decoders: greedy tokens per prompt compared with the fp32 graph at compile time.")
@click.option("--calibration", type=click.Path(path_type=Path),
              help="qdq / gptq calibration text (with --quantize int4 it selects gptq unless --quant-method says "
                   "otherwise): plain text (paragraphs separated by blank lines), or TSV/CSV/JSONL "
                   "with a 'text' column [default: the first texts of the training data recorded in training.json: "
                   "16 for qdq; for gptq 4,096 tokens (decoders: packed into 32-token sequences)].")
@click.option("--eval-data", type=click.Path(path_type=Path),
              help="Classifiers: TSV/CSV/JSONL (text, label): fp32 vs quantized accuracy. Decoders: text (or a "
                   "text column) for the fp32 vs quantized perplexity [default: a built-in sample].")
@click.option("--ort-format", is_flag=True,
              help="Also write .ort files for ORT Mobile, required_operators.config for a minimal ORT build, and "
                   "ORT's NNAPI / CoreML partition estimate in the report.")
@click.option("--ort-target", "ort_targets", type=click.Choice(list(ORT_TARGETS)), multiple=True,
              help="Which EPs the --ort-format files are for (repeatable) [default: cpu]. cpu: <stem>.ort, ORT's "
                   "full offline optimisation (fused contrib ops; CPU / XNNPACK EP). nnapi: <stem>.nnapi.ort "
                   "(model, baseline and with --quantize qdq their QDQ graphs), ORT's basic level, checked to hold "
                   "no contrib op (NNAPI; the fp32 files also CoreML), parity-checked; encoders only.")
@click.option("--no-baseline", is_flag=True, help="Skip the dense baseline (baseline.onnx) used by `fg-edge bench`.")
@click.option("--external-data/--no-external-data", default=None,
              help="Store weights in model.onnx.data [default: automatic above 1.5 GB].")
@click.option("--tolerance", type=float, default=ONNX_PARITY_TOL, show_default=True,
              help="fp32 parity tolerance (max abs difference vs the gated model).")
@click.option("--parity-steps", "decoder_steps", type=click.IntRange(min=1), default=PARITY_DECODER_STEPS,
              show_default=True,
              help="Decoders: cached greedy steps checked by the parity gate.")
@click.option("--steps", "legacy_steps", type=click.IntRange(min=1), default=None, hidden=True,
              help="Old name of --parity-steps (it clashed with train's --steps, optimiser steps).")
@progress_option
@json_option("the compile report")
def compile_cmd(model_dir: Path, output: Optional[Path], overwrite: bool, opset: int, quantize: str,
                per_channel: bool, block_size: int, symmetric: Optional[bool], accuracy_level: int,
                quant_method: Optional[str], lm_head_bits: str, mixed_bits: str, quantize_lm_head: Optional[bool],
                quantize_embedding: bool, quality_tokens: int,
                calibration: Optional[Path], eval_data: Optional[Path], ort_format: bool, ort_targets: tuple[str, ...],
                no_baseline: bool, external_data: Optional[bool], tolerance: float, decoder_steps: int,
                legacy_steps: Optional[int], progress: Optional[bool], json_path: Optional[str]) -> None:
    """Compile MODEL_DIR (from `fg-edge train`) into ONNX models that compute exactly what the gated model does.

    \b
    Writes model.onnx (compiled), baseline.onnx (dense, same export settings), optional quantized pairs
    (int8, qdq, int4, int8-wo: model.<mode>.onnx + baseline.<mode>.onnx) and .ort
    files, config.json with the per-layer shape record, tokenizer files, compile_report.json and, for decoders,
    genai_config.json (ONNX Runtime GenAI runs the folder). Refuses to
    write anything when ONNX Runtime disagrees with the gated model beyond --tolerance.

    \b
    Examples:
      fg-edge compile runs/minilm -o runs/minilm-compiled --quantize int8 --ort-format
      fg-edge compile runs/minilm -o runs/minilm-android --quantize qdq --ort-format --ort-target nnapi
      fg-edge compile runs/smollm2 -o runs/smollm2-compiled --quantize int4 --eval-data valid.txt
      fg-edge compile runs/stories260K --parity-steps 64 --json runs/stories260K-report.json
    """
    from fg_edge.exporters.pipeline import CompileOptions, compile_model_dir, default_output, format_summary

    if legacy_steps is not None:
        log.warning("--steps is now --parity-steps (train's --steps counts optimiser steps); using %d", legacy_steps)
        decoder_steps = legacy_steps

    options = CompileOptions(opset=opset, quantize=quantize, per_channel=per_channel, block_size=block_size,
                             symmetric=symmetric, accuracy_level=accuracy_level, quant_method=quant_method,
                             lm_head_bits=int(lm_head_bits), mixed_bits=mixed_bits,
                             quantize_lm_head=quantize_lm_head,
                             quantize_embedding=quantize_embedding,
                             quality_tokens=quality_tokens,
                             calibration=str(calibration) if calibration else None, ort_format=ort_format,
                             ort_targets=tuple(ort_targets) or None,
                             baseline=not no_baseline, external_data=external_data, tol=tolerance,
                             decoder_steps=decoder_steps, eval_data=str(eval_data) if eval_data else None)
    out = output or default_output(model_dir)
    report = compile_model_dir(model_dir, out, options=options, overwrite=overwrite,
                               progress=show_progress(progress))
    if emit_json(report, json_path):
        return
    click.echo(format_summary(report, color=True))     # click.echo drops the colour off a terminal
    click.echo(f"wrote {out}")
