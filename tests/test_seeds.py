"""Seed streams (sab_kernels/tasks/seeds.py): training batches, validation sets and test sets of the generated
tasks come from disjoint seed ranges; every copy delay has its own test set; sab-train's training batches, its
logged evaluation and `sab_kernels.evaluate` use them."""

import pytest
import torch

from sab_kernels.tasks import CopyTask, copy_transfer
from sab_kernels.tasks.seeds import SPLIT_BASE, SET_RANGE, TRAIN_RANGE, eval_seed, train_seed
from sab_kernels.training.loop import batch_generator


def test_torch_keeps_only_32_bits_of_a_seed():
    """Why the ranges live below 2**32: seeds equal modulo 2**32 draw the same numbers."""
    def draw(seed):
        return torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(5), draw(5 + 2**32)) and not torch.equal(draw(5), draw(5 + 2**31))


def test_the_three_ranges_are_disjoint():
    assert TRAIN_RANGE <= SPLIT_BASE["valid"] and SPLIT_BASE["valid"] + SET_RANGE <= SPLIT_BASE["test"]
    assert SPLIT_BASE["test"] + SET_RANGE <= 2**32  # torch's CPU generator keeps only a seed's low 32 bits
    for seed in (0, 1, 2, 10**6):
        for step in (0, 10_000, 10**7):
            assert 0 <= train_seed(seed, 0, step) < TRAIN_RANGE
    for index in (0, 1, 10**6):
        for T in (0, 100, 5000, 10**6):
            v, t = eval_seed("valid", index, T), eval_seed("test", index, T)
            assert SPLIT_BASE["valid"] <= v < SPLIT_BASE["valid"] + SET_RANGE
            assert SPLIT_BASE["test"] <= t < SPLIT_BASE["test"] + SET_RANGE
    # The old protocol's collision: run seed 0's evaluation set was its training batch at update 10,000.
    assert eval_seed("test", 0, 100) != train_seed(0, 0, 10_000)
    with pytest.raises(ValueError, match="split"):
        eval_seed("train")
    assert train_seed(3, 1, 7) == (3 * 1_000_003 + 7_919 + 7)  # the formula runs resumed across this change used


def _digits(task, split, seed=0, n=64):
    return torch.cat([x.argmax(-1)[:, :10] for x, _ in task.eval_batches(64, n, seed, split=split)])


def test_valid_test_and_training_batches_differ_and_sets_are_fixed():
    task = CopyTask(20)
    test, valid = _digits(task, "test"), _digits(task, "valid")
    assert torch.equal(test, _digits(task, "test"))  # fixed
    assert not torch.equal(test, valid) and not torch.equal(test, _digits(task, "test", seed=1))
    train = task.batch(64, batch_generator(0, 0, 0))[0].argmax(-1)[:, :10]
    assert not torch.equal(train, test) and not torch.equal(train, valid)


def test_every_delay_has_its_own_test_set():
    # The digit strings of T = 300, 1000 and 5000 used to be the same; now each delay draws its own.
    strings = {T: _digits(CopyTask(T), "test") for T in (100, 300, 1000)}
    assert not torch.equal(strings[100], strings[300]) and not torch.equal(strings[300], strings[1000])

    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen[x.shape[1] - 20] = x.argmax(-1)[:, :10]
            return torch.zeros(*x.shape[:2], 10)

    copy_transfer(Spy(), [100, 300], n_examples=64, batch_size=64)
    assert torch.equal(seen[100], strings[100]) and torch.equal(seen[300], strings[300])
