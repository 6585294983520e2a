#!/usr/bin/env bash
# Issue 2/4/5 benchmark: all-MiniLM-L6-v2 on SST-2 -> gates -> compile (int8, .ort) -> bench vs the dense baseline.
# Results: benchmarks/results/minilm/{train.json,compile.json,compile_report.json,bench.json,bench.md,bench.png}
# Run on a quiet machine (timings). SST2_DIR defaults to ../shared/data/SST-2.
set -euo pipefail
cd "$(dirname "$0")/.."
FG=${FG:-.venv/bin/fg-edge}
PY=${PY:-.venv/bin/python}
SST2_DIR=${SST2_DIR:-../shared/data/SST-2}
WORK=${WORK:-/tmp/fg_bench_minilm}
OUT=benchmarks/results/minilm
mkdir -p "$WORK" "$OUT"
if [ ! -f "$WORK/model_dir/fg_edge_gates.safetensors" ]; then
  $PY benchmarks/timed.py "$OUT/train.json" -- $FG train sentence-transformers/all-MiniLM-L6-v2 \
      --task classification --train "$SST2_DIR/train.tsv" --dev "$SST2_DIR/dev.tsv" --max-train 4000 \
      --target-sparsity 0.4 --output "$WORK/model_dir" --overwrite --no-progress
fi
$PY benchmarks/timed.py "$OUT/compile.json" -- $FG compile "$WORK/model_dir" -o "$WORK/compiled" --overwrite \
    --quantize int8 --ort-format --eval-data "$SST2_DIR/dev.tsv" --no-progress
cp "$WORK/compiled/compile_report.json" "$WORK/model_dir/training.json" "$OUT/"
$FG bench "$WORK/compiled" --providers cpu,mobile --batch 1,8 --seq 128 --threads 1,2 --repeats 30 --warmup 5 \
    -o "$OUT" --no-progress
$FG eval "$WORK/compiled" --data "$SST2_DIR/dev.tsv" | tee "$OUT/eval.txt"
