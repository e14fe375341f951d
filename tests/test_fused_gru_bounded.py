"""The fused C++ path (csrc/sab_lstm.cpp through sab_lstm_fused.sequence) with a GRU cell and with a bounded
memory (relevancy screening, bounded_slots.SlotIndex), against a plain autograd loop written here: torch ops,
the reference attention op, and per-row Python lists for the bounded memory's rule. Float64, small shapes."""

from __future__ import annotations

import pytest
import torch

from sab_kernels.kernels import sab_lstm_fused
from sab_kernels.kernels.bounded_slots import SlotIndex
from sab_kernels.reference import reference_forward

pytestmark = pytest.mark.skipif(not sab_lstm_fused.available(), reason="the compiled CPU extension is not built")

DT = torch.float64
# The sparsifier's epsilon for these tests. The default 1e-7 makes a step whose kept scores sit within ~1e-7 of
# the threshold amplify rounding by up to 1e7 (seen: a 2e-9 relative gradient difference from one such step);
# with 1e-2 both sides stay well-conditioned and the comparison can be held to 1e-10.
EPS = 1e-2
TOL = dict(rtol=1e-10, atol=1e-10)


def assert_close(a, b, what=""):
    """Equal to 1e-10 relative to the tensor's scale (the sparsifier's 1 / (sum + eps) makes some gradients
    large, and their rounding with them)."""
    scale = max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * scale, msg=lambda s: f"{what}: {s}")


class Row:
    """One row of a bounded memory, as plain lists: the rule of bounded_slots.py, written independently."""

    def __init__(self, W, M):
        self.W, self.M, self.active, self.rel, self.kept = W, M, [], [], 0

    def add(self, weights, indices):
        for w, i in zip(weights.tolist(), indices.tolist()):
            if i >= self.kept:
                self.rel[i] += w

    def write(self, slot):
        self.active.append(slot)
        self.rel.append(0.0)
        if len(self.active) - self.kept <= self.W:
            return
        if self.kept < self.M:
            self.kept += 1
            return
        leaving = self.kept
        if self.kept > 0:
            least = min(range(self.kept), key=lambda i: (self.rel[i], i))
            if self.rel[self.kept] > self.rel[least]:
                leaving = least
        del self.active[leaving]
        del self.rel[leaving]


def make_params(cell_type, I, H, D, seed=0, zero_score=False):
    g = torch.Generator().manual_seed(seed)
    G = 3 if cell_type == "gru" else 4

    def p(*shape, scale=0.6):
        return (torch.randn(*shape, generator=g, dtype=DT) * scale).requires_grad_()

    cell = (p(G * H, I), p(G * H, H), p(G * H), p(G * H))
    w = torch.zeros(D, dtype=DT, requires_grad=True) if zero_score else p(D, scale=1.0)
    attention = (p(D, H, scale=1.0), p(D), p(D, H, scale=1.0), w)
    return cell, attention


def reference(x, h0, c0, memory, cell, attention, k_top, k_att, k_trunc, step0=0, cell_type="lstm", rows=None):
    """(out, h_n, c_n, memory_out): the SAB step as plain autograd ops; rows (per-row `Row`s) make it bounded."""
    w_ih, w_hh, b_ih, b_hh = cell
    T, B, _ = x.shape
    H = h0.shape[1]
    wq, bq, wm, w = attention if k_top else (None,) * 4
    slots = list(memory.unbind(1)) if k_top else []
    keys = [s @ wm.t() for s in slots]
    h, c = h0, c0
    outs = []
    for t in range(T):
        tg = step0 + t
        if k_trunc and (tg + 1) % k_trunc == 0:
            h = h.detach()
            c = c.detach() if c is not None else None
        if cell_type == "lstm":
            gates = x[t] @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            hh = torch.sigmoid(o) * torch.tanh(c)
        else:
            gi = x[t] @ w_ih.t() + b_ih
            gh = h @ w_hh.t() + b_hh
            r = torch.sigmoid(gi[:, :H] + gh[:, :H])
            z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            hh = (1 - z) * n + z * h
        if k_top:
            q = hh @ wq.t() + bq
            if rows is None:
                s = reference_forward(q, torch.stack(keys, 1), torch.stack(slots, 1), w, k_top, eps=EPS)[0]
            else:
                parts = []
                for b, row in enumerate(rows):
                    K = torch.stack([keys[j][b] for j in row.active])[None]
                    V = torch.stack([slots[j][b] for j in row.active])[None]
                    sb, wts, idx, _ = reference_forward(q[b:b + 1], K, V, w, k_top, eps=EPS)
                    row.add(wts[0].detach(), idx[0])
                    parts.append(sb)
                s = torch.cat(parts)
            h = hh + s
            if (tg + 1) % k_att == 0:
                slots.append(h)
                keys.append(h @ wm.t())
                for row in rows or ():
                    row.write(len(slots) - 1)
        else:
            s = torch.zeros_like(hh)
            h = hh
        outs.append(torch.cat([h, s], 1))
    mem = torch.stack(slots, 1) if k_top else None
    return torch.stack(outs), h, c, mem


