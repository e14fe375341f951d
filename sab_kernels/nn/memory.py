"""`SparseAttentiveMemory`: the SAB memory, its scoring MLP and sparse attention over it (SPEC section 2).

The module holds only parameters; each sequence's memory is a `MemoryState` owned by the call that runs it:
slots m_i (B, H) and their cached keys W_m m_i (B, D) in a preallocated buffer (B, capacity, H/D), written in
place under no_grad (doubling when full), which the op reads whole with lengths = n (contiguous, never copied):
writing a slot costs one (H x D) key projection and O(H + D) stores per row, not a copy of the memory.

Sparse replay with O(1) autograd work per step ("gradient mailbox" and a token chain):
  - `append(state, h)` writes slot j and links it into a chain of 0-dim tokens: token_{j+1} = _Write(token_j, h)
    (`start` writes the first slots as one block the same way). The Function's only job is backward: it hands
    slot j's gradient to h (into h's own graph).
  - `attend(state, h_hat)` runs _Attend(query, w, W_m, token_n): its inputs do not grow with n. Its backward runs the op's
    sparse backward on the k selected slots and the threshold slot only (gathered into a compact (B, k+1)
    problem, so nothing of size n is touched), folds the key gradient into the slot gradient
    (dL/dm_i = dL/dv_i + W_m^T dL/dk_i, and dL/dW_m in one matmul), and adds those k+1 rows per batch row
    into a per-sequence mailbox (slot-major ((n+1) B, H), the first B rows a sink for unused entries), marking
    the slots touched.
  - _Write j's backward returns the mailbox rows of slot j if some attention touched it, and None otherwise,
    so autograd never walks into an unselected slot's graph. That is sparse replay: gradient re-enters the
    past only at the slots the op chose.
Why the mailbox is complete when _Write j reads it: the autograd engine runs a node only after every node
that consumes its outputs (and is reachable from the root) has run. _Write j's output token_{j+1} is consumed,
through the token chain, by every later _Attend and _Write, so every attention that could select slot j
(those over n > j slots) has run its backward, and written its share, before _Write j runs, however the
main h/c chain was truncated. The engine runs the graph in a fixed order on one thread per device, so the
mailbox sums are bitwise reproducible. The mailbox is emptied as _Write reads it (and reallocated when a new
backward pass finds stale rows, e.g. after torch.autograd.grad skipped some _Write nodes), so backward with
retain_graph can run again.
`export(state)` hands the slots to the caller (the next chunk of a sequence) through _Export, whose backward
posts their gradient to the same mailbox.
"""

from __future__ import annotations

import threading
from typing import Dict, NamedTuple, Optional, Set, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from sab_kernels._validation import check_eps
from sab_kernels.kernels.bounded_slots import SlotIndex
from sab_kernels.kernels.slot_buffers import SlotBuffers, alias
from sab_kernels.op import backward_impl, forward_impl
from sab_kernels.reference import EPS


class Attention(NamedTuple):
    """One `attend` call. summary (B, H); weights, indices (B, k); threshold (B,) int64 slot of tau or -1."""

    summary: Tensor
    weights: Tensor
    indices: Tensor
    threshold: Tensor


def _op_forward(query, keys, values, score_weight, n: int, k_top: int, backend: str, eps: float):
    """The op over the first n slots of the whole buffers (every row has n valid slots)."""
    lengths = torch.full((query.shape[0],), n, dtype=torch.int64, device=query.device)
    return forward_impl(query, keys, values, score_weight, k_top, lengths, backend, check_lengths=False, eps=eps)


class _Pass:
    """One backward pass's share of a mailbox: slot j's rows are [(j+1) B, (j+2) B) of `grads` ((n+1) B, H), the
    first B rows a sink for unused entries), `touched` the slots holding gradient."""

    __slots__ = ("grads", "touched")

    def __init__(self):
        self.grads: Optional[Tensor] = None
        self.touched: Set[int] = set()


