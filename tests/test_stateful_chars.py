"""Stateful chunked language modelling (sab-train chars --stateful): contiguous streams, the state (and SAB's
memory) carried across batches, evaluation over the whole test split, exact resume, and the model file."""

import json
import os

import pytest
import torch

from sab_kernels import evaluate as evaluate_cli
from sab_kernels import train
from sab_kernels.nn import SABState, build_model
from sab_kernels.nn.models import carry_state
from sab_kernels.tasks import CharsTask
from sab_kernels.tasks.chars import evaluate_streams
from sab_kernels.model_file import load_model

TINY = ["--hidden", "8", "--attn-dim", "8", "--batch-size", "3", "--k-top", "2", "--k-att", "2", "--k-trunc", "3",
        "--backend", "cpu", "--threads", "1", "--no-progress", "--seq-len", "7"]
pytestmark = pytest.mark.filterwarnings("ignore:sab_kernels. the compiled CPU kernels")


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    # Irregular, so that any misplaced chunk shows (a periodic text would hide an off-by-one).
    path.write_text("".join(f"{i * 7919 % 1000} sparse attentive backtracking; " for i in range(40)), encoding="utf-8")
    return str(path)


def test_streams_are_contiguous_chunk_after_chunk(text):
    task = CharsTask(text, seq_len=7)
    rows = task.streams(3)
    n = task.n_chunks(3)
    assert rows.shape[0] == 3 and n == (rows.shape[1] - 1) // 7
    for step in range(n + 2):
        x, y, new_epoch = task.stream_batch(3, step)
        j = step % n
        assert new_epoch == (j == 0)
        assert torch.equal(x.argmax(-1), rows[:, j * 7: j * 7 + 7])
        assert torch.equal(y, rows[:, j * 7 + 1: j * 7 + 8])  # the next character, across the chunk's end too
    # Two ranks of batch 3 read disjoint streams of the 6-stream layout.
    x0, _, _ = task.stream_batch(3, 0, rank=0, world=2)
    x1, _, _ = task.stream_batch(3, 0, rank=1, world=2)
    six = task.streams(6)
    assert torch.equal(torch.cat([x0, x1]).argmax(-1), six[:, :7])
    with pytest.raises(ValueError, match="too short for 10000 streams"):
        task.streams(10000)


@pytest.mark.parametrize("kind", ["sab", "tbptt", "lstm"])
def test_chunk_by_chunk_equals_one_pass(text, kind):
    """Carrying the state across chunks (memory window wide enough) gives the logits of one long forward."""
    torch.manual_seed(0)
    task = CharsTask(text, seq_len=5)
    model = build_model(kind, task.input_size, 8, task.output_size, k_top=2, k_att=2, k_trunc=3, backend="cpu").double()
    x = task._one_hot(task.streams(2)[:, :20]).double()
    whole = model(x)
    state, parts = None, []
    for j in range(4):
        logits, state = model.forward_chunk(x[:, 5 * j: 5 * j + 5], state)
        state = carry_state(state, 0)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=0, atol=1e-12)


def test_carry_state_cuts_the_graph_and_keeps_the_newest_slots():
    h = torch.randn(1, 2, 4, requires_grad=True)
    memory = torch.arange(2 * 6 * 4, dtype=torch.float32).view(2, 6, 4).requires_grad_()
    state = carry_state(SABState(h * 2, h * 3, memory * 1, step=11), 4)
    assert isinstance(state, SABState) and state.step == 11
    assert not any(t.requires_grad for t in (state.h, state.c, state.memory))
    assert torch.equal(state.memory, memory.detach()[:, [0, 3, 4, 5]])  # the first slot and the newest 3
    assert torch.equal(carry_state(SABState(h, h, memory, 3), 1).memory, memory.detach()[:, :1])
    assert carry_state(SABState(h, h, memory, 3), 0).memory.shape == (2, 6, 4)  # 0 keeps every slot
    lstm = carry_state((h * 1, h * 1), 4)
    assert isinstance(lstm, tuple) and not lstm[0].requires_grad


