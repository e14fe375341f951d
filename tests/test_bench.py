"""The benchmark's machinery on tiny sizes: registry, verifier, timing, runner, report, CLI.

Everything runs on CPU with backend names given explicitly (conftest sets TRITON_INTERPRET=1, under which
backend="auto" would pick the Triton interpreter). torch.compile is left out: its first compile is slow.
"""

import csv
import os

import pytest
import torch

from sab_kernels.bench import report, timing
from sab_kernels.bench.baselines import dense_topk_attention
from sab_kernels.bench.registry import Impl, OpCase, implementations, op_cases
from sab_kernels.bench.runner import min_bytes, run_op
from sab_kernels.bench.verify import reference_result, verify
from sab_kernels.reference import SparseAttentionOutput, sparse_attention_reference

TINY = [OpCase("T", B=2, T=16, D=8, H=4, k_top=3), OpCase("T", B=2, T=48, D=8, H=4, k_top=3)]
FAST = timing.TimingConfig(warmup=1, min_reps=2, max_reps=3, budget_s=0.0)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared CI core, more threads only contend (and make these tests slow)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wrong_weights(query, keys, values, score_weight, k_top):
    out = sparse_attention_reference(query, keys, values, score_weight, k_top)
    return SparseAttentionOutput(out.summary, out.weights * 1.01, out.indices)


def _no_value_grad(query, keys, values, score_weight, k_top):
    return sparse_attention_reference(query, keys, values.detach(), score_weight, k_top)


def _wrong_indices(query, keys, values, score_weight, k_top):
    out = sparse_attention_reference(query, keys, values, score_weight, k_top)
    return SparseAttentionOutput(out.summary, out.weights, out.indices.flip(1))


def _cpu_impls():
    impls, _ = implementations("cpu", ["fused", "eager", "dense"])
    return impls


