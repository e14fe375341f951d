"""`make wheel-check`: run from an installed wheel (not the source tree) in a venv that has only torch.

The cpu backend must use the compiled kernels (a fallback warning is an error: run with
-W error::RuntimeWarning) and agree with the reference on a tiny forward and backward.
"""

import os
import sys

import torch

import sab_kernels
from sab_kernels.kernels import cpu_backend

assert "site-packages" in sab_kernels.__file__, f"imported the source tree, not the wheel: {sab_kernels.__file__}"
assert cpu_backend.AVAILABLE, cpu_backend.UNAVAILABLE_REASON
assert cpu_backend._C.torch_version == torch.__version__
g = torch.Generator().manual_seed(0)
inputs = [torch.randn(s, generator=g, dtype=torch.float64) for s in ((3, 4), (3, 9, 4), (3, 9, 5), (4,))]
grads = {}
for backend in ("cpu", "reference"):
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = sab_kernels.sparse_attention(*leaves, 2, lengths=torch.tensor([0, 2, 9]), backend=backend)
    grads[backend] = (*out, *torch.autograd.grad(out.summary.square().sum() + out.weights.sum(), leaves))
for a, b in zip(grads["cpu"], grads["reference"]):
    torch.testing.assert_close(a, b)
print(f"wheel ok: sab_kernels {sab_kernels.__version__} from {os.path.dirname(sab_kernels.__file__)}, "
      f"torch {torch.__version__}, kernels {cpu_backend._C.capability()}, python {sys.version.split()[0]}")
