"""CPU backend: the compiled C++ kernels of csrc/, or the reference with one warning when not built."""

from __future__ import annotations

import warnings

from . import reference_backend

try:
    from .. import _C  # built by setup.py from csrc/
except ImportError as exc:  # no compiler at install time, or an editable install not yet built
    _C = None
    _IMPORT_ERROR = exc

AVAILABLE = _C is not None
_warned = False


def _fallback():
    global _warned
    if not _warned:
        warnings.warn(
            f"sab_kernels: the compiled CPU kernels are not available ({_IMPORT_ERROR}); "
            "falling back to the PyTorch reference (correct but slower). Reinstall with "
            "`pip install --no-build-isolation -e .` to build them.",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned = True
    return reference_backend


def forward(query, keys, values, score_weight, k_top, lengths):
    if _C is None:
        return _fallback().forward(query, keys, values, score_weight, k_top, lengths)
    return tuple(_C.forward(query, keys, values, score_weight, k_top, lengths))


def backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, weights, indices, threshold):
    if _C is None:
        return _fallback().backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, weights, indices, threshold)
    return tuple(_C.backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, weights, indices, threshold))
