"""sab_kernels.train: the CLI end to end (subprocess), every task in process, exact resume, and two CPU
processes under torchrun with DistributedDataParallel (gloo)."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from sab_kernels import train
from sab_kernels.training import loop

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


@pytest.mark.parametrize("model", ["tbptt", "bptt", "dense", "lstm", "sab-gru", "gru"])
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
    # `make demo` again into the same folder replaces the earlier demo runs instead of refusing them.
    again = train_demo.main(["--steps", "2", "--seq-len", "2", "--backend", "cpu", "--out", str(tmp_path), "--no-progress"])
    assert again["sab"] == summary["sab"] and again["tbptt"] == summary["tbptt"]


# --- bad arguments: exit status 2, a one-line message naming the argument, nothing written ---------------

BAD_ARGS = [
    pytest.param(["--clip=-1"], "--clip", id="clip-negative"),
    pytest.param(["--clip", "nan"], "--clip", id="clip-nan"),
    pytest.param(["--transfer", "abc"], "--transfer", id="transfer-abc"),
    pytest.param(["--transfer", "200,-3"], "--transfer", id="transfer-negative"),
    pytest.param(["--eval-every", "0"], "--eval-every", id="eval-every-0"),
    pytest.param(["--backend", "bogus"], "--backend", id="backend-bogus"),
    pytest.param(["--steps", "-5"], "--steps", id="steps-negative"),
    pytest.param(["--k-trunc", "-3"], "--k-trunc", id="k-trunc-negative"),
    pytest.param(["--batch-size", "0"], "--batch-size", id="batch-size-0"),
    pytest.param(["--eval-size", "0"], "--eval-size", id="eval-size-0"),
    pytest.param(["--transfer-size", "0"], "--transfer-size", id="transfer-size-0"),
    pytest.param(["--lr", "0"], "--lr", id="lr-0"),
    pytest.param(["--lr=-0.001"], "--lr must be", id="lr-negative"),
    pytest.param(["--lr", "inf"], "--lr", id="lr-inf"),
    pytest.param(["--hidden", "0"], "--hidden", id="hidden-0"),
    pytest.param(["--attn-dim", "0"], "--attn-dim", id="attn-dim-0"),
    pytest.param(["--k-att", "0"], "--k-att", id="k-att-0"),
    pytest.param(["--k-top", "0"], "--k-top", id="k-top-0-sab"),
    pytest.param(["--seq-len", "0"], "--seq-len", id="seq-len-0"),
    pytest.param(["--threads", "0"], "--threads", id="threads-0"),
    pytest.param(["--eps", "0"], "--eps", id="eps-0"),
    pytest.param(["--eps", "nan"], "--eps", id="eps-nan"),
    pytest.param(["--skip-norm", "-1"], "--skip-norm", id="skip-norm-negative"),
    pytest.param(["--memory-window", "-2"], "--memory-window", id="memory-window-negative"),
    pytest.param(["--warmup", "-1"], "--warmup", id="warmup-negative"),
    pytest.param(["--lr-schedule", "step"], "--lr-schedule", id="lr-schedule-bogus"),
    pytest.param(["--device", "gpu7"], "--device", id="device-bogus"),
    pytest.param(["--data", "x.txt"], "--data", id="data-for-copy"),
    pytest.param(["--resume", "--overwrite"], "--resume", id="resume-and-overwrite"),
    pytest.param(["--num-layers", "0"], "--num-layers", id="num-layers-0"),
    pytest.param(["--dropout", "1"], "--dropout", id="dropout-1"),
    pytest.param(["--recent-slots", "4"], "--relevant-slots", id="recent-without-relevant"),
    pytest.param(["--recent-slots", "0", "--relevant-slots", "2"], "--recent-slots", id="recent-slots-0"),
    pytest.param(["--recent-slots", "4", "--relevant-slots", "-1"], "--relevant-slots", id="relevant-slots-negative"),
    pytest.param(["--model", "lstm", "--recent-slots", "4", "--relevant-slots", "2"], "--recent-slots", id="bounded-lstm"),
    pytest.param(["--init", "no/such/model.pt"], "--init", id="init-missing"),
]


def _expect_usage_error(argv, capsys, fragment):
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sab-train: error:") and fragment in err[-1], err
    return err[-1]


@pytest.mark.parametrize("bad, fragment", BAD_ARGS)
def test_bad_argument_exits_2_and_writes_nothing(tmp_path, capsys, bad, fragment):
    out = tmp_path / "run"
    _expect_usage_error(["copy", "--seq-len", "3", "--steps", "2", "--out", str(out), *TINY, *bad], capsys, fragment)
    assert not out.exists()


def test_unreadable_data_is_checked_first(tmp_path, capsys):
    out = tmp_path / "run"
    missing = str(tmp_path / "nope.txt")
    # --data is reported even with other bad arguments after it, and nothing is written.
    _expect_usage_error(["chars", "--data", missing, "--steps", "-5", "--out", str(out), *TINY], capsys, missing)
    _expect_usage_error(["chars", "--out", str(out), *TINY], capsys, "--data")
    _expect_usage_error(["chars", "--data", str(tmp_path), "--out", str(out), *TINY], capsys, "text file")
    short = tmp_path / "short.txt"
    short.write_text("abc", encoding="utf-8")
    _expect_usage_error(["chars", "--data", str(short), "--seq-len", "8", "--out", str(out), *TINY], capsys, "too short")
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.txt"
        locked.write_text("sparse attentive backtracking. " * 30, encoding="utf-8")
        locked.chmod(0)
        _expect_usage_error(["chars", "--data", str(locked), "--out", str(out), *TINY], capsys, "not readable")
    assert not out.exists()


def test_bad_argument_through_the_console_entry_point(tmp_path):
    """The real process: status 2, one error line on stderr, no traceback, no output folder."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sab_kernels.train", "copy", "--eval-every", "0", "--out", str(out), *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "sab-train: error: --eval-every must be >= 1, got 0"
    assert not out.exists()