def leaves(T, B, I, H, n0, seed=1, cell_type="lstm"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g, dtype=DT).requires_grad_()
    h0 = (torch.randn(B, H, generator=g, dtype=DT) * 0.5).requires_grad_()
    c0 = (torch.randn(B, H, generator=g, dtype=DT) * 0.5).requires_grad_() if cell_type == "lstm" else None
    mem = (torch.randn(B, n0, H, generator=g, dtype=DT) * 0.5).requires_grad_() if n0 > 0 else None
    return x, h0, c0, mem


def loss_of(out, h_n, c_n, memory, seed=7):
    g = torch.Generator().manual_seed(seed)
    total = (out * torch.randn(out.shape, generator=g, dtype=DT)).sum()
    total = total + (h_n * torch.randn(h_n.shape, generator=g, dtype=DT)).sum()
    if c_n is not None:
        total = total + (c_n * torch.randn(c_n.shape, generator=g, dtype=DT)).sum()
    if memory is not None:
        total = total + (memory * torch.randn(memory.shape, generator=g, dtype=DT)).sum()
    return total


def grads(loss, tensors):
    tensors = [t for t in tensors if t is not None]
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def run_case(cell_type, k_top, k_att, k_trunc, T=23, B=3, I=3, H=5, D=4, n0=1, chunks=(), bounds=None,
             zero_score=False, seed=0):
    cell, attention = make_params(cell_type, I, H, D, seed=seed, zero_score=zero_score)
    x, h0, c0, mem0 = leaves(T, B, I, H, n0, seed=seed + 1, cell_type=cell_type)
    memory = (h0.unsqueeze(1) if mem0 is None else mem0) if k_top else None
    params = [*cell, *attention] if k_top else list(cell)
    inputs = [x, h0, c0, mem0 if k_top else None]

    rows = None
    if bounds is not None:
        rows = [Row(*bounds) for _ in range(B)]
        for row in rows:
            for j in range(memory.shape[1]):
                row.write(j)
    ref = reference(x, h0, c0, memory, cell, attention, k_top, k_att, k_trunc, 0, cell_type, rows)
    ref_grads = grads(loss_of(*ref), inputs + params)

    index = SlotIndex.new(B, memory.shape[1], *bounds, "cpu", DT) if bounds is not None else None
    cuts = [0, *chunks, T]
    h, c, m, slots, outs = h0, c0, memory, None, []
    for a, b in zip(cuts[:-1], cuts[1:]):
        before = (index.active.clone(), index.relevance.clone()) if index is not None else None
        r = sab_lstm_fused.sequence(x[a:b], h, c, m, slots, cell, attention if k_top else None, k_top, k_att,
                                    k_trunc, a, eps=EPS, cell_type=cell_type, index=index)
        if before is not None:  # the given index is a value: never changed
            assert torch.equal(index.active, before[0]) and torch.equal(index.relevance, before[1])
            assert isinstance(r.index, SlotIndex) and r.index is not index
        else:
            assert r.index is None
        if cell_type == "gru":
            assert r.c_n is None
        h, c, m, slots, index = r.h_n, r.c_n, r.memory, r.slots, r.index
        outs.append(r.out)
    out = torch.cat(outs)
    fused = (out, h, c, m if k_top else None)
    for a, b in zip(fused, ref):
        if b is None:
            assert a is None
        else:
            assert_close(a, b, "output")
    fused_grads = grads(loss_of(*fused), inputs + params)
    for i, (a, b) in enumerate(zip(fused_grads, ref_grads)):
        assert (a is None) == (b is None), i
        if b is not None:
            assert_close(a, b, f"gradient {i}")
    if rows is not None:
        assert index.count == len(rows[0].active) and index.kept == rows[0].kept
        for b, row in enumerate(rows):
            assert index.active[b, :index.count].tolist() == row.active
            torch.testing.assert_close(index.relevance[b, :index.count], torch.tensor(row.rel, dtype=DT), **TOL)
    return out, index


