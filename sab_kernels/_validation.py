"""Input checks for the sparse-attention op: every bad input fails here, before any kernel runs."""

from __future__ import annotations

import math
from typing import Optional

import torch

BACKENDS = ("auto", "triton", "cpu", "reference")


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _require_strided(name: str, t: torch.Tensor) -> None:
    # The kernels read raw strided memory; a sparse tensor would otherwise fail deep inside a backend.
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}; call .to_dense() first")


def _require_tensor(name: str, t, rank: int, expected: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(t).__name__}")
    _require_strided(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have shape {expected} ({rank}-D), got {_shape(t)}")


def check_eps(eps) -> None:
    """The sparsifier's epsilon: a finite number > 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float > 0, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")


def check_inputs(query, keys, values, score_weight, k_top, lengths: Optional[torch.Tensor], backend: str,
                 eps: float = 1e-7) -> None:
    """Raise TypeError/ValueError naming the argument for any input outside SPEC section 1."""
    _require_tensor("query", query, 2, "(B, D)")
    _require_tensor("keys", keys, 3, "(B, T, D)")
    _require_tensor("values", values, 3, "(B, T, H)")
    _require_tensor("score_weight", score_weight, 1, "(D,)")
    B, D = query.shape
    if keys.shape[0] != B or keys.shape[2] != D:
        raise ValueError(f"keys must have shape (B, T, D) = ({B}, T, {D}) to match query {_shape(query)}, got {_shape(keys)}")
    T = keys.shape[1]
    if values.shape[0] != B or values.shape[1] != T:
        raise ValueError(f"values must have shape (B, T, H) = ({B}, {T}, H) to match keys {_shape(keys)}, got {_shape(values)}")
    if score_weight.shape[0] != D:
        raise ValueError(f"score_weight must have shape (D,) = ({D},) to match query {_shape(query)}, got {_shape(score_weight)}")
    if T < 1 or D < 1 or values.shape[2] < 1:
        raise ValueError(f"keys and values need T >= 1, D >= 1 and H >= 1, got keys {_shape(keys)}, values {_shape(values)}")
    for name, t in (("keys", keys), ("values", values), ("score_weight", score_weight)):
        if t.dtype != query.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but query has {query.dtype}: all inputs must share one dtype")
        if t.device != query.device:
            raise ValueError(f"{name} is on {t.device} but query is on {query.device}: all inputs must share one device")
    if isinstance(k_top, bool) or not isinstance(k_top, int):
        raise TypeError(f"k_top must be an int >= 1, got {type(k_top).__name__}")
    if k_top < 1:
        raise ValueError(f"k_top must be >= 1, got {k_top}")
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths must be a torch.Tensor of shape (B,) = ({B},) or None, got {type(lengths).__name__}")
        _require_strided("lengths", lengths)
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape (B,) = ({B},), got {_shape(lengths)}")
        if lengths.device != query.device:
            raise ValueError(f"lengths is on {lengths.device} but query is on {query.device}")
    check_eps(eps)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_lengths_values(lengths: torch.Tensor, T: int) -> None:
    """Lengths must lie in [0, T]; checked on real tensors (inside the op, not while tracing)."""
    if lengths.numel():
        lo, hi = (int(x) for x in torch.aminmax(lengths))
        if lo < 0 or hi > T:
            raise ValueError(f"lengths must lie in [0, T] = [0, {T}], got min {lo}, max {hi}")
