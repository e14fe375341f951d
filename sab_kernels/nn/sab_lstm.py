"""`SABLSTM`: an LSTM with Sparse Attentive Backtracking (SPEC section 2), with an `nn.LSTM`-like interface.

One step t, input x_t:
  1. if (t+1) % k_trunc == 0: h, c = h.detach(), c.detach()        (truncated BPTT on the main chain)
  2. h_hat, c = LSTM cell(x_t, (h, c))
  3. s_t = sparse attention of h_hat over the memory;  h = h_hat + s_t
  4. if (t+1) % k_att == 0: append h to the memory (not detached: sparse replay through it)
  5. output_t = concat(h_t, s_t)
The baselines are limits of this module: k_top=0 -> truncated-BPTT LSTM (s_t = 0); k_trunc=None (or >= T)
-> no truncation (full BPTT); k_top=None -> dense softmax attention over every slot.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .memory import SparseAttentiveMemory


class SABLSTM(nn.Module):
    """Single-layer LSTM with a sparse attentive memory.

    Args:
        input_size: I.
        hidden_size: H.
        k_top: slots kept per step (0: no memory, plain LSTM; None: dense attention over all slots).
        k_att: append h_t to the memory every k_att steps.
        k_trunc: detach h, c every k_trunc steps (None or 0: never, full BPTT).
        attn_dim: D, width of the scoring MLP (default H).
        batch_first: input (B, T, I) and output (B, T, 2H) instead of (T, B, ...).
        backend: sparse-attention backend ("auto", "cpu", "triton", "reference").

    forward(x, hx=None, trace=None):
        x: (T, B, I) or (B, T, I) with batch_first.
        hx: optional (h0, c0), each (1, B, H) as in nn.LSTM (or (B, H)).
        trace: optional list; each step appends a dict(h_hat, h, summary, weights, indices, threshold,
            slot) for inspection (slot: index of the slot written at this step, or None).
        Returns output (T, B, 2H) = concat(h_t, s_t) per step (s_t = 0 without memory) and (h_n, c_n),
        each (1, B, H).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        k_top: Optional[int] = 5,
        k_att: int = 1,
        k_trunc: Optional[int] = 5,
        attn_dim: Optional[int] = None,
        batch_first: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if k_att < 1:
            raise ValueError(f"k_att must be >= 1, got {k_att}")
        if k_top is not None and k_top < 0:
            raise ValueError(f"k_top must be >= 0 or None (dense), got {k_top}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.k_top, self.k_att, self.k_trunc = k_top, k_att, (k_trunc or None)
        self.batch_first = batch_first
        H = hidden_size
        # nn.LSTMCell layout: gates (i, f, g, o), weight_ih (4H, I), weight_hh (4H, H).
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H))
        self.bias_ih = nn.Parameter(torch.empty(4 * H))
        self.bias_hh = nn.Parameter(torch.empty(4 * H))
        bound = 1.0 / math.sqrt(H)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            nn.init.uniform_(p, -bound, bound)
        self.memory: Optional[SparseAttentiveMemory] = None
        if k_top != 0:
            # Dense: k_top larger than any memory ever holds (the op keeps min(k_top, n) slots).
            self.memory = SparseAttentiveMemory(H, attn_dim or H, k_top if k_top is not None else 2**31 - 1, backend)

    @property
    def output_size(self) -> int:
        return 2 * self.hidden_size

    def forward(
        self, x: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None, trace: Optional[List[dict]] = None
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        if x.dim() != 3:
            raise ValueError(f"x must be 3-D ((T, B, I) or (B, T, I) with batch_first), got shape {tuple(x.shape)}")
        if self.batch_first:
            x = x.transpose(0, 1)
        T, B, _ = x.shape
        H = self.hidden_size
        if hx is None:
            h = x.new_zeros((B, H))
            c = x.new_zeros((B, H))
        else:
            h, c = (t.reshape(B, H) for t in hx)
        # The input half of every gate at once: one (T*B, I) x (I, 4H) matmul instead of T small ones.
        gates_x = torch.addmm(self.bias_ih + self.bias_hh, x.reshape(T * B, -1), self.weight_ih.t()).view(T, B, 4 * H)
        gates_x = gates_x.unbind(0)  # one backward node; indexing gates_x[t] would zero-fill (T, B, 4H) per step
        w_hh_t = self.weight_hh.t()
        memory = self.memory
        if memory is not None:
            memory.reset(h, capacity=T // self.k_att + 2)
        zeros = x.new_zeros((B, H))
        hs: List[Tensor] = []
        ss: List[Tensor] = []
        for t in range(T):
            if self.k_trunc is not None and (t + 1) % self.k_trunc == 0:
                h, c = h.detach(), c.detach()
            gates = torch.addmm(gates_x[t], h, w_hh_t)
            i, f, g, o = gates.chunk(4, 1)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            c = torch.addcmul(f * c, i, g)
            h_hat = o * c.tanh()
            if memory is not None:
                att = memory.attend(h_hat)
                s = att.summary
                h = h_hat + s
                slot = None
                if (t + 1) % self.k_att == 0:
                    slot = memory.size
                    memory.append(h)
                if trace is not None:
                    trace.append(dict(h_hat=h_hat, h=h, summary=s, weights=att.weights, indices=att.indices,
                                      threshold=att.threshold, slot=slot))
            else:
                h, s = h_hat, zeros
                if trace is not None:
                    trace.append(dict(h_hat=h_hat, h=h, summary=s, weights=None, indices=None, threshold=None, slot=None))
            hs.append(h)
            ss.append(s)
        out = torch.cat([torch.stack(hs), torch.stack(ss)], dim=2)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, (h.unsqueeze(0), c.unsqueeze(0))

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, k_top={self.k_top}, k_att={self.k_att}, "
                f"k_trunc={self.k_trunc}, batch_first={self.batch_first}")
