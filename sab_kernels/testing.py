"""Tolerances of the op against the reference, shared by the test suite and the benchmark's verifier.

(atol, rtol) per dtype, for forward outputs and for gradients. Half types are accumulated in float32 by
both the reference and the kernels, so the gap is the final rounding to the input dtype plus summation order.
"""

import torch

FORWARD_TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
BACKWARD_TOL = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (4e-2, 4e-2),
}
