"""The GPU check (`python -m sab_kernels.bench.gpu_check`) end to end in its CPU mode, and its pieces on
hand-made inputs: the verdicts, the JUnit counts, the host-sync counter."""

import os
import subprocess
import sys

import pytest
import torch

from sab_kernels.bench.gpu_check import cli
from sab_kernels.bench.gpu_check.config import cpu_config, gpu_config
from sab_kernels.bench.gpu_check.model import count_host_syncs, device_event_ms
from sab_kernels.bench.gpu_check.tests import _junit_counts
from sab_kernels.bench.gpu_check.verdicts import judge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_mode_end_to_end(tmp_path):
    """Every step at tiny sizes in a subprocess (TRITON_INTERPRET=1 set by --cpu); report, CSV and PNGs written."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # --cpu must set it itself
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "sab_kernels.bench.gpu_check", "--cpu", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = (tmp_path / "report.md").read_text()
    assert "**Result: PASS**" in report
    for section in ("## Steps", "## GPU targets", "## tests", "## benchmark", "## sab-lstm", "## copy-task",
                    "## Benchmark report"):
        assert section in report, section
    assert "FAILED" not in report and "crashed" not in report
    assert "2 passed, 0 failed, 0 skipped in 2 parallel pytest processes" in report  # the sharded test step
    for name in ("gpu_check.csv", "sab_lstm_step.png", "copy_task.png", "tests-0.xml", "tests-1.xml",
                 "bench/results.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    csv_text = (tmp_path / "gpu_check.csv").read_text()
    for what in ("SAB fused train", "SAB fused infer", "TBPTT fused train", "SAB per-step train", "nn.LSTM train",
                 "SAB fused forward python_reads", "SAB per-step backward python_reads"):
        assert what in csv_text, what


def test_bad_arguments_exit_2(tmp_path):
    for argv in (["--out", str(tmp_path), "--skip", "bogus"], ["--out", str(tmp_path), "--peak-bandwidth", "-1"], []):
        with pytest.raises(SystemExit) as exc:
            cli.parse_args(argv)
        assert exc.value.code == 2


def _row(T, mode, impl, ms, mem=None, bw=None, dtype="bfloat16"):
    return dict(section="op", sweep="T", B=32, D=128, H=128, k_top=8, dtype=dtype, T=T, mode=mode, impl=impl,
                status="ok", median_ms=float(ms), peak_mem_mib=float(mem) if mem is not None else "",
                bandwidth_frac=float(bw) if bw is not None else "")


def test_verdicts_met_missed_and_no_data():
    cfg = gpu_config()
    rows = [_row(4096, "fwd+bwd", "fused", 1, mem=10), _row(4096, "fwd+bwd", "eager", 6, mem=100),
            _row(4096, "fwd+bwd", "compiled", 1.5), _row(256, "fwd+bwd", "fused", 1), _row(256, "fwd+bwd", "eager", 1),
            _row(65536, "forward", "fused", 2, bw=0.61), _row(65536, "fwd+bwd", "fused", 8, mem=60),
            _row(65536, "fwd+bwd", "eager", 50, mem=100), _row(4096, "fwd+bwd", "eager", 1, dtype="float32")]
    v = {x.target.split(",")[0]: x for x in judge(rows, cfg)}
    assert [x.status for x in v.values()] == ["met", "MISSED", "met", "MISSED"]
    assert "T=4096: 6.00x" in v["fused fwd+bwd >= 5x eager reference"].values  # T=256 is below the range
    assert "T=65536: 61%" in v["fused forward >= 60% of the HBM bandwidth roofline"].values
    assert [x.status for x in judge([], cfg)] == ["no data"] * 4


def test_junit_counts(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
                   '<testcase classname="a" name="ok"/><testcase classname="a" name="bad"><failure/></testcase>'
                   '<testcase classname="a" name="s"><skipped/></testcase><testcase classname="a" name="ok2"/>'
                   '</testsuite></testsuites>')
    c = _junit_counts(str(xml))
    assert (c["passed"], c["failures"], c["skipped"], c["failed_names"]) == (2, 1, 1, ["a::bad"])


def test_host_read_counter_counts_and_restores():
    x = torch.ones(3)
    item = torch.Tensor.item
    with count_host_syncs("cpu") as counts:
        x.sum().item()
        x.tolist()
        bool(x[0])
        x + 1  # no host read
    assert counts["python_reads"] == 3 and torch.Tensor.item is item


def test_configs_are_small_in_cpu_mode():
    cpu, gpu = cpu_config(), gpu_config()
    assert cpu.device == "cpu" and gpu.device == "cuda"
    assert max(T for T, *_ in cpu.lstm_rows) <= 32 and cpu.copy_steps <= 50 and "--quick" in cpu.bench_args and cpu.test_k
    assert gpu.test_k is None and gpu.test_paths == ("tests/test_triton.py",)  # every CUDA test on a GPU
    # The fused-Triton-sequence issue's rows: (T, B, H, timed reps).
    assert [r[:3] for r in gpu.lstm_rows] == [(128, 8, 64), (100, 64, 128), (1000, 64, 128), (4096, 16, 128)]
    assert gpu.per_step_max_T == 1000 and gpu.k_top == 5 and gpu.k_trunc == 5 and gpu.roofline_T == 65536


def test_device_event_ms_reads_profiler_events():
    """The GPU-busy figure's summation, on CPU events (the same profiler API the CUDA path reads)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(256, 256)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        x @ x
    assert device_event_ms(prof.events(), DeviceType.CPU) > 0
    assert device_event_ms(prof.events(), DeviceType.CUDA) == 0