class _Mailbox:
    """Gradient mailbox of one sequence (one call's memory), one `_Pass` per backward pass running over it.

    Passes are told apart by autograd's graph-task id, so two threads running `autograd.grad(...,
    retain_graph=True)` over one graph at once each sum their own gradients; a pass's share is dropped when
    that pass ends (a callback queued on the engine), so a pass that skipped some writes (autograd.grad with
    `inputs`) leaves nothing stale behind. Holds no graph tensor, so the autograd nodes that reference it make
    no reference cycle."""

    __slots__ = ("B", "H", "n", "passes", "cache", "lock")

    def __init__(self, B: int, H: int):
        self.B, self.H, self.n = B, H, 0
        self.passes: Dict[int, _Pass] = {}
        self.cache: dict = {}
        self.lock = threading.Lock()

    def _current(self, create: bool) -> Optional[_Pass]:
        pass_id = torch._C._current_graph_task_id()
        with self.lock:
            p = self.passes.get(pass_id)
            if p is None and create:
                p = self.passes[pass_id] = _Pass()
                passes = self.passes
                torch.autograd.Variable._execution_engine.queue_callback(lambda: passes.pop(pass_id, None))
        return p

    def open(self, like: Tensor) -> Tuple[Tensor, Set[int]]:
        """This pass's mailbox ((n+1) B, H), all rows of untouched slots zero, and its touched set."""
        p = self._current(create=True)
        grads = p.grads
        if grads is None or grads.shape[0] < (self.n + 1) * self.B:
            # Slots written so far: no _Attend of this sequence can touch a slot past them. (Slots are not
            # written during a backward pass, so this grows at most once per pass; copy anyway.)
            old, grads = grads, like.new_zeros(((self.n + 1) * self.B, self.H))
            if old is not None:
                grads[: old.shape[0]] = old
            p.grads = grads
        return grads, p.touched

    def constants(self, B: int, k: int, Tc: int, cap: int, device) -> tuple:
        """Index constants of the compact backward, cached per shape: (batch * cap (B, 1), arange(k)
        (B, k), lengths Tc (B,), batch + B (B, 1), k (B,))."""
        key = (k, Tc, cap)
        c = self.cache.get(key)
        if c is None:
            batch = torch.arange(B, device=device)[:, None]
            pos = torch.arange(k, device=device).expand(B, k).contiguous()
            lengths = torch.full((B,), Tc, dtype=torch.int64, device=device)
            c = (batch * cap, pos, lengths, batch + B, torch.full((B,), k, dtype=torch.int64, device=device))
            self.cache[key] = c
        return c

    def take(self, j0: int, j1: int) -> Optional[Tensor]:
        """The gradient of slots [j0, j1) as (B, j1 - j0, H), and empty their rows; None when no attention
        of this pass touched any of them."""
        p = self._current(create=False)
        if p is None or not any(j in p.touched for j in range(j0, j1)):
            return None
        p.touched.difference_update(range(j0, j1))
        rows = p.grads[(j0 + 1) * self.B : (j1 + 1) * self.B]
        g = rows.view(j1 - j0, self.B, self.H).transpose(0, 1).clone()
        rows.zero_()
        return g

    def post(self, grad: Tensor) -> None:
        """Add grad (B, m, H) to slots [0, m) (a gradient that reaches the memory from outside, e.g. from the
        next chunk of the sequence), marking the slots with non-zero rows."""
        B, m, H = grad.shape
        grads, touched = self.open(grad)
        grads[B : (m + 1) * B] += grad.transpose(0, 1).reshape(m * B, H)
        touched.update(torch.nonzero(grad.ne(0).any(2).any(0)).flatten().tolist())


class _Write(torch.autograd.Function):
    """token_{j1} = _Write(token_{j0}, slots): slots (B, j1 - j0, H) are slots [j0, j1). Forward writes nothing
    (the buffer write is done by `append`/`start`); backward gives the slots the gradient their mailbox rows
    collected, or None (their graph is then never visited)."""

    @staticmethod
    def forward(ctx, mailbox, j0, j1, token, slots):
        ctx.mailbox, ctx.j0, ctx.j1, ctx.shape = mailbox, j0, j1, slots.shape  # (B, H) for one slot
        ctx.set_materialize_grads(False)
        return token.new_empty(())

    @staticmethod
    @once_differentiable  # the mailbox carries no graph: double backward raises instead of returning 0
    def backward(ctx, grad_token):
        g = ctx.mailbox.take(ctx.j0, ctx.j1)  # always taken: empties the rows even when h needs no gradient
        g = g.reshape(ctx.shape) if g is not None and ctx.needs_input_grad[4] else None
        return None, None, None, grad_token, g


class _Export(torch.autograd.Function):
    """The memory handed to the caller, (B, n, H): the buffer's first n rows (an alias, not a copy) whose
    gradient goes to the mailbox (so a later chunk's attention reaches this chunk's slots through sparse
    replay, as one long sequence)."""

    @staticmethod
    def forward(ctx, mailbox, values, n, token):
        ctx.mailbox = mailbox
        ctx.set_materialize_grads(False)
        return alias(values, n)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        if grad is not None:
            ctx.mailbox.post(grad)
        return None, None, None, None


