"""sab-kernels: fused kernels for Sparse Attentive Backtracking (Ke et al., NeurIPS 2018)."""

from .op import sparse_attention
from .reference import SparseAttentionOutput, sparse_attention_reference

__version__ = "0.1.0"
__all__ = ["sparse_attention", "sparse_attention_reference", "SparseAttentionOutput", "__version__"]
