# Two commands for a fresh clone (each creates .venv on first use):
#   make demo   train SAB on a small copy task, print the result, then benchmark the op
#   make test   run the test suite (Triton kernels through the interpreter when there is no GPU)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.7.1

.PHONY: install demo test wheel-check bench bench-quick bench-lstm bench-cuda clean

$(VENV)/.installed: setup.py pyproject.toml sab_kernels/_version.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first (the CPU wheel), then the package built against it without re-resolving torch.
	$(PY) -m pip install -q "$(TORCH_SPEC)" "$(TRITON_SPEC)"
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m sab_kernels.demo

test: install
	$(PY) -m pytest tests -q

bench: install
	$(PY) -m sab_kernels.bench --out bench/results/cpu

bench-quick: install
	$(PY) -m sab_kernels.bench --quick --out bench/results/cpu-quick

bench-lstm: install
	$(PY) -m sab_kernels.bench.lstm_table --threads 1 --out bench/results/cpu-lstm-table

bench-cuda: install
	$(PY) -m sab_kernels.bench --device cuda --out bench/results/cuda

# The package as a user gets it: an sdist (with csrc/), a wheel built from that sdist (with the compiled
# kernels), installed into a fresh venv holding only torch and run from outside the source tree.
WHEEL_CHECK := build/wheel-check
wheel-check: install
	rm -rf $(WHEEL_CHECK) && mkdir -p $(WHEEL_CHECK)
	$(PY) -c "from setuptools import build_meta; build_meta.build_sdist('$(WHEEL_CHECK)')"
	$(PY) -m tarfile -l $(WHEEL_CHECK)/sab_kernels-*.tar.gz | grep -q 'csrc/sparse_attention.cpp'
	$(PY) -m pip wheel -q --no-build-isolation --no-deps -w $(WHEEL_CHECK) $(WHEEL_CHECK)/sab_kernels-*.tar.gz
	$(PY) -m zipfile -l $(WHEEL_CHECK)/sab_kernels-*.whl | grep -q 'sab_kernels/_C.*\.so'
	$(PYTHON) -m venv $(WHEEL_CHECK)/venv
	$(WHEEL_CHECK)/venv/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(WHEEL_CHECK)/venv/bin/python -m pip install -q --no-deps $(WHEEL_CHECK)/sab_kernels-*.whl
	cd $(WHEEL_CHECK) && venv/bin/python -W error::RuntimeWarning $(CURDIR)/tests/wheel_smoke.py
	rm -rf $(WHEEL_CHECK)/venv

clean:
	rm -rf $(VENV) build *.egg-info sab_kernels/_C*.so