class _Attend(torch.autograd.Function):
    """summary = op(query, keys[:, :n], values[:, :n], w); slot gradients go to the mailbox.

    Inputs: (mailbox, keys, values, n, k_top, backend, eps, index, query (B, D), score_weight (D,), key_weight
    W_m (D, H), token_n). keys/values are the whole buffers at this step (rows below n never change afterwards);
    token_n orders this node's backward before that of every _Write of a slot below n. index: None, or the
    SlotIndex of a bounded memory: the op then runs over the `index.count` active slots of each row (gathered,
    in write order) and indices/threshold come back as global slots, so the backward below is the same.
    """

    @staticmethod
    def forward(ctx, mailbox, keys, values, n, k_top, backend, eps, index, query, score_weight, key_weight, token):
        if index is None:
            summary, weights, indices, threshold = _op_forward(query, keys, values, score_weight, n, k_top, backend, eps)
        else:
            n = index.count
            summary, weights, indices, threshold = _op_forward(query, index.gather(keys), index.gather(values),
                                                               score_weight, n, k_top, backend, eps)
            indices, threshold = index.to_global(indices), index.to_global(threshold[:, None])[:, 0]
        ctx.save_for_backward(query, score_weight, key_weight, weights, indices, threshold)
        ctx.mailbox, ctx.keys, ctx.values, ctx.n, ctx.k_top, ctx.backend = mailbox, keys, values, n, k_top, backend
        ctx.eps = eps
        ctx.mark_non_differentiable(indices, threshold)
        ctx.set_materialize_grads(False)
        return summary, weights, indices, threshold

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_summary, grad_weights, _gi, _gt):
        query, score_weight, key_weight, weights, indices, threshold = ctx.saved_tensors
        keys, values, k_top = ctx.keys, ctx.values, ctx.k_top
        B, cap, D = keys.shape
        H = values.shape[2]
        k = indices.shape[1]
        if grad_summary is None:
            grad_summary = values.new_zeros((B, H))
        if grad_weights is None:
            grad_weights = torch.zeros_like(weights)
        # The backward reads only the selected rows and the threshold row: gather them into a compact problem
        # of Tc rows (entry j < k is selected entry j, entry k the threshold slot). With k < k_top (a buffer
        # smaller than k_top) no row has a threshold, and Tc = k keeps the op's k = min(k_top, Tc) = k.
        # Every row has n valid slots, so (op contract) entry j is used iff j < n, and the threshold iff n > k_top:
        # past the first k_top steps every entry is used and the compact indices are constants.
        mailbox = ctx.mailbox
        sparse = k == k_top
        rows = torch.cat([indices, threshold[:, None]], 1) if sparse else indices  # (B, Tc), -1 where unused
        Tc = rows.shape[1]
        batch_cap, pos, lengths_c, batch_sink, thr_k = mailbox.constants(B, k, Tc, cap, rows.device)
        all_used = ctx.n > k_top
        flat = (batch_cap + (rows if all_used else rows.clamp(min=0))).reshape(-1)
        k_c = keys.reshape(B * cap, D).index_select(0, flat).view(B, Tc, D)
        v_c = values.reshape(B * cap, H).index_select(0, flat).view(B, Tc, H)  # the slots m_i themselves
        if all_used:
            idx_c, thr_c = pos, thr_k
        else:
            idx_c = torch.where(indices >= 0, pos, indices)
            thr_c = threshold  # all -1 (n <= k_top)
        g_query, g_k, g_v, g_w = backward_impl(
            grad_summary, grad_weights, query, k_c, v_c, score_weight, k_top, lengths_c,
            weights, idx_c, thr_c, ctx.backend, ctx.eps,
        )
        # Unused entries have exactly zero gradient (and go to a sink row below).
        g_key_weight = None
        if ctx.needs_input_grad[10]:
            # k_i = W_m m_i: dL/dW_m = sum_i dk_i m_i^T.
            g_key_weight = g_k.reshape(-1, D).t() @ v_c.reshape(-1, H)
        # dL/dm_i = dL/dv_i + W_m^T dk_i, into the mailbox: row (slot + 1) B + b, so unused entries (slot -1)
        # land in the sink rows [0, B).
        g_rows = torch.addmm(g_v.reshape(-1, H), g_k.reshape(-1, D), key_weight)  # (B Tc, H)
        grads, touched = mailbox.open(g_rows)
        grads.index_add_(0, (rows * B + batch_sink).reshape(-1), g_rows)  # distinct rows (but the sink): deterministic
        touched.update(rows.reshape(-1).tolist())
        touched.discard(-1)
        return None, None, None, None, None, None, None, None, g_query, g_w, g_key_weight, None


