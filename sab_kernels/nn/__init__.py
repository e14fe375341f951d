"""Modules built on the sparse-attention op: the SAB memory, the SAB-LSTM and task models."""

from .memory import Attention, SparseAttentiveMemory
from .models import MODEL_KINDS, SequenceModel, build_model
from .sab_lstm import SABLSTM

__all__ = ["Attention", "SparseAttentiveMemory", "SABLSTM", "SequenceModel", "build_model", "MODEL_KINDS"]
