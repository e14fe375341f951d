"""sab_kernels.nn: the memory (in-place slot writes), SABLSTM (both paths) against a naive autograd twin, its
limits (nn.LSTM, dense attention), and sparse replay: gradient reaches exactly the slots the op selected.

Every test names backend="cpu": conftest sets TRITON_INTERPRET=1, so "auto" would run the Triton interpreter.
"""

import warnings

import pytest
import torch

from sab_kernels import sparse_attention_reference
from sab_kernels.nn import SABLSTM, SparseAttentiveMemory, build_model

BACKEND = "cpu"
PATHS = ["fused", "step"]  # the fused C++ sequence and the per-step module (tests/test_sab_lstm_paths.py)
pytestmark = pytest.mark.filterwarnings("ignore:sab_kernels. the compiled CPU kernels")


def _lstm_step(core, x_t, h, c):
    gates = x_t @ core.weight_ih.t() + core.bias_ih + core.bias_hh + h @ core.weight_hh.t()
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def naive_sab(core: SABLSTM, x):
    """SPEC section 2 written plainly: memory as a list, torch.stack every step, the reference op. x (T, B, I)."""
    T, B, _ = x.shape
    H = core.hidden_size
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H)
    mem = core.memory
    slots = [h]
    outs = []
    for t in range(T):
        if core.k_trunc and (t + 1) % core.k_trunc == 0:
            h, c = h.detach(), c.detach()
        h_hat, c = _lstm_step(core, x[t], h, c)
        if mem is None:
            h, s = h_hat, torch.zeros_like(h_hat)
        else:
            values = torch.stack(slots, 1)
            keys = mem.key_proj(values)
            s = sparse_attention_reference(mem.query_proj(h_hat), keys, values, mem.score_weight, mem.k_top).summary
            h = h_hat + s
            if (t + 1) % core.k_att == 0:
                slots.append(h)
        outs.append(torch.cat([h, s], 1))
    return torch.stack(outs)


def _grads(module, out, seed=1):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out.shape, generator=g, dtype=out.dtype)
    module.zero_grad()
    (out * weight).sum().backward()
    return {n: p.grad.clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize(
    "k_top, k_att, k_trunc",
    [
        pytest.param(2, 1, 4, id="sparse-katt1"),
        pytest.param(3, 2, 3, id="sparse-katt2"),
        pytest.param(None, 1, 5, id="dense"),
        pytest.param(0, 1, 4, id="tbptt"),
        pytest.param(2, 1, None, id="sparse-no-trunc"),
    ],
)
@pytest.mark.parametrize("path", PATHS)
def test_sab_lstm_matches_naive_autograd(k_top, k_att, k_trunc, path):
    torch.manual_seed(0)
    core = SABLSTM(3, 5, k_top, k_att, k_trunc, attn_dim=4, backend=BACKEND, path=path).double()
    x = torch.randn(17, 2, 3, dtype=torch.float64)
    out, (h_n, c_n) = core(x)
    ref = naive_sab(core, x)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h_n[0], out[-1, :, :5])
    got, want = _grads(core, out), _grads(core, ref)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-9, rtol=1e-9, msg=name)


@pytest.mark.parametrize("path", PATHS)
def test_bptt_limit_equals_torch_lstm_and_batch_first(path):
    torch.manual_seed(0)
    core = SABLSTM(3, 6, k_top=0, k_trunc=None, batch_first=True, backend=BACKEND, path=path).double()
    lstm = torch.nn.LSTM(3, 6, batch_first=True).double()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(core.weight_ih)
        lstm.weight_hh_l0.copy_(core.weight_hh)
        lstm.bias_ih_l0.copy_(core.bias_ih)
        lstm.bias_hh_l0.copy_(core.bias_hh)
    x = torch.randn(2, 11, 3, dtype=torch.float64)
    h0, c0 = torch.randn(1, 2, 6, dtype=torch.float64), torch.randn(1, 2, 6, dtype=torch.float64)
    out, (h_n, c_n) = core(x, (h0, c0))
    ref, (rh, rc) = lstm(x, (h0, c0))
    assert out.shape == (2, 11, 12)
    torch.testing.assert_close(out[..., :6], ref)
    assert torch.all(out[..., 6:] == 0)
    torch.testing.assert_close(h_n, rh)
    torch.testing.assert_close(c_n, rc)


