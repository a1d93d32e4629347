# One command each, from a fresh clone: `make test` (build + every test) and
# `make demo` (the main job). Both create .venv, install the package into it (editable,
# with its console scripts) and build the extension first. VENV=/path uses another venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed
# The package installed editable into $(VENV): `import hpsgd_ext` works from any folder,
# hpsgd-train and hpsgd-bench are on $(VENV)/bin. Redone when the packaging changes.
EDITABLE := $(VENV)/.hpsgd-editable
PIP    := $(PY) -m pip --disable-pip-version-check

# torch's builder guesses CUDA_HOME from nvcc's path; point it at the toolkit.
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif
# CI compiles for the H100 only (sm_90), to stay well inside its time limit.
ifeq ($(CI),true)
export TORCH_CUDA_ARCH_LIST ?= 9.0
endif

PYTEST_ARGS ?=

.PHONY: all venv build test test-py ctest bench bench-check demo clean

all: build

$(DEPS): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	touch $@

venv: $(DEPS)

# The editable install compiles the extension in place (its objects in build/, where
# `setup.py build_ext` keeps them: see setup.py), so the build below then compiles
# nothing: a fresh clone compiles once. --no-build-isolation: build with $(VENV)'s torch.
$(EDITABLE): $(DEPS) pyproject.toml setup.py MANIFEST.in hpsgd_ext/_version.py
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

# ninja rebuilds only what changed; setup.py decides CUDA vs C++-only.
build: $(EDITABLE)
	$(PY) setup.py -q build_ext --inplace
	cd / && env -u PYTHONPATH $(abspath $(PY)) -c "import hpsgd_ext as h; print('hpsgd_ext', h.__version__, 'cuda:', h.built_with_cuda(), 'nccl:', h.built_with_nccl(), 'from', h.__path__[0])"

test: build ctest bench-check test-py

test-py: build
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The C++ library and its dispatcher test, through libtorch's CMake config.
ctest: $(DEPS)
	@set -e; SP=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	TP=$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)'); \
	NVRTC=$$(ls $$SP/nvidia/cu*/lib/libnvrtc.so.* 2>/dev/null | grep -v builtins | head -n1); \
	TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} cmake -S . -B cmake-build -G Ninja \
	  -DCMAKE_MAKE_PROGRAM=$(CURDIR)/$(VENV)/bin/ninja -DCMAKE_PREFIX_PATH=$$TP \
	  -DCUDA_TOOLKIT_ROOT_DIR=$${CUDA_HOME:-/usr/local/cuda} -DCUDAToolkit_ROOT=$${CUDA_HOME:-/usr/local/cuda} \
	  $${NVRTC:+-DCUDA_nvrtc_LIBRARY=$$NVRTC} -Wno-dev > cmake-build.log 2>&1 \
	  || { cat cmake-build.log; exit 1; }; \
	cmake --build cmake-build -j2; \
	ctest --test-dir cmake-build --output-on-failure

bench: build
	$(PY) -m pytest bench --benchmark-only $(PYTEST_ARGS)

# The benchmark suites once each, untimed, so that they cannot rot unnoticed.
bench-check: build
	$(PY) -m pytest bench --benchmark-disable -q

clean:
	rm -rf build dist cmake-build cmake-build.log hpsgd_ext/*.so

# The main job: HPSGD vs DDP vs local SGD vs no communication, 2 CPU workers,
# a 20 Mbit/s emulated link, 40 s each. Table, JSON and plot land in runs/demo.
DEMO_ARGS ?=
demo: build
	$(PY) -m hpsgd_ext.train $(DEMO_ARGS)