# --- an existing --out, --resume with other settings ------------------------------------------------------

COMMON = ["copy", "--seq-len", "3", "--eval-every", "2", *TINY]


def test_existing_out_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    out = str(tmp_path / "run")
    train.main(COMMON + ["--steps", "2", "--out", out])
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
    capsys.readouterr()
    _expect_usage_error(COMMON + ["--steps", "2", "--out", out], capsys, "--overwrite")
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)} == before
    train.main(COMMON + ["--steps", "4", "--out", out, "--overwrite", "--seed", "1"])
    ckpt = train.load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert ckpt["step"] == 4 and ckpt["args"]["seed"] == 1
    assert [r["step"] for r in _rows(out)] == ["2", "4"]  # a fresh run, not the old rows plus new ones


def test_resume_with_changed_hyper_parameters_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    train.main(COMMON + ["--steps", "2", "--out", out])
    capsys.readouterr()
    line = _expect_usage_error(COMMON + ["--steps", "4", "--out", out, "--resume", "--lr", "0.01", "--hidden", "9"],
                               capsys, "--resume")
    assert "--lr 0.001 in the checkpoint, 0.01 now" in line and "--hidden 8 in the checkpoint, 9 now" in line
    assert "--k-top" not in line
    assert train.load_checkpoint(os.path.join(out, "checkpoint.pt"))["step"] == 2
    # What may change does: more steps, another eval interval; the checkpoint records what was used.
    train.main(COMMON[:-len(TINY)] + [*TINY, "--steps", "3", "--eval-every", "3", "--out", out, "--resume"])
    ckpt = train.load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert ckpt["step"] == 3 and ckpt["args"]["eval_every"] == 3 and ckpt["args"]["lr"] == 1e-3