def test_evaluate_streams_reads_the_whole_test_split(text):
    torch.manual_seed(0)
    task = CharsTask(text, seq_len=7)
    model = build_model("sab", task.input_size, 8, task.output_size, k_top=2, k_att=2, k_trunc=3, backend="cpu")
    got = evaluate_streams(model, task, batch_size=2, memory_window=0)
    rows = task.streams(2, "test")
    n = (rows.shape[1] - 1) // 7
    with torch.no_grad():
        logits = model(task._one_hot(rows[:, : n * 7]))
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, task.output_size), rows[:, 1: n * 7 + 1].reshape(-1))
    assert got["ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert model.training  # left as it was


def test_stateful_resume_is_exact_and_the_model_file_evaluates_the_same(text, tmp_path, capsys):
    args = ["chars", "--data", text, "--stateful", "--memory-window", "3", "--eval-every", "3", *TINY]
    train.main([*args, "--steps", "6", "--out", str(tmp_path / "straight")])
    straight = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    train.main([*args, "--steps", "3", "--out", str(tmp_path / "resumed")])
    train.main([*args, "--steps", "6", "--out", str(tmp_path / "resumed"), "--resume"])
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["bpc"] == straight["bpc"] and resumed["train_loss"] == straight["train_loss"]
    ckpt = train.load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))
    assert ckpt["carried"]["memory"].shape[1] <= 3  # the window bounds what is carried
    # The model file knows it is stateful and its number of streams (3): the evaluate CLI walks the same streams.
    assert evaluate_cli.main([str(tmp_path / "straight" / "model.pt")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]["7"]
    assert result["bpc"] == pytest.approx(straight["bpc"], abs=1e-5)
    assert evaluate_cli.main([str(tmp_path / "straight" / "model.pt"), "--batch-size", "2"]) == 0  # other streams
    other = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]["7"]
    assert other["bpc"] != pytest.approx(straight["bpc"], abs=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["copy", "--stateful"], "--stateful applies to the chars task only"),
    (["chars", "--stateful", "--memory-window", "-1"], "--memory-window must be >= 0"),
    (["chars", "--stateful", "--batch-size", "100000"], "too short for 100000 streams"),
])
def test_stateful_arguments_are_checked_before_any_work(text, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    argv = [*extra, "--out", str(out), "--no-progress"]
    if extra[0] == "chars":
        argv += ["--data", text, "--seq-len", "7"]
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_splits_are_contiguous_disjoint_and_cover_the_text(text):
    """90 / 5 / 5: training, validation (what a run may stop on), test (what is reported), in text order."""
    task = CharsTask(text, seq_len=7)
    parts = [task.split(s) for s in ("train", "valid", "test")]
    lookup = {ch: i for i, ch in enumerate(task.vocab)}
    whole = open(text, encoding="utf-8").read()
    assert torch.equal(torch.cat(parts), torch.tensor([lookup[c] for c in whole]))
    n = len(whole)
    assert [len(p) for p in parts] == [n - 2 * int(n * 0.05), int(n * 0.05), int(n * 0.05)]
    with pytest.raises(ValueError, match="split must be one of"):
        task.split("dev")


def test_a_stateful_run_logs_test_and_validation_bpc(text, tmp_path, capsys):
    train.main(["chars", "--data", text, "--stateful", "--memory-window", "3", "--eval-every", "2", *TINY,
                "--steps", "2", "--out", str(tmp_path / "run")])
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    task = CharsTask(text, seq_len=final["seq_len"])
    model, _ = load_model(str(tmp_path / "run" / "model.pt"))
    for split, key in (("test", "bpc"), ("valid", "val_bpc")):
        want = evaluate_streams(model, task, batch_size=3, memory_window=3, split=split)["bpc"]
        assert final[key] == pytest.approx(want, rel=1e-4), split
    assert final["val_bpc"] != final["bpc"]
