"""`make gpu-check OUT=dir` / `python -m sab_kernels.bench.gpu_check`: validate a GPU machine in one command.

Steps, each in its own module, all sized by `config.py`:
  tests.py      every CUDA test (pytest on tests/test_triton.py, which runs on the GPU when there is one)
  bench.py      the quick CUDA benchmark (`python -m sab_kernels.bench`), read back from its CSV
  verdicts.py   the GPU targets, judged from the benchmark's rows
  model.py      an SAB-LSTM training step against cuDNN nn.LSTM, and the module's per-step host syncs
  copy_check.py a short copy-task training run: does it learn?
  report.py     one Markdown report, a CSV and PNGs in OUT
The CPU mode (`--cpu`) runs the same steps at tiny sizes with Triton in its interpreter, so that CI catches
a broken step before the first GPU run does. Exit status: 1 on any mismatch against the reference (a
failed test, a benchmark verification failure) or a failed step; missed performance targets are reported,
not failed.
"""

from .cli import main

__all__ = ["main"]
