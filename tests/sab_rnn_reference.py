"""SABLSTM / SABGRU written as plainly as possible, for the tests: one row at a time, one step at a time, the
memory a Python list, the bounded memory's recent and kept slots Python lists, the reference op on the stacked
active slots, autograd for every gradient. Slow, and obviously the contract of the issue (SPEC section 2 and
issue 18): every option of the modules is checked against this in float64.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from sab_kernels.reference import reference_forward


def lstm_cell(layer, x: Tensor, h: Tensor, c: Tensor):
    gates = layer.weight_ih @ x + layer.bias_ih + layer.weight_hh @ h + layer.bias_hh
    i, f, g, o = gates.chunk(4)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(layer, x: Tensor, h: Tensor, c):
    xr, xz, xn = (layer.weight_ih @ x + layer.bias_ih).chunk(3)
    hr, hz, hn = (layer.weight_hh @ h + layer.bias_hh).chunk(3)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, None


def layer_row(layer, x: Tensor, h: Tensor, c: Optional[Tensor]):
    """One layer over one row: x (T, I), h and c (H,). Returns outputs (T, 2H), h_n, c_n."""
    cell = lstm_cell if layer.CELL == "lstm" else gru_cell
    mem = layer.memory
    k_top = mem.k_top if mem is not None else 0
    bounded = layer.bounds is not None
    W, M = layer.bounds if bounded else (None, None)
    slots: List[Tensor] = [h]  # slot 0: h0
    recent, kept, relevance = [0], [], {0: 0.0}
    outputs = []
    for t in range(x.shape[0]):
        if layer.k_trunc and (t + 1) % layer.k_trunc == 0:
            h = h.detach()
            c = c.detach() if c is not None else None
        h_hat, c = cell(layer, x[t], h, c)
        s = torch.zeros_like(h_hat)
        if mem is not None:
            active = kept + recent if bounded else list(range(len(slots)))  # in write order
            values = torch.stack([slots[j] for j in active])
            keys = values @ mem.key_proj.weight.t()
            query = mem.query_proj.weight @ h_hat + mem.query_proj.bias
            summary, weights, indices, _ = reference_forward(query[None], keys[None], values[None], mem.score_weight,
                                                             k_top, eps=mem.eps)
            s = summary[0]
            if bounded:
                for a, i in zip(weights[0].tolist(), indices[0].tolist()):
                    if i >= 0 and active[i] in recent:
                        relevance[active[i]] += a
        h = h_hat + s
        outputs.append(torch.cat([h, s]))
        if mem is not None and (t + 1) % layer.k_att == 0:
            slots.append(h)
            j = len(slots) - 1
            relevance[j] = 0.0
            recent.append(j)
            if bounded and len(recent) > W:
                old = recent.pop(0)
                if len(kept) < M:
                    kept.append(old)
                elif kept:
                    least = min(kept, key=lambda k: (relevance[k], k))  # the oldest of the least relevant
                    if relevance[old] > relevance[least]:
                        kept.remove(least)
                        kept.append(old)
    return torch.stack(outputs), h, c


def reference_rnn(module, x: Tensor, lengths: Optional[Tensor] = None, h0: Optional[Tensor] = None,
                  c0: Optional[Tensor] = None, dropout_seed: Optional[int] = None):
    """The module's forward, plainly: x (T, B, I); lengths (B,) or None; h0, c0 (L, B, H) or None.
    Returns output (T, B, 2H), h_n (L, B, H), c_n (L, B, H) or None. With dropout_seed, the dropout between
    layers draws its mask from torch.manual_seed(dropout_seed) as the module does when seeded so."""
    T, B, _ = x.shape
    L, H = module.num_layers, module.hidden_size
    lengths = lengths if lengths is not None else torch.full((B,), T, dtype=torch.int64)
    if dropout_seed is not None:
        torch.manual_seed(dropout_seed)
    inputs, h_n, c_n = x, [], []
    for l, layer in enumerate(module.layers):
        if l > 0 and module.dropout and module.training:
            inputs = F.dropout(inputs, module.dropout, training=True)
        rows, hs, cs = [], [], []
        for b in range(B):
            n = int(lengths[b])
            h = h0[l, b] if h0 is not None else x.new_zeros(H)
            c = (c0[l, b] if c0 is not None else x.new_zeros(H)) if layer.CELL == "lstm" else None
            out, h, c = layer_row(layer, inputs[:n, b], h, c)
            rows.append(torch.cat([out, out.new_zeros((T - n, 2 * H))]))
            hs.append(h)
            cs.append(c)
        inputs = torch.stack(rows, 1)
        h_n.append(torch.stack(hs))
        c_n.append(torch.stack(cs) if cs[0] is not None else None)
    return inputs, torch.stack(h_n), (torch.stack(c_n) if c_n[0] is not None else None)
