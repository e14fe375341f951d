import os
import sys

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, so it must be set before anything imports
# triton. Without a GPU (CI), every Triton kernel runs through the interpreter on CPU tensors; with a GPU
# the kernels compile for it. Tests that are not about Triton name their backend explicitly, because
# backend="auto" sends CPU tensors to the interpreter while this variable is set.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))
