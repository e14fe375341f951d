"""The fused SAB-LSTM sequence (csrc/sab_lstm.cpp) against its twin, the per-step module, and the state that
belongs to the call: chunks, threads, deepcopy, graph lifetime, autocast, empty inputs, bad arguments.

Every test names backend="cpu": conftest sets TRITON_INTERPRET=1, so "auto" would run the Triton interpreter
(and the per-step path).
"""

import copy
import gc
import itertools
import os
import subprocess
import sys
import threading
import weakref

import pytest
import torch

from sab_kernels.kernels import sab_lstm_fused
from sab_kernels.nn import SABLSTM, SABState
from sab_kernels.testing import BACKWARD_TOL, FORWARD_TOL

BACKEND = "cpu"
DENSE = None


def make(path, k_top=3, k_att=1, k_trunc=5, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return SABLSTM(3, 6, k_top, k_att, k_trunc, attn_dim=5, backend=BACKEND, path=path, **kw).to(dtype)


def run(core, x, hx=None, seed=1, loss_of=None):
    """Forward, a random weighting of every output (and of h_n, c_n), backward. Returns the results and the
    gradients of the parameters, x and the initial state."""
    out, state = core(x, hx)
    g = torch.Generator().manual_seed(seed)
    if loss_of is None:
        loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
        loss = loss + (state.h * torch.randn(state.h.shape, generator=g, dtype=out.dtype)).sum() + 0.5 * state.c.sum()
    else:
        loss = loss_of(out, state)
    core.zero_grad()
    loss.backward()
    # The per-step path leaves None where no gradient arrives, the fused path zeros (as nn.LSTM does).
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in core.named_parameters()}
    inputs = [x] + ([t for t in hx] if hx is not None else [])
    grads.update({f"input{i}": t.grad.clone() for i, t in enumerate(inputs) if t.grad is not None})
    return out.detach(), state.h.detach(), state.c.detach(), grads


def assert_same(a, b, atol, rtol):
    for name, ta, tb in zip(("out", "h_n", "c_n"), a[:3], b[:3]):
        torch.testing.assert_close(ta, tb, atol=atol, rtol=rtol, msg=name)
    assert a[3].keys() == b[3].keys()
    for name in a[3]:
        torch.testing.assert_close(a[3][name], b[3][name], atol=atol, rtol=rtol, msg=name)


GRID = list(itertools.product([0, 1, 3, DENSE], [1, 2, 3], [1, 2, 5, None]))


