#!/bin/bash
# The GPU-box flow, checked here on lavapipe before a box session (issue 14, item 5): a small
# Llama-3.2-shaped pair (random, real vocabulary), planned for this machine's CPU + lavapipe,
# the best configuration of each mapping picked and built as prepare.sh does, then check.py:
# the target's lavapipe module against its CPU module on the same drawn weights, and greedy
# speculative (draft CPU, target GPU) == target-only. ~5 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
W=benchmarks/.work
R=$W/gpubox-local
step() { local name=$1; shift; local t=$SECONDS; "$@"; echo "$name: $((SECONDS - t)) s" >&2; }
step models $PY benchmarks/models.py $W/models --only small >/dev/null
mkdir -p $R
step plan $PY -m build_sd.cli plan --draft $W/models/draft-small-random --target $W/models/llama-small-random \
  --platform host --alpha 0.8 --devices cpu,vulkan --no-split --top 40 --out $R/plan.json >/dev/null
CONFIGS=$($PY benchmarks/gpubox/pick.py $R/plan.json vulkan)
echo "configurations: $CONFIGS" >&2
step build $PY -m build_sd.cli bench $R --plan $R/plan.json --configs $CONFIGS \
  --prompts build_sd/demo/data/test.tsv --limit 4 --build-only
step check $PY benchmarks/gpubox/check.py $R 7 vulkan
