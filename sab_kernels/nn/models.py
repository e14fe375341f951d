"""Sequence models for the tasks: a recurrent core (SABLSTM or torch.nn.LSTM) and a linear head per step.

`build_model(kind, ...)` names the baselines of SPEC section 2 as limits of one module:
    sab    SABLSTM(k_top, k_att, k_trunc)               sparse attentive backtracking
    tbptt  SABLSTM(k_top=0, k_trunc)                    truncated-BPTT LSTM (no memory)
    bptt   SABLSTM(k_top=0, k_trunc=None)               full-BPTT LSTM through the same code path
    dense  SABLSTM(k_top=None, k_att, k_trunc)          dense softmax attention over every slot
    lstm   torch.nn.LSTM                                the plain full-BPTT reference (fused ATen kernel)
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from ..reference import EPS
from .sab_lstm import SABLSTM, SABState

MODEL_KINDS = ("sab", "tbptt", "bptt", "dense", "lstm")


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
        (None: a fresh sequence); SABLSTM returns a SABState (h, c, memory, step), nn.LSTM (h, c)."""
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
) -> SequenceModel:
    """A SequenceModel of the given kind (see the module docstring); batch-first in and out. eps: the
    sparsifier's epsilon of the models with memory (sab, dense)."""
    if kind == "lstm":
        return SequenceModel(nn.LSTM(input_size, hidden_size, batch_first=True), hidden_size, output_size)
    if kind == "sab":
        if not k_top or k_top < 1:
            raise ValueError(f"model 'sab' needs k_top >= 1, got {k_top}")
        core = SABLSTM(input_size, hidden_size, k_top, k_att, k_trunc, attn_dim, True, backend, eps=eps)
    elif kind == "tbptt":
        core = SABLSTM(input_size, hidden_size, 0, k_att, k_trunc, attn_dim, True, backend, eps=eps)
    elif kind == "bptt":
        core = SABLSTM(input_size, hidden_size, 0, k_att, None, attn_dim, True, backend, eps=eps)
    elif kind == "dense":
        core = SABLSTM(input_size, hidden_size, None, k_att, k_trunc, attn_dim, True, backend, eps=eps)
    else:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {MODEL_KINDS}")
    return SequenceModel(core, core.output_size, output_size)
