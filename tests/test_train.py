"""sab_kernels.train: the CLI end to end (subprocess), every task in process, exact resume, and two CPU
processes under torchrun with DistributedDataParallel (gloo)."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from sab_kernels import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden", "8", "--attn-dim", "8", "--batch-size", "4", "--k-top", "2", "--k-att", "2", "--k-trunc", "3",
        "--backend", "cpu", "--threads", "1", "--no-progress", "--eval-size", "8"]
pytestmark = pytest.mark.filterwarnings("ignore:sab_kernels. the compiled CPU kernels")


def _child_env():
    """The test env without TRITON_INTERPRET (so the child does not run the interpreter), package on the path."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def _rows(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_cli_copy_writes_outputs_and_resumes(tmp_path):
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "sab_kernels.train", "copy", "--seq-len", "4", "--steps", "4", "--eval-every", "2",
           "--transfer", "8", "--out", out, *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = _last_json(proc.stdout)
    assert result["task"] == "copy" and result["model"] == "sab" and result["step"] == 4
    assert 0.0 <= result["acc10"] <= 1.0 and result["ce10"] > 0 and "8" in result["transfer"]
    for name in ("metrics.csv", "curve.png", "checkpoint.pt", "final.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert [r["step"] for r in _rows(out)] == ["2", "4"]
    proc = subprocess.run(cmd[:cmd.index("--steps") + 1] + ["6"] + cmd[cmd.index("--steps") + 2:] + ["--resume"],
                          capture_output=True, text=True, env=_child_env(), cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _last_json(proc.stdout)["step"] == 6
    assert [r["step"] for r in _rows(out)] == ["2", "4", "6"]


def test_resume_is_exact(tmp_path):
    common = ["copy", "--seq-len", "3", "--eval-every", "2", *TINY]
    train.main(common + ["--steps", "4", "--out", str(tmp_path / "straight")])
    train.main(common + ["--steps", "2", "--out", str(tmp_path / "split")])
    train.main(common + ["--steps", "4", "--out", str(tmp_path / "split"), "--resume"])
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name


@pytest.mark.parametrize("model", ["tbptt", "bptt", "dense", "lstm"])
def test_baseline_models_train(tmp_path, model, capsys):
    train.main(["copy", "--seq-len", "3", "--steps", "2", "--eval-every", "2", "--model", model,
                "--out", str(tmp_path), *TINY])
    result = _last_json(capsys.readouterr().out)
    assert result["model"] == model and {"acc10", "ce10"} <= set(result)


def test_other_tasks_train(tmp_path, capsys):
    from test_tasks import _write_mnist

    text = tmp_path / "text.txt"
    text.write_text("sparse attentive backtracking. " * 30, encoding="utf-8")
    (tmp_path / "mnist").mkdir()
    _write_mnist(tmp_path / "mnist")
    cases = {
        "adding": (["--seq-len", "6"], "mse"),
        "digits": ([], "acc"),
        "mnist": (["--data", str(tmp_path / "mnist")], "acc"),
        "chars": (["--data", str(text), "--seq-len", "8"], "bpc"),
    }
    for task, (extra, metric) in cases.items():
        train.main([task, "--steps", "1", "--eval-every", "1", "--model", "tbptt" if task == "digits" else "sab",
                    "--out", str(tmp_path / task), *extra, *TINY])
        result = _last_json(capsys.readouterr().out)
        assert result["task"] == task and metric in result, result


def test_torchrun_two_cpu_processes_ddp(tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sab_kernels.train", "copy", "--seq-len", "4", "--steps", "3", "--eval-every", "3", "--device", "cpu",
           "--out", out, *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), cwd=str(tmp_path), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = _last_json(proc.stdout)
    assert result["world_size"] == 2 and result["task"] == "copy" and result["step"] == 3
    assert os.path.exists(os.path.join(out, "checkpoint.pt"))


def test_train_demo_runs(tmp_path, capsys):
    from sab_kernels import train_demo

    summary = train_demo.main(["--steps", "2", "--seq-len", "2", "--backend", "cpu", "--out", str(tmp_path), "--no-progress"])
    assert set(summary) >= {"sab", "tbptt"} and 0 <= summary["sab"]["acc10"] <= 1
    assert os.path.getsize(tmp_path / "demo_copy.png") > 0
    assert "| SAB" in capsys.readouterr().out
