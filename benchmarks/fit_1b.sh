#!/bin/bash
# Issue 14's local goal: a model over the Vulkan device's largest allocation (a Llama-3.2-1B-shaped
# f32 target, 4.94 GB of weights; lavapipe allocates at most 2 GiB) goes through the plain user
# flow with no --split: export (cut automatically), compile host + vulkan-llvmpipe, bundle on
# lavapipe, run; and gives the same greedy tokens as the same modules on the CPU (random weights
# from benchmarks/models.py). The two runs are separate processes: together they do not fit 24 GB.
# Prints each step's wall time and peak memory; ~15 min on the 2-core VM.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BSD="$PY -m build_sd.cli"
W=benchmarks/.work
F=$W/fit1b
N=${TOKENS:-4}
step() { local name=$1; shift; /usr/bin/time -f "$name: %e s, peak %M KB" "$@"; }
$PY benchmarks/models.py $W/models --only large >/dev/null
mkdir -p $F
step export $BSD export --model $W/models/llama-3.2-1b-random --out $F/mlir --gammas 1 --prefill 16 --max-context 128
step compile $BSD compile $F/mlir --preset host --preset vulkan-llvmpipe --out $F/art
$PY - "$F/art/export.json" <<'PY'
import sys
from build_sd.contract import ExportRecord
e = ExportRecord.read(sys.argv[1])
for sg in e.subgraphs:
    print(f"  {sg.label:>14}: weights {sg.parameter_bytes / 2**30:.3f} GiB, KV caches {sg.kv_bytes / 2**20:.1f} MiB")
PY
for where in vulkan-llvmpipe host; do
  step "bundle $where" $BSD bundle --link --draft $F/art --target $F/art --place draft=host --place target=$where \
    --gamma 1 --out $F/b-$where >/dev/null
  step "verify $where" $BSD verify $F/b-$where
  step "run $where" $BSD run $F/b-$where --prompt "the quick brown fox" --gamma 0 --max-new-tokens $N --json \
    > $F/run-$where.json
  $PY -c "import json,sys; r=json.load(open(sys.argv[1])); print('  ids', r['token_ids'], 'tokens/s', r['metrics']['tokens_per_s'])" $F/run-$where.json
done
$PY -c "
import json, sys
a, b = (json.load(open(f'$F/run-{w}.json'))['token_ids'] for w in ('vulkan-llvmpipe', 'host'))
print('same tokens on lavapipe and on the CPU:', a == b)
sys.exit(0 if a == b else 1)"
