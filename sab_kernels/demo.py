"""`python -m sab_kernels.demo`: run the op forward and backward on every available backend.

Prints, per backend, the largest difference from the reference and the median time of forward+backward.
"""

from __future__ import annotations

import time

import torch

from . import sparse_attention, sparse_attention_reference
from .kernels import cpu_backend


def _backends(device):
    names = ["reference", "cpu"] if device.type == "cpu" else ["reference", "triton"]
    if device.type == "cpu" and not cpu_backend.AVAILABLE:
        names.remove("cpu")
    return names


def _run(backend, inputs, k_top):
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    if backend == "eager":
        out = sparse_attention_reference(*leaves, k_top)
    else:
        out = sparse_attention(*leaves, k_top, backend=backend)
    (out.summary.sum() + out.weights.sum()).backward()
    return out, [t.grad for t in leaves]


def main(B=32, T=1024, D=128, H=128, k_top=8, repeats=20):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*s, generator=g).to(device) for s in ((B, D), (B, T, D), (B, T, H), (D,))]
    ref_out, ref_grads = _run("eager", inputs, k_top)
    print(f"sparse_attention B={B} T={T} D={D} H={H} k_top={k_top} on {device}")
    print(f"| backend | max |Δ| forward | max |Δ| grad | fwd+bwd median ms |\n|---|---|---|---|")
    for backend in ["eager"] + _backends(device):
        out, grads = _run(backend, inputs, k_top)
        d_fwd = max((a.float() - b.float()).abs().max().item() for a, b in zip(out[:2], ref_out[:2]))
        d_bwd = max((a - b).abs().max().item() for a, b in zip(grads, ref_grads))
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            _run(backend, inputs, k_top)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        times.sort()
        print(f"| {backend} | {d_fwd:.2e} | {d_bwd:.2e} | {1e3 * times[len(times) // 2]:.3f} |")


if __name__ == "__main__":
    main()