def test_memory_append_writes_in_place_and_grows():
    torch.manual_seed(0)
    mem = SparseAttentiveMemory(4, 3, k_top=2, backend=BACKEND)
    h0 = torch.zeros(2, 4)
    state = mem.start(h0.unsqueeze(1), capacity=3)
    buf = state.values
    hs = [torch.randn(2, 4) for _ in range(5)]
    mem.append(state, hs[0])
    mem.append(state, hs[1])
    assert state.values is buf and state.n == 3  # within capacity: written in place, no new buffer
    for h in hs[2:]:
        mem.append(state, h)  # grows by doubling, keeps the contents
    assert state.n == 6 and state.values.shape[1] >= 6
    torch.testing.assert_close(state.values[:, :6], torch.stack([h0, *hs], 1))
    torch.testing.assert_close(state.keys[:, :6], mem.key_proj(torch.stack([h0, *hs], 1)).detach())
    torch.testing.assert_close(mem.export(state), torch.stack([h0, *hs], 1))
    att = mem.attend(state, torch.randn(2, 4))
    assert att.summary.shape == (2, 4) and att.indices.shape == (2, 2) and att.threshold.shape == (2,)


def _random_state(B, H):
    return torch.randn(1, B, H, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64)


def _expected_reached(trace, t, k_trunc, row):
    """Steps whose h_hat must receive gradient from a loss on step t's output, for batch row `row`.

    Step s reaches s-1 unless the main chain was detached before step s, and reaches the step that wrote
    each slot the op selected at s (indices and the threshold slot; slot 0 is h0 and has no step).
    """
    writer = {tr["slot"]: s for s, tr in enumerate(trace) if tr["slot"] is not None}
    reached, todo = set(), [t]
    while todo:
        s = todo.pop()
        if s in reached or s < 0:
            continue
        reached.add(s)
        if (s + 1) % k_trunc != 0:
            todo.append(s - 1)
        tr = trace[s]
        chosen = tr["indices"][row].tolist() + [int(tr["threshold"][row])]
        todo.extend(writer[j] for j in chosen if j in writer)
    return reached


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_replay_reaches_exactly_the_selected_slots(seed):
    """Backward from one step: gradient reaches the selected (and threshold) slots and the local chains
    behind them, back to their truncation points, and nothing else."""
    torch.manual_seed(seed)
    T, B, k_trunc = 40, 3, 4
    core = SABLSTM(3, 8, k_top=2, k_att=1, k_trunc=k_trunc, attn_dim=8, backend=BACKEND).double()
    x = torch.randn(T, B, 3, dtype=torch.float64)
    trace = []
    out, _ = core(x, _random_state(B, 8), trace=trace)  # h0 != 0, so choosing slot 0 passes real gradient
    for tr in trace:
        tr["h_hat"].retain_grad()
    t = T - 1
    out[t].sum().backward()
    via_memory = 0
    for b in range(B):
        want = _expected_reached(trace, t, k_trunc, b)
        local = {s for s in range(t - (t + 1) % k_trunc, t + 1)}  # t's own chain back to its truncation point
        got = {s for s, tr in enumerate(trace) if tr["h_hat"].grad is not None and tr["h_hat"].grad[b].abs().sum() > 0}
        assert got == want, f"row {b}: gradient reached {sorted(got)}, expected {sorted(want)}"
        assert len(want) < T  # truncation keeps most of the past out of reach
        via_memory += len(want - local)
    assert via_memory > 0  # some gradient really travelled through the memory


def test_unselected_slots_graphs_are_never_visited():
    """Slots the op did not choose get None, so autograd never runs their graph (not even with zeros);
    the chosen ones get exactly the gradient of autograd through the reference op on the stacked slots."""
    torch.manual_seed(0)
    B, H, n = 2, 4, 9
    mem = SparseAttentiveMemory(H, 3, k_top=2, backend=BACKEND).double()
    leaves = [torch.randn(B, H, dtype=torch.float64, requires_grad=True) for _ in range(n)]
    h_hat = torch.randn(B, H, dtype=torch.float64)
    state = mem.start((leaves[0] * 1.0).unsqueeze(1))
    for leaf in leaves[1:]:
        mem.append(state, leaf * 1.0)  # each slot has its own little graph back to its leaf
    att = mem.attend(state, h_hat)
    att.summary.sum().backward()
    chosen = set(att.indices.reshape(-1).tolist()) | set(att.threshold.tolist())
    assert len(chosen) < n
    for i, leaf in enumerate(leaves):
        assert (leaf.grad is not None) == (i in chosen), f"slot {i}"
    got = [leaf.grad if leaf.grad is not None else torch.zeros(B, H, dtype=torch.float64) for leaf in leaves]
    got_params = {name: p.grad.clone() for name, p in mem.named_parameters()}

    mem.zero_grad()
    leaves2 = [leaf.detach().requires_grad_(True) for leaf in leaves]
    values = torch.stack(leaves2, 1)
    ref = sparse_attention_reference(mem.query_proj(h_hat), mem.key_proj(values), values, mem.score_weight, 2)
    torch.testing.assert_close(att.summary, ref.summary)
    ref.summary.sum().backward()
    for i in range(n):
        torch.testing.assert_close(got[i], leaves2[i].grad, msg=f"slot {i}")
    for name, p in mem.named_parameters():
        torch.testing.assert_close(got_params[name], p.grad, msg=name)


