"""CPU backend: the compiled C++ kernels of csrc/, or the reference with one warning when they cannot be used.

The kernels are used only under the torch they were built against (`_C.torch_version`, recorded at build
time): an extension built for another torch may fail to import (an ABI break) or misbehave, so either
case falls back to the reference instead of crashing.
"""

from __future__ import annotations

import warnings

import torch

from . import reference_backend


def _load():
    """(the _C module or None, why it is not used)."""
    try:
        from .. import _C  # built by setup.py from csrc/
    except ImportError as exc:  # no compiler at install time, an editable install not yet built, or an ABI break
        return None, f"they could not be imported ({exc})"
    built = getattr(_C, "torch_version", None)
    if built != torch.__version__:
        return None, f"they were built against torch {built or '(unknown: an old build)'} but torch {torch.__version__} is running"
    return _C, None


_C, UNAVAILABLE_REASON = _load()
AVAILABLE = _C is not None
_warned = False


def _fallback():
    global _warned
    if not _warned:
        warnings.warn(
            f"sab_kernels: the compiled CPU kernels are not available: {UNAVAILABLE_REASON}. Falling back to the "
            "PyTorch reference (correct but slower). Rebuild them against this torch with "
            "`pip install --no-build-isolation -e .` (or `make install`).",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned = True
    return reference_backend


def forward(query, keys, values, score_weight, k_top, lengths, eps=reference_backend.EPS):
    if _C is None:
        return _fallback().forward(query, keys, values, score_weight, k_top, lengths, eps)
    return tuple(_C.forward(query, keys, values, score_weight, k_top, lengths, eps))


def backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, weights, indices, threshold,
             eps=reference_backend.EPS):
    if _C is None:
        return _fallback().backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, weights,
                                    indices, threshold, eps)
    return tuple(_C.backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, weights,
                             indices, threshold, eps))
