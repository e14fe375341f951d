"""The model files shipped under bench/results/training/ re-evaluate to the numbers recorded when they were trained
(and quoted in the README): sab-train's own evaluation (`train.evaluate`, with the run's arguments stored in the
file) gives every metric back to the 5 decimals it was stored with. This catches any change to the op, the modules,
the tasks' generators or the model-file format that would silently alter a published result.
"""

import glob
import os

import pytest

from sab_kernels import train
from sab_kernels.model_file import load_model
from sab_kernels.tasks import make_task

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results", "training")
# The character-level models need data/shakespeare.txt (`make shakespeare`, not in the repository); their stateful
# evaluation is covered by test_stateful_chars.py.
SHIPPED = sorted(p for p in glob.glob(os.path.join(ROOT, "*", "*", "model.pt")) if "chars_" not in p)
# The README's headline copy models: solved (acc10 >= 0.99) at the delay they were trained on.
HEADLINE = ["copy_T100_h128/sab_seed0", "copy_T100_h128/sab_seed1", "copy_T200_h128/sab_seed1",
            "copy_T200_h128/sab_seed2", "copy_T300_h128/sab_seed1", "copy_T300_h128/sab_seed2"]


def _name(path):
    return os.path.relpath(os.path.dirname(path), ROOT)


def test_the_headline_models_are_shipped_and_solved():
    shipped = {_name(p): p for p in SHIPPED}
    for name in HEADLINE:
        assert name in shipped, f"{name}/model.pt is quoted in the README but missing"
        _, info = load_model(shipped[name], backend="cpu")
        assert info["task"]["name"] == "copy" and info["metrics"]["acc10"] >= 0.99, (name, info["metrics"])


@pytest.mark.parametrize("path", SHIPPED, ids=_name)
def test_a_shipped_model_re_evaluates_to_its_recorded_metrics(path):
    model, info = load_model(path, backend="cpu")
    t = info["task"]
    task = make_task(t["name"], t["seq_len"], t["input"], t["data"], t["permute"], t["seed"])
    args = train.parse_args([t["name"]])  # defaults for what older files did not store (e.g. --stateful)
    vars(args).update(info["train_args"])
    got = train.evaluate(model, task, args, "cpu")
    for k, v in got.items():
        assert v == pytest.approx(info["metrics"][k], abs=1e-5), (k, v, info["metrics"][k])