class MemoryState:
    """The memory of one sequence, owned by the call that runs it (never by the module, so one module serves
    many sequences, threads and copies at once).

    `buffers` (SlotBuffers) hold the slots m_i and their keys W_m m_i in their first n rows; this state may
    write rows [n, claimed) in place (it reserved them). `token` heads the chain of write nodes (None without
    autograd). `values` (B, capacity, H) and `keys` (B, capacity, D) are the buffers themselves. `index`: the
    SlotIndex of a bounded memory (the slots each row attends over), None when unbounded.
    """

    __slots__ = ("buffers", "n", "claimed", "mailbox", "token", "index")

    def __init__(self, buffers: SlotBuffers, n: int, mailbox: _Mailbox, index: Optional[SlotIndex] = None):
        self.buffers, self.n, self.claimed, self.mailbox = buffers, n, buffers.used, mailbox
        self.token: Optional[Tensor] = None
        self.index = index

    @property
    def values(self) -> Tensor:
        return self.buffers.values

    @property
    def keys(self) -> Tensor:
        return self.buffers.keys


class SparseAttentiveMemory(nn.Module):
    """SAB memory with the scoring MLP s_i = w . tanh(W_h h_hat + b + W_m m_i).

    Args:
        hidden_size: H, size of a slot (the LSTM state).
        attn_dim: D, hidden width of the scoring MLP.
        k_top: slots kept per attention (>= 1); a value >= the number of slots gives dense softmax attention.
        backend: op backend, "auto" | "triton" | "cpu" | "reference".
        eps: the sparsifier's epsilon (default 1e-7, the paper's; see `sab_kernels.sparse_attention`).

    Parameters: query_proj (W_h, b): H -> D; key_proj (W_m, no bias): H -> D; score_weight (w): (D,).

    Use: `state = start(slots)` begins a sequence whose memory holds `slots` (B, n0, H) (a new sequence: h0 as
    the one slot); `attend(state, h_hat)` -> Attention over the slots written so far; `append(state, h)` writes
    the next slot; `export(state)` -> the slots (B, n, H), for the next chunk of the sequence.
    """

    def __init__(self, hidden_size: int, attn_dim: int, k_top: int, backend: str = "auto", eps: float = EPS):
        super().__init__()
        if isinstance(k_top, bool) or not isinstance(k_top, int):
            raise TypeError(f"k_top must be an int >= 1, got {type(k_top).__name__}")
        if k_top < 1:
            raise ValueError(f"k_top must be >= 1, got {k_top}")
        check_eps(eps)
        self.hidden_size, self.attn_dim, self.k_top, self.backend, self.eps = hidden_size, attn_dim, k_top, backend, float(eps)
        self.query_proj = nn.Linear(hidden_size, attn_dim, bias=True)
        self.key_proj = nn.Linear(hidden_size, attn_dim, bias=False)
        self.score_weight = nn.Parameter(torch.empty(attn_dim))
        nn.init.uniform_(self.score_weight, -attn_dim**-0.5, attn_dim**-0.5)

    def start(self, slots: Tensor, capacity: int = 64, buffers: Optional[SlotBuffers] = None,
              index: Optional[SlotIndex] = None) -> MemoryState:
        """A memory holding `slots` (B, n0, H) (n0 >= 1), room for `capacity` slots in all (it grows).

        `buffers`: the SlotBuffers whose first n0 rows hold `slots` and their keys (a continued sequence's);
        the new slots are then appended to them in place when this call holds their newest row (see
        SlotBuffers.reserve), and no earlier key is recomputed. Without them, new buffers are made.
        The slots stay graph-connected: gradient the attentions send them reaches their graph.
        `index`: a bounded memory's SlotIndex over these n0 slots (see kernels/bounded_slots.py), or None."""
        if not isinstance(slots, Tensor) or slots.dim() != 3:
            raise ValueError(f"slots must be a (B, n, H) tensor, got {tuple(slots.shape) if isinstance(slots, Tensor) else type(slots).__name__}")
        B, n0, H = slots.shape
        if H != self.hidden_size:
            raise ValueError(f"slots must have hidden_size = {self.hidden_size} features, got {tuple(slots.shape)}")
        extra = max(int(capacity) - n0, 0)
        w_m = self.key_proj.weight
        if buffers is not None:
            buffers = buffers.reserve(n0, extra, w_m)
        else:
            dtype = self.score_weight.dtype if torch.is_autocast_enabled(slots.device.type) else slots.dtype
            buffers = SlotBuffers.from_slots(slots.detach().to(dtype), w_m, extra)
        state = MemoryState(buffers, n0, _Mailbox(B, H), index)
        state.mailbox.n = n0
        if torch.is_grad_enabled() and slots.requires_grad:
            # Slots [0, n0) join the token chain: their gradient reaches `slots`' graph through the mailbox.
            state.token = _Write.apply(state.mailbox, 0, n0, slots.new_zeros((), dtype=buffers.values.dtype).requires_grad_(True),
                                       slots)
        return state

    def append(self, state: MemoryState, h: Tensor) -> None:
        """Write h (B, H) and its key W_m h (B, D) as the next slot: O(B H D) for the key, in place.

        With autograd on, the slot also joins the token chain (O(1) graph work, whatever the slot count)."""
        n = state.n
        if n + 1 > state.claimed:
            # Past the rows this state reserved: reserve more (in place when it holds the newest row and
            # there is room, in new, larger buffers otherwise).
            state.buffers = state.buffers.reserve(n, max(1, state.buffers.capacity - n), self.key_proj.weight)
            state.claimed = state.buffers.used
        buf = state.buffers
        with torch.no_grad(), torch.autocast(h.device.type, enabled=False):
            buf.values.select(1, n).copy_(h.detach())
        buf.write_keys(n, n + 1, self.key_proj.weight)
        state.n = state.mailbox.n = n + 1
        if state.index is not None:
            state.index = state.index.write(n)
        if torch.is_grad_enabled():
            token = state.token
            if token is None:
                token = h.new_zeros((), dtype=buf.values.dtype).requires_grad_(True)  # the chain's leaf
            state.token = _Write.apply(state.mailbox, n, n + 1, token, h.unsqueeze(1))

    def attend(self, state: MemoryState, h_hat: Tensor) -> Attention:
        """Sparse attention of the provisional state h_hat (B, H) over the slots written so far.

        Returns Attention(summary (B, H), weights (B, k), indices (B, k), threshold (B,)) with
        k = min(k_top, buffer capacity); entries past the n written slots have weight 0 and index -1.
        A bounded memory (state.index) attends over each row's active slots only (k = min(k_top, count)),
        indices are global slots, and the weights add to the recent slots' relevance.
        Backward: gradient reaches query_proj, score_weight, key_proj and only the selected/threshold slots'
        graphs. Autograd work per call is O(1) in the number of slots.
        """
        n = state.n
        # Under autocast the projection may come out in a lower precision: the op runs in the memory's dtype.
        query = self.query_proj(h_hat).to(state.values.dtype)
        # The whole preallocated buffer goes to the op with lengths = n: contiguous, so nothing is copied, and
        # the kernels read only slots below n. Later writes land at rows >= n, which this step never reads.
        index = state.index
        if not torch.is_grad_enabled() and index is None:
            out = _op_forward(query, state.keys, state.values, self.score_weight.to(query.dtype), n, self.k_top, self.backend,
                              self.eps)
        else:
            if state.token is None and torch.is_grad_enabled():  # every slot was written without autograd:
                state.token = query.new_zeros(()).requires_grad_(True)  # start the chain here
            out = _Attend.apply(
                state.mailbox, state.keys, state.values, n, self.k_top, self.backend, self.eps, index,
                query, self.score_weight.to(query.dtype), self.key_proj.weight.to(query.dtype), state.token,
            )
        if index is not None:
            state.index = index.add_relevance(out[1], index.compact(out[2]))
        return Attention(*out)

    def export(self, state: MemoryState) -> Tensor:
        """The slots (B, n, H), connected to the sequence's graph through the mailbox (sparse replay). An alias
        of the buffers' first n rows, not a copy: rows below n never change."""
        if torch.compiler.is_compiling():  # an alias is made with set_(), which Dynamo cannot trace
            return state.values[:, : state.n].clone()
        if not torch.is_grad_enabled() or state.token is None:
            return alias(state.values, state.n)
        return _Export.apply(state.mailbox, state.values, state.n, state.token)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, attn_dim={self.attn_dim}, k_top={self.k_top}, backend={self.backend!r}"
                + (f", eps={self.eps:g}" if self.eps != EPS else ""))
