"""The README's results table is generated (bench/results/training/headline.py) from the committed run files:
test_sets.json and each run's metrics.csv. A hand edit, or a results file committed without regenerating the
table, fails here."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _headline():
    path = os.path.join(ROOT, "bench", "results", "training", "headline.py")
    spec = importlib.util.spec_from_file_location("headline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_what_the_committed_files_give():
    headline = _headline()
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert headline.readme_block(f.read()) == headline.table(), \
            "stale: run python bench/results/training/headline.py"


def test_the_ordering_verdict_compares_with_the_paper():
    h = _headline()
    exp = h.Experiment("x", "acc", True, {}, {"sab": 0.94, "lstm": 0.90})
    assert h.verdict(exp, {"sab": 0.8, "lstm": 0.85}).startswith("**not reproduced** (SAB vs full BPTT)")
    assert h.verdict(exp, {"sab": 0.9, "lstm": 0.85}).startswith("reproduced: SAB > full BPTT")
    assert h.verdict(exp, {"sab": 0.9}) == "not compared yet: our runs are missing"
    low = h.Experiment("x", "bpc", False, {}, {"sab": 1.37, "tbptt": 1.47})
    assert h.verdict(low, {"sab": 2.0, "tbptt": 1.9}).startswith("**not reproduced**")
    assert h.cell([0.5, 0.7], exp) == "0.600 (0.500–0.700), 2 seeds"


def test_an_equal_update_row_compares_every_run_at_the_budget_the_slowest_has_logged(monkeypatch):
    h = _headline()
    logs = {"a0": [250, 500, 750], "a1": [250, 500, 750, 1000], "b0": [250, 500], "b1": [250, 500, 750]}
    monkeypatch.setattr(h, "run_rows", lambda run: [
        {"step": s, "acc": s / 1000, "seconds": 3.6 * s} for s in logs[run]])
    exp = h.Experiment("task at {at}", "acc", True, {"sab": ["a0", "a1"], "dense": ["b0", "b1"]}, at=h.COMMON)
    assert h.common_update(exp) == 500
    assert h.resolve(exp).title == "task at 500 updates"
    assert h.score(h.resolve(exp), "a1", {}) == (0.5, 500, 0.5)
    logs["b1"] = []  # a run with no evaluation yet: no common budget, and the title says so
    assert h.common_update(exp) is None
    assert "not every run has logged one yet" in h.resolve(exp).title
    assert h.score(h.resolve(exp), "a0", {}) is None