def test_build_model_kinds_run():
    x = torch.randn(2, 7, 3)
    for kind in ("sab", "tbptt", "bptt", "dense", "lstm", "sab-gru", "gru"):
        m = build_model(kind, 3, 5, 4, k_top=2, k_att=2, k_trunc=3, backend=BACKEND)
        y = m(x)
        assert y.shape == (2, 7, 4)
        y.sum().backward()
        missing = [n for n, p in m.named_parameters() if p.grad is None]
        assert not missing, f"{kind}: no gradient for {missing}"
    with pytest.raises(ValueError, match="kind"):
        build_model("transformer", 3, 5, 4)


def test_step_autograd_inputs_do_not_grow_with_slots():
    """The attention and write nodes of a step take a fixed set of inputs, whatever the number of slots:
    per-step autograd work is O(1) in the memory size (gradient reaches slots through the mailbox)."""
    torch.manual_seed(0)
    mem = SparseAttentiveMemory(4, 3, k_top=2, backend=BACKEND)
    h = torch.randn(2, 4, requires_grad=True)
    state = mem.start((h * 1.0).unsqueeze(1), capacity=2)  # small: the buffer grows (and the mailbox with it)
    attend_inputs, write_inputs = set(), set()
    for i in range(40):
        att = mem.attend(state, h * 0.5)
        attend_inputs.add(len(att.summary.grad_fn.next_functions))
        mem.append(state, h * float(i))
        write_inputs.add(len(state.token.grad_fn.next_functions))
    assert state.n == 41
    assert len(attend_inputs) == 1 and len(write_inputs) == 1, (attend_inputs, write_inputs)
    assert attend_inputs.pop() <= 8  # query, score_weight, key_weight, token and non-tensor slots


@pytest.mark.parametrize("path", PATHS)
def test_backward_twice_with_retain_graph_matches_naive(path):
    """A second backward over the retained graph adds the same gradients again (the mailbox is emptied as
    it is read), exactly as for the naive autograd twin."""
    torch.manual_seed(0)
    core = SABLSTM(3, 5, k_top=2, k_att=1, k_trunc=4, attn_dim=4, backend=BACKEND, path=path).double()
    x = torch.randn(17, 2, 3, dtype=torch.float64)
    out, _ = core(x)
    ref = naive_sab(core, x)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    grads = []
    for y in (out, ref):
        core.zero_grad()
        (y * weight).sum().backward(retain_graph=True)
        once = {n: p.grad.clone() for n, p in core.named_parameters()}
        (y * weight).sum().backward()
        grads.append({n: p.grad.clone() for n, p in core.named_parameters()})
        for n in once:
            torch.testing.assert_close(grads[-1][n], 2 * once[n], msg=n)
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-9, rtol=1e-9, msg=name)


@pytest.mark.parametrize("path", PATHS)
def test_partial_backward_leaves_no_stale_mailbox(path):
    """torch.autograd.grad with `inputs` skips the writes that lead to none of them (here slot 0's, from the
    initial state): the gradient that pass left in their mailbox must not leak into a later full backward."""
    torch.manual_seed(0)
    core = SABLSTM(3, 5, k_top=2, k_att=1, k_trunc=4, attn_dim=4, backend=BACKEND, path=path).double()
    x = torch.randn(17, 2, 3, dtype=torch.float64)
    h0, c0 = (t.requires_grad_(True) for t in _random_state(2, 5))

    def loss_of_fresh_forward():
        out, _ = core(x, (h0, c0))
        return out.square().sum()

    loss = loss_of_fresh_forward()
    core.zero_grad()
    loss.backward()
    want_h0 = h0.grad.clone()
    want = {n: p.grad.clone() for n, p in core.named_parameters()}
    assert want_h0.abs().sum() > 0

    h0.grad = None
    core.zero_grad()
    loss = loss_of_fresh_forward()
    torch.autograd.grad(loss, [core.memory.score_weight], retain_graph=True)
    loss.backward()
    torch.testing.assert_close(h0.grad, want_h0, atol=1e-12, rtol=1e-12)
    for n, p in core.named_parameters():
        torch.testing.assert_close(p.grad, want[n], atol=1e-12, rtol=1e-12, msg=n)
