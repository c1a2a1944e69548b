#!/bin/bash
# On the build machine: the GPU-box study of issue 5 (a Llama-3.2-1B-shaped target and a ~150M
# draft, random weights; benchmarks/gpubox/README.md). Plans with the `gpubox` platform's
# analytic figures, builds (export, compile x86-64-v3 + vulkan-ampere, validate on this CPU,
# bundle) the configurations to measure, and stages what travels in .gpubox/ (no weights).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
W=benchmarks/.work
R=$W/gpubox
$PY benchmarks/models.py $W/models --only large
mkdir -p $R
# whole-model placements; a target over the GPU's 4 GiB allocation limit is cut automatically
$PY -m build_sd.cli plan --draft $W/models/draft-150m-random --target $W/models/llama-3.2-1b-random \
  --platform gpubox --alpha 0.8 --devices cpu,gpu --no-split --top 40 --out $R/plan.json
# the best-ranked configuration of each mapping: target alone on CPU / GPU, draft x target on
# CPU / GPU (the paper's draft GPU + target CPU among them)
CONFIGS=${CONFIGS:-$($PY benchmarks/gpubox/pick.py $R/plan.json)}
$PY -m build_sd.cli bench $R --plan $R/plan.json --configs $CONFIGS --prompts build_sd/demo/data/test.tsv \
  --limit 4 --build-only
# stage: modules once, manifests, plan, the checkpoints' config.json; no .irpa, no MLIR
rm -rf .gpubox && mkdir -p .gpubox/root
cp $R/plan.json .gpubox/root/
echo "$CONFIGS" > .gpubox/configs
for role in draft target; do
  src=$([ $role = draft ] && echo draft-150m-random || echo llama-3.2-1b-random)
  mkdir -p .gpubox/root/checkpoints/$role && cp $W/models/$src/config.json .gpubox/root/checkpoints/$role/
done
(cd $R && find artifacts bench -type f ! -name '*.irpa' ! -path 'bench/c*/*.vmfb' ! -path 'bench/c*/*/*.vmfb' \
   ! -name '*.ninja*' ! -name 'build.ninja' ! -path '*/.ninja*' -print0 | xargs -0 cp --parents -t ../../../.gpubox/root)
du -sh .gpubox; find .gpubox -name '*.vmfb' | head -20