def test_flush_denormal_is_applied_recorded_and_must_match_on_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert torch.tensor(1e-39) * 1 != 0  # float32 keeps subnormals by default
    try:
        train.main(COMMON + ["--steps", "2", "--out", out, "--flush-denormal"])
        assert torch.tensor(1e-39) * 1 == 0
    finally:
        torch.set_flush_denormal(False)  # process-wide: later tests expect the default
    capsys.readouterr()
    assert train.load_checkpoint(os.path.join(out, "checkpoint.pt"))["args"]["flush_denormal"] is True
    line = _expect_usage_error(COMMON + ["--steps", "3", "--out", out, "--resume"], capsys, "--resume")
    assert "--flush-denormal True in the checkpoint, False now" in line


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"], ids=["empty", "junk", "truncated"])
def test_corrupt_checkpoint_gets_a_clear_message(tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(content)
    line = _expect_usage_error(COMMON + ["--steps", "2", "--out", str(out), "--resume"], capsys, "checkpoint")
    assert "not a readable checkpoint" in line and (content != b"" or "the file is empty" in line)
    assert (out / "checkpoint.pt").read_bytes() == content


def test_checkpoint_without_our_fields_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"weights": torch.zeros(2)}, out / "checkpoint.pt")
    _expect_usage_error(COMMON + ["--steps", "2", "--out", str(out), "--resume"], capsys, "not a sab-train checkpoint")


# --- atomic checkpoints -------------------------------------------------------------------------------------

def test_failed_save_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    path = os.path.join(out, "checkpoint.pt")
    train.main(COMMON + ["--steps", "2", "--out", out])
    good = open(path, "rb").read()
    real_save = torch.save

    def save_then_fail(obj, f, *a, **kw):  # half a checkpoint reaches the disk, then the disk is full
        real_save(obj, f, *a, **kw)
        f.seek(len(good) // 2)
        f.truncate()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="No space"):
        train.main(COMMON + ["--steps", "4", "--out", out, "--resume"])
    monkeypatch.setattr(torch, "save", real_save)
    assert open(path, "rb").read() == good
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "curve.png", "final.json", "metrics.csv", "model.pt"]  # no temp file left
    # metrics.csv went ahead of the failed checkpoint; the resumed run restarts from the checkpoint's rows.
    train.main(COMMON + ["--steps", "4", "--out", out, "--resume"])
    assert train.load_checkpoint(path)["step"] == 4
    assert [r["step"] for r in _rows(out)] == ["2", "4"]


def test_checkpoint_loads_with_weights_only(tmp_path):
    out = str(tmp_path / "run")
    train.main(COMMON + ["--steps", "2", "--out", out])
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ckpt["step"] == 2 and set(ckpt["args"]) >= set(train.RESUME_MUST_MATCH)


def test_learning_rate_schedule_and_gradient_diagnostics_are_logged(tmp_path, capsys):
    """--warmup and --lr-schedule cosine set each step's learning rate; every evaluation row records the
    interval's largest pre-clip gradient norm and the share of clipped steps."""
    import math

    out = str(tmp_path / "run")
    train.main(COMMON + ["--steps", "8", "--lr", "0.01", "--warmup", "3", "--lr-schedule", "cosine", "--clip", "1e-9",
                         "--out", out])
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    for r in rows:
        s = int(r["step"]) - 1  # the interval's last optimizer step
        want = 0.01 * min(1.0, (s + 1) / 3) * 0.5 * (1 + math.cos(math.pi * s / 8))
        assert float(r["lr"]) == pytest.approx(want, rel=1e-9)
        assert float(r["grad_norm_max"]) > 0 and float(r["clip_frac"]) == 1.0  # a tiny clip cuts every step
    with pytest.raises(SystemExit) as exc:  # the cosine decay depends on --steps: resuming with others is refused
        train.main(COMMON + ["--steps", "10", "--lr", "0.01", "--warmup", "3", "--lr-schedule", "cosine",
                             "--clip", "1e-9", "--out", out, "--resume"])
    assert exc.value.code == 2 and "--steps" in capsys.readouterr().err


