"""Backends of the sparse-attention op. Each backend module exposes the same two functions:

forward(query, keys, values, score_weight, k_top, lengths) -> (summary, weights, indices, threshold)
    query (B, D), keys (B, T, D), values (B, T, H), score_weight (D,): contiguous, one dtype and device;
    lengths (B,) int64 contiguous, values in [0, T]. Returns summary (B, H) and weights (B, k) in the input
    dtype, indices (B, k) int64 (-1 where unused), threshold (B,) int64: the slot of the (k_top+1)-th score
    for rows with more than k_top valid slots, else -1. k = min(k_top, T).

backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, weights, indices,
         threshold) -> (grad_query, grad_keys, grad_values, grad_score_weight)
    grad_summary (B, H), grad_weights (B, k) in the input dtype; returns gradients shaped like the inputs,
    exactly zero outside the selected rows and the threshold key row.

Backends: "triton" (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1), "cpu" (the compiled C++
extension, falling back to the reference with a warning), "reference" (plain PyTorch + autograd).
"""

from __future__ import annotations

import functools
import importlib
import os

import torch


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto" to a concrete backend: CUDA -> triton; CPU -> triton under TRITON_INTERPRET=1, else cpu.

    backend="triton" with tensors off CUDA and no interpreter is a ValueError here, before Triton would fail
    with "0 active drivers"."""
    if backend == "auto":
        return "triton" if device.type == "cuda" or triton_interpreter_enabled() else "cpu"
    if backend == "triton" and device.type != "cuda" and not triton_interpreter_enabled():
        raise ValueError(
            f"backend='triton' needs CUDA tensors, but the inputs are on device {device.type!r} and the Triton "
            "interpreter is off. Use backend='cpu' (the C++ kernels) or backend='auto' for CPU tensors, move the "
            "inputs to a GPU, or set TRITON_INTERPRET=1 in the environment before Python starts to run the Triton "
            "kernels in the (slow) interpreter."
        )
    return backend


_MODULES = {"triton": ".triton_backend", "cpu": ".cpu_backend", "reference": ".reference_backend"}


_LOADED: dict = {}


def get_backend(name: str):
    """The module implementing backend `name` (imported on first use, so triton is optional on CPU). A plain
    dict, not functools.lru_cache: torch.compile traces a dict lookup, where it would break the graph at the
    cache wrapper and at import_module."""
    module = _LOADED.get(name)
    if module is None:
        module = _LOADED[name] = importlib.import_module(_MODULES[name], __name__)
    return module
