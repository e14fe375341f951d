"""The sequence state (SABState and its slot buffers) as people use it: streaming one step per call, chunks
that append instead of copying, branches, threads, deepcopy, torch.save, the `repackage_hidden` idiom,
concurrent backward passes, mismatched states, stale keys after an optimizer step, and torch.compile.

Every test names backend="cpu": conftest sets TRITON_INTERPRET=1, so "auto" would run the Triton interpreter.
"""

import copy
import threading

import pytest
import torch

from sab_kernels.kernels.slot_buffers import SlotBuffers
from sab_kernels.nn import SABLSTM, SABState

PATHS = ["fused", "step"]


def make(path, k_top=2, k_att=1, k_trunc=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return SABLSTM(3, 6, k_top, k_att, k_trunc, attn_dim=5, backend="cpu", path=path).to(dtype)


def data(T, B=2, seed=1, dtype=torch.float64):
    return torch.randn(T, B, 3, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("k_att", [1, 3])
def test_streaming_one_step_per_call_equals_one_call_and_appends_in_place(path, k_att):
    core = make(path, k_att=k_att)
    x = data(40)
    with torch.no_grad():
        whole, whole_state = core(x)
        state, outs, buffers = None, [], set()
        for t in range(x.shape[0]):
            out, state = core(x[t : t + 1], state)
            outs.append(out)
            buffers.add(id(state._slots))
    # Not bitwise: the input GEMM of one step and of 40 steps may block (and round) differently.
    torch.testing.assert_close(torch.cat(outs), whole, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(state.memory, whole_state.memory, atol=1e-12, rtol=1e-12)
    assert state.step == 40
    # Geometric growth: a handful of reallocations for 40 / k_att slots, not one per call.
    assert len(buffers) <= 3, len(buffers)


def test_a_continuing_call_never_recomputes_an_earlier_key(monkeypatch):
    core = make("fused")
    x = data(30)
    with torch.no_grad():
        _, state = core(x[:20])
        written = []
        original = SlotBuffers.write_keys
        monkeypatch.setattr(SlotBuffers, "write_keys", lambda self, j0, j1, w: (written.append((j0, j1)), original(self, j0, j1, w)))
        _, state = core(x[20:], state)
    assert written == [] and state.memory.shape[1] == 31  # the C++ path wrote the 10 new keys itself


@pytest.mark.parametrize("path", PATHS)
def test_chunks_share_the_buffers_and_the_backward_saves_views(path):
    """Chunks with the graph kept: each chunk's memory is the same storage, appended in place, and the gradient
    of the whole chunked run equals the whole run's."""
    x = data(24)
    whole = make(path)
    out, st = whole(x)
    whole.zero_grad()
    (out.square().sum() + st.c.sum()).backward()
    want = [p.grad.clone() for p in whole.parameters()]
    core = make(path)
    outs, st, storages = [], None, set()
    for j in range(0, 24, 4):
        out, st = core(x[j : j + 4], st)
        outs.append(out)
        storages.add(st.memory.untyped_storage().data_ptr())
    assert len(storages) <= 2  # at most one reallocation (the first call sized the buffers to its own slots)
    core.zero_grad()
    (torch.cat(outs).square().sum() + st.c.sum()).backward()
    for a, b in zip([p.grad for p in core.parameters()], want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def _continue(core, x, state):
    out, st = core(x, state)
    core.zero_grad()
    (out.square().sum() + st.h.sum()).backward()
    return [out.detach()] + [p.grad.clone() for p in core.parameters()]


@pytest.mark.parametrize("path", PATHS)
def test_two_branches_of_one_state_both_stay_exact(path):
    core = make(path)
    x, xa, xb = data(10), data(6, seed=2), data(7, seed=3)
    with torch.no_grad():
        _, state = core(x)
    state = state.detach()
    want_a = _continue(core, xa, SABState(*state, state.memory.clone(), state.step))  # own buffers: no sharing
    want_b = _continue(core, xb, SABState(*state, state.memory.clone(), state.step))
    got_a = _continue(core, xa, state)  # appends in place
    got_b = _continue(core, xb, state)  # must not see branch a's slots: copies the prefix
    got_a2 = _continue(core, xa, state)
    for got, want in ((got_a, want_a), (got_b, want_b), (got_a2, want_a)):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_threads_continuing_one_state_each_get_their_own_slots(path):
    core = make(path, dtype=torch.float32)
    with torch.no_grad():
        _, state = core(data(12, dtype=torch.float32))
        xs = [data(9, seed=s, dtype=torch.float32) for s in range(4)]
        want = [core(x, state)[0] for x in xs]  # one after another: each a branch of the same state
    got = [None] * len(xs)

    def work(i):
        for _ in range(5):
            with torch.no_grad():
                got[i] = core(xs[i], state)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_a_deepcopied_state_continues_independently(path):
    core = make(path)
    with torch.no_grad():
        _, state = core(data(10))
        twin = copy.deepcopy(state)
        a, _ = core(data(5, seed=4), state)
        b, _ = core(data(5, seed=5), twin)
        c, _ = core(data(5, seed=5), SABState(*state, state.memory.clone(), state.step))
    assert twin._slots is not state._slots and torch.equal(b, c) and not torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_repackage_hidden_idiom_keeps_the_memory(path):
    """`tuple(v.detach() for v in state)` (PyTorch's word-language-model idiom) continues exactly as
    `state.detach()` does; `h, c = state` still unpacks; another module given the same (h, c) starts afresh."""
    core = make(path)
    x1, x2 = data(11), data(8, seed=2)
    _, state = core(x1)
    h, c = state
    assert h.shape == c.shape == (1, 2, 6)
    want = _continue(core, x2, state.detach())
    got = _continue(core, x2, tuple(v.detach() for v in state))
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    other = make(path, seed=0)  # equal weights, but not the module that returned the state: nn.LSTM semantics
    fresh = _continue(other, x2, SABState(h.detach(), c.detach()))
    plain = _continue(other, x2, (h.detach(), c.detach()))
    for g, w in zip(plain, fresh):
        assert torch.equal(g, w)


@pytest.mark.parametrize("path", PATHS)
def test_a_saved_state_loads_with_weights_only_and_continues_exactly(path, tmp_path):
    core = make(path)
    with torch.no_grad():
        _, state = core(data(13))
        torch.save(state, tmp_path / "state.pt")
        loaded = torch.load(tmp_path / "state.pt", weights_only=True)
        assert isinstance(loaded, SABState) and loaded.step == 13
        assert torch.equal(loaded.memory, state.memory)
        x = data(6, seed=7)
        torch.testing.assert_close(core(x, loaded)[0], core(x, state)[0], atol=1e-12, rtol=1e-12)


def _state(B=2, H=6, n=4, step=3, dtype=torch.float64, **over):
    fields = dict(h=torch.zeros(1, B, H, dtype=dtype), c=torch.zeros(1, B, H, dtype=dtype),
                  memory=torch.zeros(B, n, H, dtype=dtype), step=step)
    fields.update(over)
    return SABState(fields["h"], fields["c"], fields["memory"], fields["step"])


BAD_STATES = {
    "memory dtype": (_state(memory=torch.zeros(2, 4, 6, dtype=torch.float32)), TypeError, r"hx.memory must have h0's dtype"),
    "h dtype": (_state(dtype=torch.float32), TypeError, r"hx: h0 must have x's dtype torch.float64"),
    "h batch": (_state(B=3), ValueError, r"hx: h0 must have shape \(1, B, H\) = \(1, 2, 6\)"),
    "memory batch": (_state(memory=torch.zeros(3, 4, 6, dtype=torch.float64)), ValueError, r"hx.memory must have shape \(B, n, H\) = \(2, n >= 1, 6\)"),
    "memory empty": (_state(n=0), ValueError, r"hx.memory must have shape"),
    "negative step": (_state(step=0), ValueError, r"hx.step must be an int >= 0"),
    "device": (_state(memory=torch.zeros(2, 4, 6, dtype=torch.float64, device="meta")), ValueError, r"hx.memory must be on x's device cpu"),
    "not a pair": ((torch.zeros(1, 2, 6),), TypeError, r"hx must be \(h0, c0\) or an SABState"),
}
BAD_STATES["negative step"][0].step = -1


@pytest.mark.parametrize("case", list(BAD_STATES))
def test_a_state_that_does_not_fit_gets_the_same_clear_error_on_both_paths(case):
    hx, error, message = BAD_STATES[case]
    seen = []
    for path in PATHS:
        with pytest.raises(error, match=message) as info:
            make(path)(data(4), hx)
        seen.append(str(info.value))
    assert seen[0] == seen[1]


@pytest.mark.parametrize("path", PATHS)
def test_concurrent_backward_passes_over_one_graph_are_exact(path):
    """Two threads running autograd.grad(..., retain_graph=True) over one graph at once (PyTorch supports it):
    each gets the single-threaded gradients (one mailbox share per pass, not one per sequence)."""
    core = make(path, k_top=2, k_att=1, k_trunc=4)
    x = data(40, B=3)
    out, _ = core(x)
    params = list(core.parameters())
    losses = [(out * torch.randn(out.shape, generator=torch.Generator().manual_seed(s), dtype=out.dtype)).sum()
              for s in range(2)]
    want = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses]
    got, errors = {}, []
    barrier = threading.Barrier(2)

    def work(i):
        try:
            barrier.wait()
            for r in range(6):
                got[(i, r)] = torch.autograd.grad(losses[i], params, retain_graph=True)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (i, _), grads in got.items():
        for g, w in zip(grads, want[i]):
            assert torch.equal(g, w)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("how", ["optimizer", "data"])
def test_keys_are_recomputed_when_the_key_weights_change(path, how):
    """A continuation after W_m changed (an optimizer step, or a write through .data that bypasses the version
    counter) scores with the new keys, as a state with no cached keys does."""
    core = make(path)
    with torch.no_grad():
        _, state = core(data(9))
    with torch.no_grad():
        if how == "optimizer":
            core.memory.key_proj.weight.add_(0.1)
        else:
            core.memory.key_proj.weight.data.add_(0.1)
    x = data(5, seed=3)
    with torch.no_grad():
        got = core(x, state)[0]
        want = core(x, SABState(*state, state.memory.clone(), state.step))[0]
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_paths_continue_each_others_states(path):
    other = "step" if path == "fused" else "fused"
    x = data(16)
    with torch.no_grad():
        want = make(path)(x)[0]
        _, state = make(other)(x[:7])
        rest, _ = make(path)(x[7:], state)
    torch.testing.assert_close(rest, want[7:], atol=1e-12, rtol=1e-12)


def test_a_memory_whose_rows_are_more_than_2_31_elements_apart():
    """B = 1, D = 65536 and 32,768 carried slots: the key buffer's row stride passes 2^31 elements, past what
    Fortran BLAS can take (the C++ path then takes ATen). All slots hold 3, so the summary is 3; the slot the
    C++ forward writes at step 0 (its key lands 2^31 elements past the row start) must carry W_m h exactly.
    About 9 GB and 20 s: the size is the point."""
    D, n = 65536, 32768
    core = SABLSTM(1, 1, None, 1, None, attn_dim=D, backend="cpu", path="fused")
    with torch.no_grad():
        for p in (core.weight_ih, core.weight_hh, core.bias_ih, core.bias_hh):
            p.zero_()
        core.bias_ih[3].fill_(-1e4)  # output gate closed: h_hat = 0 exactly, so h = 0 + summary
    with torch.inference_mode():
        state = SABState(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), torch.full((1, n, 1), 3.0), 0)
        out, st = core(torch.zeros(2, 1, 1), state)
        keys = st._slots.keys
        assert keys.stride(0) > 2**31
        # float32 sums of 32,769 weights round to about 1e-4; the failure this guards against gave 0.
        torch.testing.assert_close(out[:, 0, 1], torch.full((2,), 3.0), atol=1e-3, rtol=0)
        assert torch.equal(keys[0, n], core.memory.key_proj.weight[:, 0] * out[0, 0, 0])
        del keys, st, out


def _compiled_model(path):
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = SABLSTM(3, 6, 2, 1, 3, attn_dim=5, backend="cpu", path=path)
            self.head = torch.nn.Linear(12, 4)

        def forward(self, x, hx=None):
            out, state = self.rnn(x, hx)
            return self.head(out), state

    return Model().double()


def test_torch_compile_fullgraph_traces_the_fused_path_and_equals_eager():
    """The fused sequence is a pair of sab:: custom ops: fullgraph=True (which raises on any graph break)
    compiles a model holding an SABLSTM, with no warning from Dynamo about sab_kernels, and equals eager over
    two chunks (the second continuing the first's state), forward and backward."""
    import warnings

    model = _compiled_model("fused")
    x = data(12)
    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for run in (torch.compile(model, fullgraph=True), model):
            y1, st = run(x[:8])
            y2, st = run(x[8:], st)
            model.zero_grad()
            (y1.square().sum() + y2.sum() + st.c.sum()).backward()
            results.append([y1.detach(), y2.detach(), st.memory.detach()] + [p.grad.clone() for p in model.parameters()])
    ours = [str(w.message) for w in caught if "sab_kernels" in str(w.message) or "file an issue" in str(w.message)]
    assert not ours, ours
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_the_fused_sequence_ops_pass_opcheck():
    from sab_kernels.kernels import sab_lstm_op

    torch.manual_seed(0)
    core = SABLSTM(3, 4, 2, 2, 3, attn_dim=5, backend="cpu", path="fused").double()
    m = core.memory
    x = data(7)
    h0, c0 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    memory = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    args = (x, h0, c0, memory, core.weight_ih, core.weight_hh, core.bias_ih, core.bias_hh, m.query_proj.weight,
            m.query_proj.bias, m.key_proj.weight, m.score_weight, 2, 2, 3, 1, 1e-7, "cpu")
    torch.library.opcheck(sab_lstm_op._forward_op, args)
    args0 = (x, h0, c0, None, core.weight_ih, core.weight_hh, core.bias_ih, core.bias_hh, None, None, None, None,
             0, 1, 3, 0, 1e-7, "cpu")
    torch.library.opcheck(sab_lstm_op._forward_op, args0)