def test_an_update_with_a_non_finite_gradient_norm_is_skipped(tmp_path, monkeypatch):
    """A non-finite norm (NaN or infinite gradient entries) would spread to every weight through Adam: that update
    is skipped and counted in the row's `skipped`; the others step as usual."""
    real_clip, real_step = train.clip_gradients, torch.optim.Adam.step
    calls = {"clip": 0, "step": 0}

    def clip(params, max_norm):
        calls["clip"] += 1
        norm = real_clip(params, max_norm)
        return float("inf") if calls["clip"] == 3 else norm

    def step(self, *a, **k):
        calls["step"] += 1
        return real_step(self, *a, **k)

    monkeypatch.setattr(loop, "clip_gradients", clip)  # where run() looks it up
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    out = str(tmp_path / "run")
    train.main(COMMON + ["--steps", "4", "--out", out])
    rows = _rows(out)
    assert [int(float(r["skipped"])) for r in rows] == [0, 1]
    assert calls == {"clip": 4, "step": 3}
    ckpt = train.load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_skip_norm_skips_the_updates_past_it(tmp_path, monkeypatch):
    """--skip-norm X: an update whose pre-clip norm exceeds X is not taken (and counted); 0 never skips."""
    real_step = torch.optim.Adam.step
    calls = {"step": 0}

    def step(self, *a, **k):
        calls["step"] += 1
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    train.main(COMMON + ["--steps", "4", "--skip-norm", "1e-12", "--out", str(tmp_path / "all")])
    assert calls["step"] == 0 and [int(float(r["skipped"])) for r in _rows(str(tmp_path / "all"))] == [2, 2]
    train.main(COMMON + ["--steps", "4", "--skip-norm", "1e12", "--out", str(tmp_path / "none")])
    assert calls["step"] == 4 and [int(float(r["skipped"])) for r in _rows(str(tmp_path / "none"))] == [0, 0]


def test_clip_gradients_matches_torch_and_survives_float32_overflow():
    """clip_gradients is clip_grad_norm_ bit for bit on ordinary gradients; a gradient whose squares overflow
    float32 is still clipped along its direction (clip_grad_norm_ zeroes it); NaN gives a NaN norm."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for pa, pb in zip(a, b):
        pa.grad = torch.randn(5, 3) * 10
        pb.grad = pa.grad.clone()
    assert train.clip_gradients(a, 1.0) == float(torch.nn.utils.clip_grad_norm_(b, 1.0))
    assert all(torch.equal(pa.grad, pb.grad) for pa, pb in zip(a, b))

    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3e30, -4e30, 0.0, 0.0])
    assert train.clip_gradients([p], 1.0) == pytest.approx(5e30, rel=1e-6)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, -0.8, 0.0, 0.0]))
    p.grad = torch.tensor([3e30, -4e30, 0.0, 0.0])
    assert train.clip_gradients([p], 0.0) == pytest.approx(5e30, rel=1e-6)  # 0: no clipping, the norm still reported
    assert p.grad[0] == 3e30
    p.grad = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    assert math.isnan(train.clip_gradients([p], 1.0)) and p.grad[0] == 1.0


def test_layers_gru_and_bounded_memory_train_and_ship_a_model_that_reloads(tmp_path, capsys):
    """sab-train --model sab-gru --num-layers 2 --recent-slots/--relevant-slots writes a model file whose build
    carries those options; it reloads (load_model) into the same function, and --init starts a run from it."""
    from sab_kernels.training.model_file import load_model

    out = tmp_path / "run"
    opts = ["--model", "sab-gru", "--num-layers", "2", "--dropout", "0.1", "--recent-slots", "2", "--relevant-slots", "1"]
    train.main(["copy", "--seq-len", "3", "--steps", "2", "--eval-every", "2", "--out", str(out), *TINY, *opts])
    model, info = load_model(str(out / "model.pt"), "cpu", "cpu")
    assert info["build"]["num_layers"] == 2 and info["build"]["recent_slots"] == 2 and info["build"]["relevant_slots"] == 1
    assert model.core.num_layers == 2 and model.core.layers[0].bounds == (2, 1)
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    # --init: a zero-step run starts from those weights (another T, the same shapes).
    init = tmp_path / "init"
    train.main(["copy", "--seq-len", "5", "--steps", "0", "--eval-every", "2", "--out", str(init), *TINY, *opts,
                "--init", str(out / "model.pt")])
    again = torch.load(init / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(again[k], v) for k, v in saved.items())


def test_init_whose_weights_do_not_fit_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    train.main(["copy", "--seq-len", "3", "--steps", "1", "--eval-every", "1", "--out", str(out), *TINY])
    bad = tmp_path / "bad"
    _expect_usage_error(["copy", "--seq-len", "3", "--steps", "1", "--out", str(bad), *TINY, "--num-layers", "2",
                         "--init", str(out / "model.pt")], capsys, "--init")
    assert not bad.exists()
