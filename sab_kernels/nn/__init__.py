"""Modules built on the sparse-attention op: the SAB memory, the SAB-LSTM and SAB-GRU and task models."""

from .memory import Attention, MemoryState, SparseAttentiveMemory
from .models import MODEL_KINDS, SequenceModel, build_model
from .sab_layer import SABCellLayer, SABGRULayer, SABLSTMLayer
from .sab_rnn import SABGRU, SABLSTM, SparseAttentiveRNN
from .state import SABState

__all__ = ["Attention", "MemoryState", "SparseAttentiveMemory", "SABLSTM", "SABGRU", "SABLSTMLayer", "SABGRULayer", "SABCellLayer", "SparseAttentiveRNN", "SABState", "SequenceModel", "build_model", "MODEL_KINDS"]