@pytest.mark.parametrize("k_top, k_att, k_trunc", GRID, ids=[f"top{a}-att{b}-trunc{c}" for a, b, c in GRID])
def test_fused_equals_per_step_float64(k_top, k_att, k_trunc):
    x = torch.randn(13, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    fused = run(make("fused", k_top, k_att, k_trunc), x)
    x.grad = None
    step = run(make("step", k_top, k_att, k_trunc), x)
    assert_same(fused, step, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("k_top, k_att, k_trunc", [(3, 2, 5), (1, 1, 2), (DENSE, 1, None), (0, 1, 5)])
def test_fused_equals_per_step_float32(k_top, k_att, k_trunc):
    (fwd, _), (grad, _) = FORWARD_TOL[torch.float32], BACKWARD_TOL[torch.float32]
    x = torch.randn(21, 4, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    fused = run(make("fused", k_top, k_att, k_trunc, torch.float32), x)
    x.grad = None
    step = run(make("step", k_top, k_att, k_trunc, torch.float32), x)
    torch.testing.assert_close(fused[0], step[0], atol=fwd, rtol=fwd)
    assert_same(fused, step, atol=grad, rtol=grad)


@pytest.mark.parametrize("hx_given", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("T", [1, 9])
def test_fused_equals_per_step_batch_first_hx_and_short(hx_given, batch_first, T):
    g = torch.Generator().manual_seed(4)
    shape = (3, T, 3) if batch_first else (T, 3, 3)
    x = torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True)
    results = []
    for path in ("fused", "step"):
        hx = None
        if hx_given:
            hx = tuple(torch.randn(1, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
                       for _ in range(2))
        x.grad = None
        results.append(run(make(path, 2, 1, 2, batch_first=batch_first), x, hx))
    assert_same(*results, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("part", ["last-step", "h_n-only", "c_n-only", "summaries-only"])
def test_fused_equals_per_step_through_part_of_the_outputs(part):
    losses = {
        "last-step": lambda out, st: out[-1].square().sum(),
        "h_n-only": lambda out, st: st.h.sum(),
        "c_n-only": lambda out, st: st.c.sum(),
        "summaries-only": lambda out, st: out[..., 6:].sum(),
    }
    x = torch.randn(15, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    fused = run(make("fused", 2, 1, 3), x, loss_of=losses[part])
    x.grad = None
    step = run(make("step", 2, 1, 3), x, loss_of=losses[part])
    assert_same(fused, step, atol=1e-10, rtol=1e-10)


def test_fused_backward_twice_with_retain_graph():
    core = make("fused", 2, 1, 3)
    x = torch.randn(11, 2, 3, dtype=torch.float64)
    out, _ = core(x)
    out.sum().backward(retain_graph=True)
    once = {n: p.grad.clone() for n, p in core.named_parameters()}
    out.sum().backward()
    for n, p in core.named_parameters():
        torch.testing.assert_close(p.grad, 2 * once[n], msg=n)


def test_fused_visits_exactly_the_steps_gradient_reaches():
    """Loss on the last step only: the fused backward replays the steps that the per-step module's autograd
    reaches (its trace says which), for some batch row, and no other."""
    torch.manual_seed(0)
    T, B, k_trunc = 60, 1, 2
    step = make("step", 1, 1, k_trunc)
    hx = tuple(torch.randn(1, B, 6, dtype=torch.float64) for _ in range(2))
    x = torch.randn(T, B, 3, dtype=torch.float64)
    trace = []
    out, _ = step(x, hx, trace=trace)
    for tr in trace:
        tr["h_hat"].retain_grad()
    out[-1].sum().backward()
    reached = {t for t, tr in enumerate(trace) if tr["h_hat"].grad is not None and tr["h_hat"].grad.abs().sum() > 0}

    fused = make("fused", 1, 1, k_trunc)
    stats = {}
    mem = fused.memory
    out, h, c, *_ = sab_lstm_fused.sequence(
        x, hx[0][0], hx[1][0], hx[0][0].unsqueeze(1), None, (fused.weight_ih, fused.weight_hh, fused.bias_ih, fused.bias_hh),
        (mem.query_proj.weight, mem.query_proj.bias, mem.key_proj.weight, mem.score_weight), 1, 1, k_trunc, stats=stats,
    )
    out[-1].sum().backward()
    assert stats["steps"] == T
    assert stats["steps_visited"] == len(reached) < T


def _train_grads(core, x):
    out, st = core(x)
    core.zero_grad()
    (out.square().sum() + st.c.sum()).backward()
    return [out.detach()] + [p.grad.clone() for p in core.parameters()]


def test_fused_is_deterministic_run_to_run():
    x = torch.randn(40, 5, 3, generator=torch.Generator().manual_seed(7))
    a = _train_grads(make("fused", 3, 2, 5, torch.float32), x)
    b = _train_grads(make("fused", 3, 2, 5, torch.float32), x)
    for ta, tb in zip(a, b):
        assert torch.equal(ta, tb)


def test_fused_is_bitwise_equal_for_one_and_two_threads(tmp_path):
    """In a fresh interpreter per thread count (torch's thread pool is set once per process)."""
    script = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[1]));"
        "from sab_kernels.nn import SABLSTM;"
        "torch.manual_seed(0); core = SABLSTM(16, 32, 5, 2, 5, backend='cpu', path='fused');"
        "x = torch.randn(64, 16, 16); out, st = core(x); (out.square().sum() + st.c.sum()).backward();"
        "torch.save([out.detach()] + [p.grad for p in core.parameters()], sys.argv[2])"
    )
    results = []
    for threads in (1, 2):
        path = tmp_path / f"threads{threads}.pt"
        subprocess.run([sys.executable, "-c", script, str(threads), str(path)], check=True)
        results.append(torch.load(path))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", ["fused", "step"])
@pytest.mark.parametrize("k_top, k_att, k_trunc", [(2, 2, 3), (0, 1, 4), (DENSE, 3, None)])
def test_chunked_run_equals_the_whole_sequence(path, k_top, k_att, k_trunc):
    """forward(x2, state) continues forward(x1): outputs and every gradient equal the unchunked run, the
    gradient that a later chunk sends into the memory reaching the earlier chunk (sparse replay)."""
    x = torch.randn(23, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    whole = make(path, k_top, k_att, k_trunc)
    want = _train_grads(whole, x)
    chunked = make(path, k_top, k_att, k_trunc)
    out1, st = chunked(x[:10])
    out2, st = chunked(x[10:17], st)
    out3, st = chunked(x[17:], st)
    assert isinstance(st, SABState) and st.step == 23
    out = torch.cat([out1, out2, out3])
    chunked.zero_grad()
    (out.square().sum() + st.c.sum()).backward()
    got = [out.detach()] + [p.grad.clone() for p in chunked.parameters()]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_state_detach_carries_the_memory_without_gradient():
    core = make("fused", 2, 1, 3)
    x = torch.randn(8, 2, 3, dtype=torch.float64)
    _, st = core(x)
    st = st.detach()
    assert not st.memory.requires_grad and st.memory.shape == (2, 9, 6)
    out, st2 = core(x, st)
    out.sum().backward()
    assert st2.step == 16 and st2.memory.shape == (2, 17, 6)


@pytest.mark.parametrize("path", ["fused", "step"])
def test_one_module_from_two_threads(path):
    core = make(path, 3, 1, 4, torch.float32)
    xs = [torch.randn(30, 3, 3, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    with torch.no_grad():
        want = [core(x)[0] for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(3):
            with torch.no_grad():
                got[i] = core(xs[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", ["fused", "step"])
def test_deepcopy_after_a_training_forward(path):
    core = make(path, 2, 1, 3)
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    out, st = core(x)
    clone = copy.deepcopy(core)
    out.sum().backward()  # the original's graph still works
    with torch.no_grad():
        torch.testing.assert_close(clone(x)[0], core(x)[0])
    copy.deepcopy(st.detach())  # and the state, cut from the graph (as for any non-leaf tensor)


@pytest.mark.parametrize("path", ["fused", "step"])
def test_the_graph_dies_with_the_outputs(path):
    core = make(path, 2, 1, 3)
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    alive = weakref.ref(x)
    out, st = core(x)  # the graph saves x
    del x, out, st
    gc.collect()
    assert alive() is None, "the module kept the last forward's graph alive"
    assert not [n for n, v in vars(core).items() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("path", ["fused", "step"])
def test_autocast_bfloat16_runs_forward_and_backward(path):
    core = make(path, 2, 2, 3, torch.float32)
    x = torch.randn(10, 2, 3)
    with torch.no_grad():
        want = core(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, st = core(x)
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in core.parameters())
    torch.testing.assert_close(out.float(), want, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("path", ["fused", "step"])
@pytest.mark.parametrize("T, B", [(0, 3), (5, 0), (0, 0)], ids=["T=0", "B=0", "both"])
def test_empty_sequence_or_batch_returns_empty_outputs(path, T, B):
    """Shapes as nn.LSTM gives them (which itself refuses T = 0): out (T, B, 2H), h_n and c_n (1, B, H)."""
    core = make(path, 2, 1, 3, torch.float32)
    out, (h, c) = core(torch.randn(T, B, 3))
    assert out.shape == (T, B, 12) and h.shape == c.shape == (1, B, 6)
    if B == 0:
        ref, (rh, rc) = torch.nn.LSTM(3, 6)(torch.randn(5, 0, 3))
        assert rh.shape == h.shape


def test_bad_arguments_name_themselves():
    with pytest.raises(TypeError, match="k_top"):
        SABLSTM(3, 6, k_top=2.0)
    with pytest.raises(ValueError, match="k_att"):
        SABLSTM(3, 6, k_att=0)
    with pytest.raises(ValueError, match="k_trunc"):
        SABLSTM(3, 6, k_trunc=-3)
    with pytest.raises(ValueError, match="path"):
        SABLSTM(3, 6, path="fast")
    core = make("auto", 2, 1, 3, torch.float32)
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, B, H\) = \(1, 2, 6\)"):
        core(torch.randn(4, 2, 3), (torch.zeros(1, 3, 6), torch.zeros(1, 3, 6)))
    with pytest.raises(ValueError, match="input_size"):
        core(torch.randn(4, 2, 5))
    with pytest.raises(RuntimeError, match="fused"):
        SABLSTM(3, 6, backend="reference", path="fused")(torch.randn(4, 2, 3))


def test_auto_picks_the_fused_path_on_cpu_and_the_step_path_otherwise():
    x = torch.randn(4, 2, 3)
    assert SABLSTM(3, 6, backend="cpu").uses_fused_path(x)
    assert not SABLSTM(3, 6, backend="reference").uses_fused_path(x)
    assert not SABLSTM(3, 6, backend="cpu", path="step").uses_fused_path(x)
    assert not SABLSTM(3, 6, backend="cpu").uses_fused_path(x.bfloat16())
    assert not SABLSTM(3, 6, backend="cpu").uses_fused_path(x, trace=[])


@pytest.mark.parametrize("path", ["fused", "step"])
def test_double_backward_raises_clearly(path):
    """Neither path can differentiate its backward (the per-step mailbox carries no graph): a clear error,
    never a silently wrong zero (a gradient penalty through the module)."""
    core = make(path, 2, 1, 3)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = core(x)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        gx.sum().backward()


def test_aten_gemm_fallback_matches_blas(tmp_path):
    """The fused kernels call BLAS directly where torch exports it, ATen otherwise: the same results."""
    script = (
        "import sys, torch; from sab_kernels.nn import SABLSTM;"
        "torch.manual_seed(0); core = SABLSTM(4, 8, 3, 2, 3, backend='cpu', path='fused').double();"
        "x = torch.randn(20, 3, 4, dtype=torch.float64); out, st = core(x); out.square().sum().backward();"
        "torch.save([out.detach()] + [p.grad for p in core.parameters()], sys.argv[1])"
    )
    results = []
    for i, env in enumerate(({}, {"SAB_KERNELS_ATEN_GEMM": "1"})):
        path = str(tmp_path / f"out{i}.pt")
        subprocess.run([sys.executable, "-c", script, path], check=True, env={**os.environ, **env})
        results.append(torch.load(path))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_per_step_forward_makes_no_host_sync(monkeypatch):
    """On a GPU every .item()/.tolist()/bool()/int() of a tensor waits for the device: the per-step forward
    makes none (the sparse-replay backward reads each step's selected slots once, and only there)."""
    core = make("step", 3, 2, 4, torch.float32)
    x = torch.randn(24, 2, 3)
    calls = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    out, st = core(x)
    forward_calls = list(calls)
    out.sum().backward()
    assert forward_calls == [], f"host syncs in the forward: {forward_calls}"
    assert 0 < calls.count("tolist") <= x.shape[0]  # the backward: at most one per step (sparse replay)
