"""Model files (sab_kernels/training/model_file.py) and `python -m sab_kernels.evaluate`: a saved model rebuilds to the
same function, re-evaluates to the numbers of a direct evaluation, and nothing but a model file loads."""

import json
import os
import pickle

import pytest
import torch

from sab_kernels import evaluate
from sab_kernels.model_file import load_model, save_model
from sab_kernels.nn import build_model
from sab_kernels.tasks import copy_transfer

BUILD = dict(kind="sab", input_size=10, hidden_size=12, output_size=10, k_top=2, k_att=2, k_trunc=3, attn_dim=8, eps=1e-7)
TASK = dict(name="copy", seq_len=6, input="onehot", permute=True, seed=0, data=None)


def _saved(tmp_path):
    torch.manual_seed(0)
    b = dict(BUILD)
    model = build_model(b.pop("kind"), b.pop("input_size"), b.pop("hidden_size"), b.pop("output_size"), backend="cpu", **b)
    path = str(tmp_path / "model.pt")
    save_model(path, model, BUILD, TASK, metrics={"acc10": 0.5}, train_args={"lr": 1e-3})
    return model, path


def test_a_saved_model_rebuilds_to_the_same_function(tmp_path):
    model, path = _saved(tmp_path)
    loaded, info = load_model(path, backend="cpu")
    assert info["build"] == BUILD and info["task"] == TASK and info["metrics"] == {"acc10": 0.5}
    assert info["train_args"] == {"lr": 1e-3}
    x = torch.randn(3, 26, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_evaluate_cli_reports_what_a_direct_evaluation_gives(tmp_path, capsys):
    model, path = _saved(tmp_path)
    assert evaluate.main([path, "--seq-len", "6,9", "--examples", "40", "--batch-size", "16", "--backend", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = copy_transfer(model, [6, 9], 40, 16, "onehot", seed=0)  # test set 0, the CLI default
    for T in (6, 9):
        for k, v in want[T].items():
            assert printed["results"][str(T)][k] == pytest.approx(v, abs=1e-5)


def test_only_model_files_load(tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "step": 3}, checkpoint)
    with pytest.raises(ValueError, match="not a sab-kernels model file"):
        load_model(str(checkpoint))
    truncated = tmp_path / "truncated.pt"
    _, path = _saved(tmp_path)
    truncated.write_bytes(open(path, "rb").read()[:100])
    with pytest.raises(ValueError, match="not a readable.*truncated or damaged"):
        load_model(str(truncated))


class _Plain:
    pass


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_file_that_would_run_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": "sab-kernels/model", "payload": _Payload()}, f)
    with pytest.raises(ValueError, match="not a readable") as exc:
        load_model(str(evil))
    assert "weights_only" not in str(exc.value)  # never advise turning the safety check off


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_evaluate_on_a_file_that_is_no_model_says_so_in_one_line(tmp_path, capsys):
    """A pickle with code, a torch.save of a Python object and a text file: one line on stderr, exit 2, and none
    of torch's advice to retry with weights_only=False."""
    files = {"evil.pt": lambda p: pickle.dump({"payload": _Payload()}, open(p, "wb")),
             "object.pt": lambda p: torch.save({"x": _Plain()}, p),
             "notes.txt": lambda p: open(p, "w").write("not a model")}
    for name, write in files.items():
        path = str(tmp_path / name)
        write(path)
        assert evaluate.main([path]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not a" in err and "weights_only" not in err, (name, err)
        assert ("not a file written by torch.save" in err) == (name == "notes.txt"), (name, err)


def test_a_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    model, path = _saved(tmp_path)

    def broken(obj, f):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, model, BUILD, TASK)
    monkeypatch.undo()
    load_model(path)  # the earlier file, intact
    assert os.listdir(tmp_path) == ["model.pt"]  # no temporary file left behind


def test_sab_train_writes_a_model_file_that_evaluates_to_its_final_metrics(tmp_path, capsys):
    from sab_kernels import train

    out = str(tmp_path / "run")
    train.main(["copy", "--seq-len", "5", "--hidden", "8", "--steps", "3", "--batch-size", "8", "--eval-every", "3",
                "--eval-size", "16", "--backend", "cpu", "--out", out, "--no-progress"])
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, info = load_model(os.path.join(out, "model.pt"), backend="cpu")
    assert info["task"]["seq_len"] == 5 and info["build"]["hidden_size"] == 8 and info["train_args"]["steps"] == 3
    args = train.parse_args(["copy", "--seq-len", "5", "--hidden", "8", "--batch-size", "8", "--eval-size", "16"])
    from sab_kernels.tasks import make_task

    again = train.evaluate(model, make_task("copy", 5), args, "cpu")  # the run's own evaluation, re-done
    assert again["acc10"] == pytest.approx(final["acc10"], abs=1e-5)

    # A model file exported from the run's checkpoint (a run stopped before --steps) is the same model.
    from sab_kernels.model_file import export_checkpoint

    os.replace(os.path.join(out, "model.pt"), str(tmp_path / "written_by_train.pt"))
    exported, info2 = load_model(export_checkpoint(out), backend="cpu")
    x = torch.randn(2, 26, 10)
    with torch.no_grad():
        assert torch.equal(exported(x), model(x))
    assert info2["build"] == info["build"] and info2["task"] == info["task"] and info2["metrics"]["step"] == 3


def test_checkpoint_model_finds_relative_data_under_root(tmp_path, monkeypatch):
    """The probes under bench/ rebuild a run's model from its checkpoint, from another folder than the run's."""
    from sab_kernels import train
    from sab_kernels.training.model_file import checkpoint_model

    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "text.txt").write_text("to be or not to be, that is the question. " * 200)
    monkeypatch.chdir(root)
    train.main(["chars", "--data", "data/text.txt", "--seq-len", "6", "--steps", "2", "--eval-every", "2",
                "--hidden", "8", "--batch-size", "4", "--k-top", "2", "--eval-size", "8", "--backend", "cpu",
                "--threads", "1", "--out", "run", "--no-progress"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        checkpoint_model(str(root / "run" / "checkpoint.pt"))  # data/text.txt is not under tmp_path
    ckpt, task, model = checkpoint_model(str(root / "run" / "checkpoint.pt"), str(root))
    assert ckpt["step"] == 2 and task.input_size == model.core.input_size
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ckpt["model"].values()))


def test_evaluate_checks_its_arguments_first(tmp_path, capsys):
    _, path = _saved(tmp_path)
    for argv in ([str(tmp_path / "missing.pt")], [path, "--seq-len", "abc"], [path, "--examples", "0"]):
        with pytest.raises(SystemExit) as exc:
            evaluate.main(argv)
        assert exc.value.code == 2
