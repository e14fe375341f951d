"""Sequence models for the tasks: a recurrent core (SABLSTM or torch.nn.LSTM) and a linear head per step.

`build_model(kind, ...)` names the baselines of SPEC section 2 as limits of one module:
    sab    SABLSTM(k_top, k_att, k_trunc)               sparse attentive backtracking
    tbptt  SABLSTM(k_top=0, k_trunc)                    truncated-BPTT LSTM (no memory)
    bptt   SABLSTM(k_top=0, k_trunc=None)               full-BPTT LSTM through the same code path
    dense  SABLSTM(k_top=None, k_att, k_trunc)          dense softmax attention over every slot
    lstm   torch.nn.LSTM                                the plain full-BPTT reference (fused ATen kernel)
    sab-gru  SABGRU(k_top, k_att, k_trunc)              sparse attentive backtracking on a GRU cell
    gru    torch.nn.GRU                                 the plain full-BPTT GRU
Every kind takes num_layers and dropout (as nn.LSTM); the SAB kinds also a bounded memory (recent_slots,
relevant_slots).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from ..reference import EPS
from .sab_rnn import SABGRU, SABLSTM, SABState

MODEL_KINDS = ("sab", "tbptt", "bptt", "dense", "lstm", "sab-gru", "gru")


class SequenceModel(nn.Module):
    """core (batch_first) followed by a Linear head on every step: x (B, T, I) -> logits (B, T, O)."""

    def __init__(self, core: nn.Module, core_output_size: int, output_size: int):
        super().__init__()
        self.core = core
        self.head = nn.Linear(core_output_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.core(x)
        return self.head(out)

    def forward_chunk(self, x: Tensor, hx=None) -> Tuple[Tensor, Any]:
        """(logits (B, T, O), state): one chunk of a longer sequence. hx: the state the previous chunk returned
        (None: a fresh sequence); SABLSTM returns a SABState (h, c, memory, step), nn.LSTM (h, c), SABGRU and
        nn.GRU h."""
        out, state = self.core(x, hx)
        return self.head(out), state


def carry_state(state, memory_window: int = 0):
    """`state` cut from the graph, to carry into the next batch of stateful training (gradient stops between
    chunks). memory_window > 0 bounds the memory to that many slots, so memory and attention cost stay bounded over
    an endless stream: the first slot (the stream's initial state) and the newest memory_window - 1. 0 keeps all.

    Why the first slot stays: a trained model uses it (zeros at a stream's start) as attention's "nothing" option,
    which keeps the summary from adding up. Dropping it made h grow from 1.2 to 9 and c to 1,700 within 15 chunks
    of Shakespeare (bench/results/training/chars_shakespeare/state_probe.py)."""
    if isinstance(state, SABState):
        state = state.detach()
        mem = state.memory
        if memory_window and mem is not None and mem.shape[1] > memory_window:
            mem = torch.cat([mem[:, :1], mem[:, mem.shape[1] - memory_window + 1:]], dim=1)
            state = SABState(state[0], state[1], mem, state.step)
        return state
    return tuple(t.detach() for t in state)


def build_model(
    kind: str,
    input_size: int,
    hidden_size: int,
    output_size: int,
    k_top: int = 5,
    k_att: int = 1,
    k_trunc: Optional[int] = 5,
    attn_dim: Optional[int] = None,
    backend: str = "auto",
    eps: float = EPS,
    num_layers: int = 1,
    dropout: float = 0.0,
    recent_slots: Optional[int] = None,
    relevant_slots: Optional[int] = None,
) -> SequenceModel:
    """A SequenceModel of the given kind (see the module docstring); batch-first in and out. eps: the
    sparsifier's epsilon of the models with memory (sab, dense, sab-gru)."""
    if kind in ("lstm", "gru"):
        if recent_slots is not None or relevant_slots is not None:
            raise ValueError(f"model {kind!r} has no memory to bound (recent_slots, relevant_slots)")
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        core = rnn(input_size, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True)
        return SequenceModel(core, hidden_size, output_size)
    layers = dict(num_layers=num_layers, dropout=dropout, recent_slots=recent_slots, relevant_slots=relevant_slots)
    if kind in ("sab", "sab-gru"):
        if not k_top or k_top < 1:
            raise ValueError(f"model {kind!r} needs k_top >= 1, got {k_top}")
        rnn = SABLSTM if kind == "sab" else SABGRU
        core = rnn(input_size, hidden_size, k_top, k_att, k_trunc, attn_dim, True, backend, eps=eps, **layers)
    elif kind == "tbptt":
        core = SABLSTM(input_size, hidden_size, 0, k_att, k_trunc, attn_dim, True, backend, eps=eps, **layers)
    elif kind == "bptt":
        core = SABLSTM(input_size, hidden_size, 0, k_att, None, attn_dim, True, backend, eps=eps, **layers)
    elif kind == "dense":
        core = SABLSTM(input_size, hidden_size, None, k_att, k_trunc, attn_dim, True, backend, eps=eps, **layers)
    else:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {MODEL_KINDS}")
    return SequenceModel(core, core.output_size, output_size)
