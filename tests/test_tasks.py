"""sab_kernels.tasks: layouts of the generated sequences, seeding, the data loaders (sklearn digits, IDX
files the test writes, a small text file), metrics and the transfer evaluation."""

import gzip
import math

import numpy as np
import pytest
import torch

from sab_kernels.nn import build_model
from sab_kernels.tasks import (AddingTask, CharsTask, CopyTask, DigitsTask, MNISTTask, copy_transfer, make_task,
                               read_idx, write_idx)
from sab_kernels.tasks.mnist import FILES

pytestmark = pytest.mark.filterwarnings("ignore:sab_kernels. the compiled CPU kernels")


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("T", [1, 5, 30])
def test_copy_layout(T):
    task = CopyTask(T)
    x, y = task.batch(16, _g())
    assert x.shape == (16, T + 20, 10) and y.shape == (16, T + 20)
    tokens = x.argmax(-1)
    digits = tokens[:, :10]
    assert digits.min() >= 1 and digits.max() <= 8
    assert torch.all(tokens[:, 10 : T + 9] == 0)
    assert torch.all(tokens[:, T + 9] == 9)
    assert torch.all(tokens[:, T + 10 :] == 0)
    assert torch.all(y[:, :-10] == 0) and torch.equal(y[:, -10:], digits)


def test_copy_scalar_input_and_seeding():
    task = CopyTask(7, input="scalar")
    x1, y1 = task.batch(4, _g(3))
    x2, y2 = task.batch(4, _g(3))
    x3, _ = task.batch(4, _g(4))
    assert x1.shape == (4, 27, 1) and torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.equal(x1[..., 0].long(), CopyTask(7).batch(4, _g(3))[0].argmax(-1))  # same data, two encodings
    with pytest.raises(ValueError, match="input"):
        CopyTask(7, input="binary")


def test_copy_metrics():
    task = CopyTask(4)
    _, y = task.batch(8, _g())
    perfect = torch.nn.functional.one_hot(y, 10).float() * 20
    m = task.metrics(perfect, y)
    assert m["acc10"] == 1.0 and m["ce10"] < 1e-6
    uniform = task.metrics(torch.zeros(8, 24, 10), y)
    assert uniform["acc10"] == pytest.approx((y[:, -10:] == 0).float().mean().item())
    assert uniform["ce10"] == pytest.approx(math.log(10), rel=1e-5)


def test_adding_layout():
    task = AddingTask(20)
    x, y = task.batch(32, _g())
    assert x.shape == (32, 20, 2) and y.shape == (32,)
    marks = x[..., 1]
    assert torch.all(marks.sum(1) == 2)
    assert torch.all(marks[:, :10].sum(1) == 1) and torch.all(marks[:, 10:].sum(1) == 1)
    torch.testing.assert_close(y, (x[..., 0] * marks).sum(1))
    m = task.metrics(torch.ones(32, 20, 1), y)  # predicting the mean
    assert 0.05 < m["mse"] < 0.35


def test_digits_permuted_pixels():
    task = DigitsTask(permute=True, seed=0)
    x, y = task.batch(10, _g())
    assert x.shape == (10, 64, 1) and y.shape == (10,) and 0 <= x.min() and x.max() <= 1
    assert task.test_x.shape == (297, 64) and task.train_x.shape == (1500, 64)
    assert sorted(task.permutation.tolist()) == list(range(64)) and not torch.equal(task.permutation, torch.arange(64))
    plain = DigitsTask(permute=False)
    torch.testing.assert_close(plain.test_x[:, task.permutation], task.test_x)
    assert not torch.equal(DigitsTask(seed=1).permutation, task.permutation)
    batches = list(task.eval_batches(100, 10_000, seed=0))
    assert sum(b[0].shape[0] for b in batches) == 297


def _write_mnist(folder, n_train=12, n_test=5, compress=False):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, name in FILES.items():
        path = folder / name
        write_idx(str(path), arrays[key])
        if compress:
            data = path.read_bytes()
            path.unlink()
            with gzip.open(str(path) + ".gz", "wb") as f:
                f.write(data)
    return arrays


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_mnist_idx_loader(tmp_path, compress):
    arrays = _write_mnist(tmp_path, compress=compress)
    assert np.array_equal(read_idx(str(tmp_path / FILES["train_labels"])), arrays["train_labels"])
    task = MNISTTask(str(tmp_path), permute=False)
    assert task.seq_len == 16 and task.train_x.shape == (12, 16) and task.test_x.shape == (5, 16)
    torch.testing.assert_close(task.test_x * 255, torch.tensor(arrays["test_images"].reshape(5, 16), dtype=torch.float32))
    assert torch.equal(task.test_y, torch.tensor(arrays["test_labels"], dtype=torch.int64))
    x, y = MNISTTask(str(tmp_path), permute=True, seed=0).batch(3, _g())
    assert x.shape == (3, 16, 1) and y.shape == (3,)


def test_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images"):
        MNISTTask(str(tmp_path))
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(str(tmp_path / "bad"))


def test_chars_next_character(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    task = CharsTask(str(path), seq_len=12)
    V = len(set(path.read_text()))
    assert task.input_size == task.output_size == V
    x, y = task.batch(5, _g())
    assert x.shape == (5, 12, V) and y.shape == (5, 12)
    assert torch.equal(x.argmax(-1)[:, 1:], y[:, :-1])  # y is x shifted by one
    m = task.metrics(torch.zeros(5, 12, V), y)
    assert m["bpc"] == pytest.approx(math.log2(V), rel=1e-5)
    with pytest.raises(ValueError, match="too short"):
        (tmp_path / "short.txt").write_text("abc")
        CharsTask(str(tmp_path / "short.txt"), seq_len=12)


def test_make_task_and_devices():
    assert isinstance(make_task("copy", seq_len=3), CopyTask)
    assert isinstance(make_task("adding", seq_len=6), AddingTask)
    with pytest.raises(ValueError, match="unknown task"):
        make_task("ptb")
    with pytest.raises(ValueError, match="--data"):
        make_task("mnist")
    x, y = make_task("copy", seq_len=3).batch(2, _g(), device="cpu")
    assert x.device.type == "cpu" and y.device.type == "cpu"


def test_copy_transfer_evaluates_longer_sequences():
    torch.manual_seed(0)
    model = build_model("sab", 10, 8, 10, k_top=2, k_att=2, k_trunc=3, backend="cpu")
    res = copy_transfer(model, [3, 12], n_examples=10, batch_size=4)
    assert set(res) == {3, 12}
    for m in res.values():
        assert 0.0 <= m["acc10"] <= 1.0 and m["ce10"] > 0
    assert model.training  # restored