@pytest.mark.parametrize("k_top", [0, 2, 100])
@pytest.mark.parametrize("k_att", [1, 2])
@pytest.mark.parametrize("k_trunc", [0, 3])
def test_gru_matches_reference(k_top, k_att, k_trunc):
    run_case("gru", k_top, k_att, k_trunc)


@pytest.mark.parametrize("cell_type", ["gru", "lstm"])
@pytest.mark.parametrize("k_top,k_att,k_trunc", [(2, 1, 0), (2, 2, 3), (0, 1, 4), (100, 2, 0)])
def test_chunks_equal_whole_run(cell_type, k_top, k_att, k_trunc):
    run_case(cell_type, k_top, k_att, k_trunc, T=20, chunks=(7, 8, 15), n0=2)


def test_gru_memory_of_several_slots():
    run_case("gru", 2, 1, 0, n0=3, T=12)


@pytest.mark.parametrize("bounds", [(2, 0), (2, 2), (3, 1)])
@pytest.mark.parametrize("k_top", [1, 2])
@pytest.mark.parametrize("cell_type", ["lstm", "gru"])
def test_bounded_matches_reference(bounds, k_top, cell_type):
    run_case(cell_type, k_top, 1, 0, T=30, bounds=bounds)


@pytest.mark.parametrize("bounds", [(2, 2), (3, 1)])
def test_bounded_k_att_truncation_chunks(bounds):
    run_case("lstm", 2, 2, 3, T=40, bounds=bounds, chunks=(9, 10, 25), n0=2)
    run_case("gru", 1, 1, 4, T=33, bounds=bounds, chunks=(5, 20))


def test_bounded_ties():
    """score_weight = 0: every score ties, so each attention picks the oldest active slots and gives them weight
    0 (sparse regime), all relevance stays 0, and every eviction is decided by the tie rules: a leaving slot
    (relevance 0) never replaces a kept one (strict >)."""
    _, index = run_case("lstm", 1, 1, 0, T=25, bounds=(2, 2), zero_score=True)
    assert index.active[:, : index.count].tolist() == [[0, 1, 24, 25]] * 3
    _, index = run_case("gru", 2, 1, 0, T=25, bounds=(3, 1), zero_score=True, n0=2)
    assert index.active[:, : index.count].tolist() == [[0, 24, 25, 26]] * 3


def test_bounded_index_rule_matches_slot_index():
    """The C++ index update against SlotIndex itself (the contract), driven by the same attention results, over
    many steps with k_att = 1 (one write, possibly one eviction, per step)."""
    B, H, D, T, W, M = 3, 4, 3, 120, 3, 2
    cell, attention = make_params("lstm", 2, H, D, seed=3)
    x, h0, c0, _ = leaves(T, B, 2, H, 0, seed=4)
    with torch.no_grad():
        r = sab_lstm_fused.sequence(x, h0, c0, h0.unsqueeze(1), None, cell, attention, 2, 1, 0, eps=EPS,
                                    index=SlotIndex.new(B, 1, W, M, "cpu", DT))
        # Replay: each step's attention over the active slots, with SlotIndex's add_relevance and write.
        index = SlotIndex.new(B, 1, W, M, "cpu", DT)
        wq, bq, wm, w = attention
        values = r.memory
        keys = values @ wm.t()
        for t in range(T):
            hh = r.out[t, :, :H] - r.out[t, :, H:]
            q = hh @ wq.t() + bq
            s, wts, idx, _ = reference_forward(q, index.gather(keys), index.gather(values), w, 2, eps=EPS)
            torch.testing.assert_close(s, r.out[t, :, H:], **TOL)
            index = index.add_relevance(wts, idx).write(t + 1)
    assert (r.index.count, r.index.kept) == (index.count, index.kept)
    assert torch.equal(r.index.active[:, : index.count], index.active[:, : index.count])
    torch.testing.assert_close(r.index.relevance[:, : index.count], index.relevance[:, : index.count], **TOL)


