"""The fused SAB-LSTM sequence in Triton (kernels/sab_lstm_triton*.py), in the interpreter on CPU tensors (conftest
sets TRITON_INTERPRET=1): equal to the C++ fused path and to the per-step path, bitwise run to run, one launch
per forward and one per backward whatever T, no host sync, chunked runs equal whole ones, routing, and
torch.compile. The shapes are small: the interpreter runs one program after another on numpy.

Tests whose name ends in `_vs_cpu_kernels` need the compiled C++ extension; the Triton version matrix (which
does not build it) deselects them with -k.
"""

import pytest
import torch

from sab_kernels.kernels import sab_lstm_fused
from sab_kernels.nn import SABLSTM
from sab_kernels.testing import BACKWARD_TOL, FORWARD_TOL

GRID = [(3, 1, 5), (1, 2, 2), (0, 1, 5), (2, 3, None), (4, 1, 1)]
IDS = [f"top{a}-att{b}-trunc{c}" for a, b, c in GRID]


def make(path, backend, k_top=3, k_att=1, k_trunc=5, dtype=torch.float64, H=6):
    torch.manual_seed(0)
    return SABLSTM(3, H, k_top, k_att, k_trunc, attn_dim=5, backend=backend, path=path).to(dtype)


def run(core, x, hx=None, seed=1):
    """Forward, a random weighting of every output and of h_n, c_n, backward: outputs and every gradient."""
    x = x.clone().requires_grad_(True)
    out, state = core(x, hx)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + (state.h * 0.5).sum() + state.c.sum()
    core.zero_grad()
    loss.backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in core.parameters()]
    return [out.detach(), state.h.detach(), state.c.detach(), x.grad] + grads


def assert_all_close(a, b, tol):
    for i, (u, v) in enumerate(zip(a, b)):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol, msg=f"item {i}")


