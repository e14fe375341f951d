"""The input half of every LSTM gate for all steps at once, x W_ih^T + b, with a backward in the fast GEMM shape.

autograd's addmm backward computes dW = dG^T x, a (4H, T B) x (T B, I) product. With few inputs that shape is
far slower in MKL than its transpose: at T B = 65,536, I = 10, 4H = 512 on one thread of this machine, dG^T x
took 1,418 ms and (x^T dG)^T 75 ms (autograd's addmm backward: 628 ms). The fused C++ path computes it the
same way (csrc/sab_lstm.cpp); this is the per-step path's twin.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _InputProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)  # under autocast the forward ran in a lower precision
        gx = grad @ weight if ctx.needs_input_grad[0] else None
        gw = (x.t().to(weight.dtype) @ grad).t() if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


def input_projection(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x (N, I) W^T (W: (G, I)) + bias (G,) -> (N, G); differentiable in all three."""
    return _InputProjection.apply(x, weight, bias)
