"""Modules built on the sparse-attention op: the SAB memory, the SAB-LSTM and task models."""

from .memory import Attention, MemoryState, SparseAttentiveMemory
from .models import MODEL_KINDS, SequenceModel, build_model
from .sab_lstm import SABLSTM
from .state import SABState

__all__ = ["Attention", "MemoryState", "SparseAttentiveMemory", "SABLSTM", "SABState", "SequenceModel", "build_model", "MODEL_KINDS"]