def data(T, B=2, dtype=torch.float64, seed=2):
    return torch.randn(T, B, 3, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("k_top, k_att, k_trunc", GRID, ids=IDS)
def test_triton_fused_equals_the_per_step_path_float64(k_top, k_att, k_trunc):
    x = data(11)
    fused = make("fused", "triton", k_top, k_att, k_trunc)
    assert fused.uses_fused_path(x)
    assert_all_close(run(fused, x), run(make("step", "reference", k_top, k_att, k_trunc), x), 1e-10)


@pytest.mark.parametrize("k_top, k_att, k_trunc", GRID[:3], ids=IDS[:3])
def test_triton_fused_equals_the_fused_path_vs_cpu_kernels(k_top, k_att, k_trunc):
    x = data(13)
    assert_all_close(run(make("fused", "triton", k_top, k_att, k_trunc), x), run(make("fused", "cpu", k_top, k_att, k_trunc), x),
                     1e-10)


@pytest.mark.parametrize("other", [("step", "reference"), ("fused", "cpu")], ids=["per_step", "fused_vs_cpu_kernels"])
def test_triton_fused_float32_within_the_op_tolerances(other):
    """float32 over 21 steps. A well-conditioned case: with k_top = 1 the sparsifier's 1 / (s_1 - tau) makes
    gradients differ at 1e-3 between any two float32 implementations (tanh and sums rounded differently)."""
    x = torch.randn(21, 4, 3, generator=torch.Generator().manual_seed(3))
    got = run(make("fused", "triton", 3, 2, 5, torch.float32), x)
    want = run(make(*other, 3, 2, 5, torch.float32), x)
    (fwd, _), (bwd, _) = FORWARD_TOL[torch.float32], BACKWARD_TOL[torch.float32]
    assert_all_close(got[:3], want[:3], fwd)
    assert_all_close(got[3:], want[3:], bwd)


def test_triton_fused_is_bitwise_equal_run_to_run():
    x = data(9)
    a, b = run(make("fused", "triton", 2, 1, 3), x), run(make("fused", "triton", 2, 1, 3), x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_triton_fused_chunks_equal_the_whole_sequence_with_the_state():
    x = data(14)
    core = make("fused", "triton", 2, 2, 3)
    want = run(core, x)
    out1, st = core(x[:6])
    out2, st = core(x[6:], st)
    torch.testing.assert_close(torch.cat([out1, out2]).detach(), want[0], atol=1e-12, rtol=1e-12)
    assert st.step == 14 and st.memory.shape == (2, 8, 6)


def _count_launches(monkeypatch):
    from triton.runtime import interpreter

    launches = []
    original = interpreter.GridExecutor.__call__

    def counted(self, *args, **kwargs):
        launches.append(getattr(self.fn, "__name__", str(self.fn)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.GridExecutor, "__call__", counted)
    return launches


@pytest.mark.parametrize("T", [4, 15])
def test_one_launch_each_way_and_no_host_sync_whatever_T(monkeypatch, T):
    """A call is one forward launch and one backward launch (plus GEMMs), for any T; neither makes a host sync
    (every .item()/.tolist()/bool()/int()/float() of a tensor would wait for a GPU)."""
    core = make("fused", "triton", 2, 1, 3, torch.float32)
    x = data(T, dtype=torch.float32)
    from sab_kernels.bench.gpu_check.model import count_host_syncs  # the GPU check's own counter

    launches = _count_launches(monkeypatch)
    with count_host_syncs("cpu") as reads:  # on CPU: every host read of tensor data, which a GPU would wait on
        out, state = core(x)
        forward_launches = len(launches)
        (out.sum() + state.c.sum()).backward()
    monkeypatch.undo()
    assert forward_launches == 1 and len(launches) == 2, launches
    assert reads["python_reads"] == 0, reads


def test_routing_and_the_reasons_given():
    x = data(5)
    assert not make("auto", "triton").uses_fused_path(x)  # CPU tensors: the interpreter only when asked for
    assert not make("fused", "triton", k_top=None).path == "auto"
    with pytest.raises(RuntimeError, match="dense attention"):
        make("fused", "triton", k_top=None).uses_fused_path(x)
    with pytest.raises(RuntimeError, match="float32 parameters"):
        make("fused", "triton", dtype=torch.bfloat16).uses_fused_path(x.bfloat16())
    with pytest.raises(RuntimeError, match="float32 and float64"):
        make("fused", "triton").uses_fused_path(x.to(torch.int32))
    assert sab_lstm_fused.unsupported_reason(x, "triton", 3) is None
    assert "dense" in sab_lstm_fused.unsupported_reason(x, "triton", None)


def test_torch_compile_fullgraph_traces_the_triton_fused_path():
    """The same sab:: custom ops, with backend='triton': fullgraph compiles, and equals eager."""
    core = make("fused", "triton", 2, 1, 3)
    x = data(7)
    compiled = torch.compile(core, fullgraph=True)
    results = []
    for fn in (compiled, core):
        xx = x.clone().requires_grad_(True)
        out, st = fn(xx)
        core.zero_grad()
        (out.square().sum() + st.c.sum()).backward()
        results.append([out.detach(), xx.grad] + [p.grad.clone() for p in core.parameters()])
    assert_all_close(results[0], results[1], 1e-10)


def test_fused_kernels_compile_for_hopper_and_spill_nothing_at_h128():
    """ptxas for sm_90 (no GPU needed) at the tile sizes the host picks for a GPU: float32 at H = D = 128
    spills no register in either kernel."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    script = ("from sab_kernels.bench.triton_registers import report; import json; "
              "print(json.dumps(report(['fp32'], [128])))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {r["kernel"] for r in rows} == {"forward", "backward"}
    for r in rows:
        assert r["local_bytes"] == 0 and r["stack_bytes"] == 0, r  # spilled registers would live there


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_inputs_run_with_float32_state_and_accumulation(half):
    """bfloat16/float16 inputs into float32 parameters: upcast once, then exactly the float32 computation."""
    core = make("fused", "triton", 2, 1, 3, torch.float32)
    x = data(6, dtype=torch.float32).to(half)
    assert core.uses_fused_path(x)
    with torch.no_grad():
        out, st = core(x)
        want, _ = core(x.float())
    assert out.dtype == torch.float32 and st.memory.dtype == torch.float32
    assert torch.equal(out, want)
