"""sab-kernels: fused kernels for Sparse Attentive Backtracking (Ke et al., NeurIPS 2018)."""

from ._version import __version__
from .op import sparse_attention
from .reference import SparseAttentionOutput, sparse_attention_reference

__all__ = ["sparse_attention", "sparse_attention_reference", "SparseAttentionOutput", "__version__"]
