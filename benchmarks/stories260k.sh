#!/usr/bin/env bash
# Issue 2 run: stories260K (llama2.c, LLaMA with GQA 8/4) trained as a causal LM by distillation from its dense
# self (no labels), 300 steps, then compiled. There is no TinyStories text offline, so the training text is
# sampled from the dense model itself (benchmarks/sample_corpus.py). Results in benchmarks/results/stories260k/.
set -euo pipefail
cd "$(dirname "$0")/.."
FG=${FG:-.venv/bin/fg-edge}
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared}
WORK=${WORK:-/tmp/fg_bench_stories}
OUT=benchmarks/results/stories260k
mkdir -p "$WORK" "$OUT"
TARGET=${TARGET:-0.3}
[ -f "$WORK/stories.txt" ] || $PY benchmarks/sample_corpus.py "$SHARED/models/stories260K/stories260K.bin" "$WORK/stories.txt" --n 400
head -n 360 "$WORK/stories.txt" > "$WORK/train.txt"; tail -n 40 "$WORK/stories.txt" > "$WORK/dev.txt"
$PY benchmarks/timed.py "$OUT/train.json" -- $FG train "$SHARED/models/stories260K/stories260K.bin" --task causal-lm \
    --distill --train "$WORK/train.txt" --dev "$WORK/dev.txt" --target-sparsity "$TARGET" \
    --max-length 128 --steps 300 --output "$WORK/model_dir" --overwrite --no-progress
cp "$WORK/model_dir/training.json" "$OUT/"
$PY benchmarks/timed.py "$OUT/compile.json" -- $FG compile "$WORK/model_dir" -o "$WORK/compiled" --overwrite \
    --quantize int8 --no-progress
cp "$WORK/compiled/compile_report.json" "$OUT/"
$FG run "$WORK/compiled" "Once upon a time" --max-new-tokens 40 | tee "$OUT/sample.txt"