def test_state_continued_twice():
    """One state continued twice (states are values) gives the same result both times."""
    B, H, D = 2, 4, 3
    cell, attention = make_params("gru", 2, H, D, seed=5)
    x, h0, _, _ = leaves(16, B, 2, H, 0, seed=6, cell_type="gru")
    with torch.no_grad():
        r = sab_lstm_fused.sequence(x[:8], h0, None, h0.unsqueeze(1), None, cell, attention, 2, 1, 0, cell_type="gru",
                                    index=SlotIndex.new(B, 1, 2, 2, "cpu", DT))
        a = sab_lstm_fused.sequence(x[8:], r.h_n, None, r.memory, r.slots, cell, attention, 2, 1, 0, 8, cell_type="gru",
                                    index=r.index)
        b = sab_lstm_fused.sequence(x[8:], r.h_n, None, r.memory, r.slots, cell, attention, 2, 1, 0, 8, cell_type="gru",
                                    index=r.index)
    assert torch.equal(a.out, b.out) and torch.equal(a.index.active, b.index.active)
    assert torch.equal(a.index.relevance, b.index.relevance)


@pytest.mark.parametrize("cell_type,bounds", [("gru", None), ("gru", (2, 1)), ("lstm", (3, 0))])
def test_deterministic(cell_type, bounds):
    def once():
        cell, attention = make_params(cell_type, 3, 5, 4, seed=9)
        x, h0, c0, _ = leaves(30, 3, 3, 5, 0, seed=10, cell_type=cell_type)
        index = SlotIndex.new(3, 1, *bounds, "cpu", DT) if bounds else None
        r = sab_lstm_fused.sequence(x, h0, c0, h0.unsqueeze(1), None, cell, attention, 2, 1, 4, cell_type=cell_type,
                                    index=index)
        g = grads(loss_of(r.out, r.h_n, r.c_n, r.memory), [x, h0, c0, *cell, *attention])
        return [r.out, r.h_n, *g]

    for a, b in zip(once(), once()):
        assert torch.equal(a, b)


def test_bad_inputs():
    B, H, D, I = 2, 4, 3, 2
    cell, attention = make_params("gru", I, H, D)
    lcell, _ = make_params("lstm", I, H, D)
    x, h0, c0, _ = leaves(5, B, I, H, 0)
    mem = h0.unsqueeze(1)
    with pytest.raises(ValueError, match="cell_type"):
        sab_lstm_fused.sequence(x, h0, c0, mem, None, cell, attention, 2, 1, 0, cell_type="rnn")
    with pytest.raises(RuntimeError, match="weight_ih"):  # LSTM weights (4H) for a GRU (3H)
        sab_lstm_fused.sequence(x, h0, None, mem, None, lcell, attention, 2, 1, 0, cell_type="gru")
    with pytest.raises(RuntimeError, match="weight_ih"):  # and the other way round
        sab_lstm_fused.sequence(x, h0, c0, mem, None, cell, attention, 2, 1, 0, cell_type="lstm")
    with pytest.raises(ValueError, match="c0"):
        sab_lstm_fused.sequence(x, h0, None, mem, None, lcell, attention, 2, 1, 0)
    index = SlotIndex.new(B, 1, 2, 1, "cpu", DT)
    with pytest.raises(ValueError, match="k_top"):
        sab_lstm_fused.sequence(x, h0, c0, None, None, lcell, None, 0, 1, 0, index=index)
    with pytest.raises(TypeError, match="SlotIndex"):
        sab_lstm_fused.sequence(x, h0, c0, mem, None, lcell, attention, 2, 1, 0, index=(2, 1))
    with pytest.raises(ValueError, match="rows"):
        sab_lstm_fused.sequence(x, h0, c0, mem, None, lcell, attention, 2, 1, 0,
                                index=SlotIndex.new(B + 1, 1, 2, 1, "cpu", DT))
    with pytest.raises(RuntimeError, match="slot ids below"):  # an index of 3 slots for a memory of 1
        sab_lstm_fused.sequence(x, h0, c0, mem, None, lcell, attention, 2, 1, 0,
                                index=SlotIndex.new(B, 3, 2, 1, "cpu", DT))
    with pytest.raises(RuntimeError, match="relevance"):  # relevance of another dtype
        sab_lstm_fused.sequence(x, h0, c0, mem, None, lcell, attention, 2, 1, 0,
                                index=SlotIndex.new(B, 1, 2, 1, "cpu", torch.float32))