def test_registry_quick_and_full_cases():
    quick = op_cases("cpu", quick=True)
    assert [c.T for c in quick] == [64, 256, 1024] and all(c.sweep == "T" for c in quick)
    full = op_cases("cpu")
    assert {c.sweep for c in full} == {"T", "B", "D", "k_top", "dtype"}
    assert [c.T for c in full if c.sweep == "T"] == [64, 256, 1024, 4096, 16384, 65536]
    assert all(c.dtype == "bfloat16" for c in op_cases("cuda") if c.sweep == "T")
    assert op_cases("cpu", T_values=[32])[0].T == 32
    assert [i.name for i in _cpu_impls()] == ["fused", "eager", "dense"]
    with pytest.raises(ValueError, match="unknown implementation"):
        implementations("cpu", ["nope"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dense_baseline_matches_reference(dtype):
    case = OpCase("T", B=3, T=40, D=8, H=5, k_top=4, dtype=dtype)
    inputs = case.make_inputs("cpu")
    verdict = verify(dense_topk_attention, inputs, case.k_top)
    assert verdict.ok, verdict.message


@pytest.mark.parametrize(
    "fn, what",
    [
        pytest.param(_wrong_weights, "weights", id="weights"),
        pytest.param(_no_value_grad, "grad values", id="grad"),
        pytest.param(_wrong_indices, "indices", id="indices"),
    ],
)
def test_verifier_rejects_wrong_implementations(fn, what):
    inputs = TINY[0].make_inputs("cpu")
    expected = reference_result(inputs, 3)
    assert verify(sparse_attention_reference, inputs, 3, expected).ok
    verdict = verify(fn, inputs, 3, expected)
    assert not verdict.ok and what in verdict.message


def test_verifier_reports_a_crash():
    def crash(*args):
        raise RuntimeError("boom")

    verdict = verify(crash, TINY[0].make_inputs("cpu"), 3)
    assert not verdict.ok and "boom" in verdict.message


def test_timing_and_cpu_peak_memory():
    t = timing.time_cpu(lambda: torch.ones(1000).sum(), cfg=FAST)
    assert t.reps >= 2 and 0 < t.p25_ms <= t.median_ms <= t.p75_ms
    nbytes = 4 << 20

    def allocate_and_free():
        x = torch.empty(nbytes, dtype=torch.uint8)
        x.fill_(1)
        del x

    peak = timing.peak_memory("cpu", allocate_and_free)
    assert peak is not None and nbytes <= peak < 2 * nbytes


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="RSS high-water mark needs Linux /proc")
def test_memory_worker_measures_resident_growth():
    from sab_kernels.bench.memory import RSS_METHOD, MemoryMeter

    meter = MemoryMeter("cpu", threads=1)
    try:
        assert meter.uses_worker and meter.method == RSS_METHOD, meter.last_error
        case = OpCase("T", B=4, T=4096, D=64, H=64, k_top=3)
        eager = implementations("cpu", ["eager"])[0][0]
        peak = meter.op(case, eager, "fwd+bwd", None, None, None)
        # The eager backward materialises (B, T, D) float32 activations and dense gradients: several MiB.
        assert peak is not None and peak >= 4 * 4096 * 64 * 4
        assert meter.op(case, Impl("broken", "broken", _wrong_weights), "forward", None, None, None) is None
    finally:
        meter.close()
    assert meter.proc is None


def test_runner_and_report(tmp_path):
    impls = _cpu_impls() + [Impl("broken", "broken impl", _wrong_weights)]
    rows = run_op(TINY, impls, "cpu", FAST)
    assert len(rows) == len(TINY) * len(impls) * 3
    broken = [r for r in rows if r["impl"] == "broken"]
    assert {r["status"] for r in broken} == {"FAIL"} and all(r["median_ms"] == "" for r in broken)
    good = [r for r in rows if r["impl"] != "broken"]
    assert {r["status"] for r in good} == {"ok"}
    assert all(r["median_ms"] > 0 and r["peak_mem_mib"] != "" for r in good)

    env = report.environment("cpu")
    text, paths = report.write_all(str(tmp_path), rows, env, ["a note"])
    for impl in impls:
        assert impl.label in text
    assert "FAILED" in text and "weights" in text and "a note" in text
    assert "Time vs T, fwd+bwd" in text and "Peak memory vs T" in text
    assert "## Headline" in text
    for name in ("results.md", "results.csv", "headline.md", "time_vs_T.png", "speedup_vs_T.png", "memory_vs_T.png"):
        assert os.path.getsize(tmp_path / name) > 0, name
    with open(tmp_path / "results.csv") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("# date (UTC):") and any(l.startswith("# torch: ") for l in lines)
    table = list(csv.DictReader(l for l in lines if not l.startswith("#")))
    assert len(table) == len(rows) and {r["impl"] for r in table} == {i.name for i in impls}


def test_min_bytes_counts_keys_once():
    case = OpCase("T", B=2, T=100, D=8, H=4, k_top=3)
    assert min_bytes(case, "forward") >= 4 * 2 * 100 * 8
    assert min_bytes(case, "fwd+bwd") == min_bytes(case, "forward") + min_bytes(case, "backward")


def test_cli_end_to_end(tmp_path, capsys):
    from sab_kernels.bench import main

    rc = main(["--quick", "--device", "cpu", "--threads", "1", "--T", "16", "--impls", "fused,eager,dense", "--sections", "op,overhead",
               "--out", str(tmp_path), "--no-plots"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| T |" in out and "dense topk" in out and "Per-call overhead" in out
    assert (tmp_path / "results.csv").exists() and (tmp_path / "results.md").exists()


def test_lstm_state_rows_streaming_and_chunked(one_thread, tmp_path):
    """The streaming and chunked rows of `make bench-lstm` at toy sizes: every model has a row, the table and
    the verdicts are written (the ratios themselves are measured, never asserted)."""
    from sab_kernels.bench import lstm_state

    rows = lstm_state.streaming(8, 2, 8, ("nn.LSTM", "SAB fused", "SAB per-step"))
    rows += lstm_state.chunked(16, 2, 8, 4, ("SAB fused",), threads=1)
    assert [r["model"] for r in rows] == ["nn.LSTM", "SAB fused", "SAB per-step", "SAB fused"]
    assert all(r["ratio"] > 0 for r in rows)
    text = lstm_state.write(rows, str(tmp_path), "# header")
    assert "one step per call" in text and "chunked" in text and "SAB fused streaming" in text
    assert (tmp_path / "lstm_state.csv").read_text().count("\n") == 5


def test_lstm_bounded_rows_table_and_verdicts(one_thread):
    """The bounded-memory rows of `make bench-lstm` at toy lengths: every model has its train, infer and peak
    cells (the unbounded SAB only up to unbounded_max_T), and the verdicts name the targets (the ratios are
    measured, never asserted)."""
    from sab_kernels.bench import lstm_bounded, timing

    rows = lstm_bounded.run((8, 16), timing.QUICK, threads=1, unbounded_max_T=8)
    assert [(r["T"], r["model"]) for r in rows] == [(8, "nn.LSTM"), (8, "SAB"), (8, lstm_bounded.BOUNDED),
                                                     (16, "nn.LSTM"), (16, lstm_bounded.BOUNDED)]
    assert all(r["train_ms"] > 0 and r["infer_ms"] > 0 and r["peak_MiB"] >= 0 for r in rows)
    text = lstm_bounded.table(rows)
    assert text.count("\n") == 1 + len(rows) and "x)" in text
    verdicts = lstm_bounded.verdicts(rows, (8, 16))
    assert len(verdicts) == 4 and all(("met" in v) for v in verdicts)
