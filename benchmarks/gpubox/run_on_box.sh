#!/bin/bash
# On the lent GPU box (NVIDIA H100/H200, 16 Xeon cores, no network, no IREE): check the numbers,
# then `build-sd bench --no-build` the configurations prepare.sh built, with weights drawn at run
# time and acceptance drawn from Bernoulli(ALPHA). Results go to $OUT (bench.json, bench.png,
# log.txt). Carry: .gl .whl .gpubox (benchmarks/gpubox/README.md).
set -uo pipefail
ALPHA=${ALPHA:-0.8}
CONFIGS=$(cat .gpubox/configs)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
lscpu | grep -E "Model name|^CPU\(s\)"
python3 -c "from build_sd.runtime.devices import vulkan_device_names as v; print('vulkan devices:', v())"
# does an idle Vulkan device cost CPU there? (on lavapipe it spins two threads: docs/FINDINGS.md;
# bench keeps GPU sessions open beside the CPU configurations)
python3 -c "import iree.runtime as rt, os, time; d = rt.get_device('vulkan', cache=False); t = os.times(); time.sleep(2); u = os.times(); print('idle CPU seconds in 2 s with a Vulkan device alive:', round(u.user - t.user + u.system - t.system, 2))"
# 1. link the bundles' files to the artifacts (the carry holds each vmfb once)
python3 benchmarks/gpubox/relink.py .gpubox/root || exit 1
# 2. numbers: GPU module vs CPU module, speculative == target-only
timeout 150 python3 benchmarks/gpubox/check.py .gpubox/root 0
# 3. predicted vs measured (the chart needs matplotlib, which the box may lack: a failing --png
# would lose bench.json, so without it the chart is drawn here from bench.json: README.md)
PNG=(); python3 -c "import matplotlib" 2>/dev/null && PNG=(--png "$OUT/bench.png")
timeout 420 python3 -m build_sd.cli bench .gpubox/root --plan .gpubox/root/plan.json --configs "$CONFIGS" \
  --no-build --random-weights 0 --simulate-alpha "$ALPHA" --prompts build_sd/demo/data/test.tsv \
  --limit 3 --max-new-tokens 32 --rounds 3 --warmup 1 --no-reprofile \
  --json "$OUT/bench.json" "${PNG[@]}"
echo "bench exit $?"