def test_triton_reasons():
    x = torch.zeros(2, 1, 3)
    assert "GRU" in sab_lstm_fused.unsupported_reason(x, "triton", 3, cell_type="gru") or \
        "gru" in sab_lstm_fused.unsupported_reason(x, "triton", 3, cell_type="gru")
    assert sab_lstm_fused.unsupported_reason(x, "triton", 3, bounded=True) is not None
    assert sab_lstm_fused.unsupported_reason(x, "cpu", 3, cell_type="gru", bounded=True) is None
    assert "cell" in sab_lstm_fused.unsupported_reason(x, "cpu", 3, cell_type="rnn")


def test_custom_ops_pass_opcheck():
    from sab_kernels.kernels import sab_lstm_op

    B, H, D, I = 2, 4, 3, 2
    cell, attention = make_params("gru", I, H, D)
    x, h0, _, memory = leaves(7, B, I, H, 3, cell_type="gru")
    torch.library.opcheck(sab_lstm_op._forward_op, (x, h0, None, memory, *cell, *attention, 2, 2, 3, 1, EPS, "cpu", "gru"))
    index = SlotIndex.new(B, 3, 2, 1, "cpu", DT)
    bound = (index.recent, index.relevant, index.active, index.relevance, index.count, index.kept)
    torch.library.opcheck(sab_lstm_op._forward_op, (x, h0, None, memory, *cell, *attention, 2, 1, 0, 0, EPS, "cpu", "gru",
                                                    *bound))
    lcell, _ = make_params("lstm", I, H, D)
    c0 = torch.randn(B, H, dtype=DT)
    torch.library.opcheck(sab_lstm_op._forward_op, (x, h0, c0, memory, *lcell, *attention, 1, 1, 2, 0, EPS, "cpu", "lstm",
                                                    *bound))


@pytest.mark.parametrize("cell_type,bounds", [("gru", None), ("gru", (2, 1)), ("lstm", (2, 2))])
def test_compiled_equals_eager(cell_type, bounds):
    """torch.compile(fullgraph=True) goes through the custom ops: same results as the eager call, chunked."""
    cell, attention = make_params(cell_type, 3, 4, 3, seed=11)
    x, h0, c0, _ = leaves(14, 2, 3, 4, 0, seed=12, cell_type=cell_type)

    def run(x, h0, c0, memory, index):
        a = sab_lstm_fused.sequence(x[:6], h0, c0, memory, None, cell, attention, 2, 1, 3, eps=EPS,
                                    cell_type=cell_type, index=index)
        b = sab_lstm_fused.sequence(x[6:], a.h_n, a.c_n, a.memory, None, cell, attention, 2, 1, 3, 6, eps=EPS,
                                    cell_type=cell_type, index=a.index)
        extra = (b.index.active, b.index.relevance) if b.index is not None else ()
        return torch.cat([a.out, b.out]), b.h_n, b.memory, *extra

    results = []
    for fn in (torch.compile(run, fullgraph=True), run):
        index = SlotIndex.new(2, 1, *bounds, "cpu", DT) if bounds else None
        outs = fn(x, h0, c0, h0.unsqueeze(1), index)
        g = grads(outs[0].square().sum() + outs[2].sum(), [x, h0, *cell, *attention])
        results.append([o.detach() for o in outs] + list(g))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell_type,k_top,bounds", [("lstm", 0, None), ("gru", 0, None), ("lstm", 2, (2, 1)),
                                                    ("gru", 2, None)])
def test_inference_equals_training_forward(cell_type, k_top, bounds):
    """Without a backward the kernels keep one step's arrays: the same outputs, bit for bit."""
    cell, attention = make_params(cell_type, 3, 4, 3, seed=13)
    x, h0, c0, _ = leaves(11, 2, 3, 4, 0, seed=14, cell_type=cell_type)
    runs = []
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            index = SlotIndex.new(2, 1, *bounds, "cpu", DT) if bounds else None
            r = sab_lstm_fused.sequence(x, h0, c0, h0.unsqueeze(1), None, cell, attention if k_top else None, k_top, 1,
                                        3, cell_type=cell_type, index=index)
            runs.append([t.detach() for t in (r.out, r.h_n, r.c_n, r.memory) if t is not None]
                        + ([r.index.active, r.index.relevance] if bounds else []))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
