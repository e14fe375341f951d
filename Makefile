# Two commands for a fresh clone (each creates .venv on first use):
#   make demo   train SAB on a small copy task, print the result, then benchmark the op
#   make test   run the test suite (Triton kernels through the interpreter when there is no GPU)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.7.1

.PHONY: install demo test bench bench-quick bench-lstm bench-cuda clean

$(VENV)/.installed: setup.py $(wildcard csrc/*.cpp csrc/*.h)
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

clean:
	rm -rf $(VENV) build *.egg-info sab_kernels/_C*.so
