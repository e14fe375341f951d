"""Every shipped model on its task's standard TEST set: the numbers the README's results table reports.

Usage: python bench/results/training/test_sets.py [--only SUBSTRING] [--redo]
    -> test_sets.json (one entry per model file and length) and test_sets.md (the same as a table)

What "test set" means per task (sab_kernels/tasks/seeds.py, sab_kernels/tasks/*.py):
- copy, adding: test set 0 of the test seed stream, drawn from seeds that no training batch and no validation set
  uses, with its own draw at every delay T. The same sets for every model. Copy models are evaluated at the delay
  they were trained at (512 sequences) and, for the transfer rows, at T = 1000 (256) and 5000 (64).
- digits (permuted 8x8): the fixed 297-image test split; mnist5k: the fixed 1,000-digit test split.
- chars (stateful): the test split of the run's text file (the last 5%, tasks/chars.py) read as the run's
  batch_size streams, chunk by chunk with the state carried (tasks.chars.evaluate_streams); length = seq_len,
  examples = characters scored. Skipped, with a message, when the text file (data/shakespeare.txt: make
  shakespeare) is missing.
These are not the sets the runs were logged on during training (issue 19: the old evaluation set of seed s was
generated with seed 10000 + s, which for s = 0 was the training batch at update 10,000), so the numbers can differ
slightly from the ones in each run's metrics.csv. Runs with one thread; incremental (entries already in the JSON
are kept unless --redo). Entries whose model file no longer exists are dropped.
"""

import argparse
import glob
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
from sab_kernels._io import atomic_write  # noqa: E402
from sab_kernels.model_file import load_model  # noqa: E402
from sab_kernels.tasks import CharsTask, copy_transfer, make_task  # noqa: E402
from sab_kernels.tasks.chars import evaluate_streams  # noqa: E402
from sab_kernels.training.evaluation import TEST_SET, evaluate_task  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
JSON, MD = os.path.join(HERE, "test_sets.json"), os.path.join(HERE, "test_sets.md")
TRANSFER = {1000: 256, 5000: 64}  # copy transfer lengths and sequences per length
NO_TRANSFER = ("tbptt_seed0", "sab_seed1_cosine")  # at chance / an ablation: no transfer row


def jobs(path):
    """(length, examples) pairs to evaluate for one model file."""
    _, info = load_model(path, backend="cpu")
    t = info["task"]
    if t["name"] == "chars":
        return [(t["seq_len"], None)]  # the whole test split; evaluate() counts the characters
    if t["name"] != "copy":
        return [(t["seq_len"], 512 if t["name"] == "adding" else 10_000)]
    extra = [] if any(n in path for n in NO_TRANSFER) else [(T, n) for T, n in TRANSFER.items()]
    return [(t["seq_len"], 512)] + extra


def text_file(info):
    """The chars text file a model was trained on (its recorded path, relative to the repository root)."""
    return os.path.join(REPO, info["task"]["data"])


def evaluate(path, length, examples):
    """(metrics, examples evaluated)."""
    model, info = load_model(path, backend="cpu")
    t = info["task"]
    if t["name"] == "copy":
        return copy_transfer(model, [length], examples, 64, t["input"], seed=TEST_SET)[length], examples
    if t["name"] == "chars":
        if not t.get("stateful"):
            raise ValueError(f"{path}: only stateful chars models are evaluated (streams, state carried)")
        task, B = CharsTask(text_file(info), t["seq_len"]), info["train_args"]["batch_size"]
        scored = task.n_chunks(B, "test") * t["seq_len"] * B  # characters: every chunk of every stream
        return evaluate_streams(model, task, B, t["memory_window"], split="test"), scored
    task = make_task(t["name"], t["seq_len"], t["input"], t["data"], t["permute"], t["seed"])
    scored = min(examples, len(task.test_y)) if hasattr(task, "test_y") else examples  # a fixed split caps it
    return evaluate_task(model, task, examples, 64, TEST_SET, "cpu"), scored


def table(entries):
    lines = ["| model | task | T | examples | metrics | seconds |", "|---|---|---|---|---|---|"]
    for e in entries:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(e["metrics"].items()))
        lines.append(f"| `{e['model']}` | {e['task']} | {e['length']} | {e['examples']} | {metrics} | {e['seconds']} |")
    if any(e["task"] == "digits" for e in entries):
        lines.append("\nT is the sequence length the model file records. The digits files were written before model "
                     "files recorded a task's own length, so they show --seq-len's default, 100; 8x8 digits run 64 "
                     "steps. The rows are keyed by that recorded value, which the shipped-model test matches.")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="only model files whose path contains this")
    p.add_argument("--redo", action="store_true", help="evaluate again entries already in test_sets.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    entries = json.load(open(JSON)) if os.path.exists(JSON) else []
    gone = sorted({e["model"] for e in entries if not os.path.isfile(os.path.join(HERE, e["model"]))})
    if gone:
        print(f"dropping the entries of missing model files: {', '.join(gone)}", file=sys.stderr)
        entries = [e for e in entries if e["model"] not in gone]
        write(entries)
    done = {(e["model"], e["length"]) for e in entries}
    paths = sorted(p for p in glob.glob(os.path.join(HERE, "*", "*", "model.pt")) if a.only in p)
    for path in paths:
        name = os.path.relpath(path, HERE)
        _, info = load_model(path, backend="cpu")
        if info["task"]["name"] == "chars" and not os.path.isfile(text_file(info)):
            print(f"skipping {name}: its text file {text_file(info)} is missing (make shakespeare)", file=sys.stderr)
            continue
        for length, examples in jobs(path):
            if (name, length) in done and not a.redo:
                continue
            t0 = time.perf_counter()
            metrics, examples = evaluate(path, length, examples)
            entry = {"model": name, "task": load_model(path, backend="cpu")[1]["task"]["name"], "length": length,
                     "examples": examples, "set": TEST_SET, "metrics": {k: round(v, 5) for k, v in metrics.items()},
                     "seconds": round(time.perf_counter() - t0, 1)}
            entries = [e for e in entries if (e["model"], e["length"]) != (name, length)] + [entry]
            entries.sort(key=lambda e: (e["model"], e["length"]))
            write(entries)
            print(json.dumps(entry), flush=True)


def write(entries):
    atomic_write(JSON, lambda f: f.write(json.dumps(entries, indent=1).encode("utf-8")))
    atomic_write(MD, lambda f: f.write(("# Shipped models on the standard test sets\n\nWritten by "
                                        "`test_sets.py` (see its docstring for what each test set is).\n\n"
                                        + table(entries)).encode("utf-8")))


if __name__ == "__main__":
    main()
