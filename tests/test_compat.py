"""Files and names from before sab-train became the sab_kernels/training/ package still work: every checkpoint
shipped under bench/results/training/ loads, rebuilds its model and is accepted by --resume with its own
settings; `python -m sab_kernels.model_file` turns one into a model file that loads; and the names code imported
from sab_kernels.train, sab_kernels.model_file and sab_kernels.evaluate are still there. (The shipped model files
themselves are re-evaluated by test_shipped_models.py.)"""

import glob
import os
import shutil

import pytest

from sab_kernels import train
from sab_kernels.model_file import load_model, model_description
from sab_kernels.nn import build_model
from sab_kernels.tasks import make_task
from sab_kernels.training.checkpoint import load_checkpoint

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results", "training")
CHECKPOINTS = sorted(glob.glob(os.path.join(ROOT, "*", "*", "checkpoint.pt")))
# The character-level runs need data/shakespeare.txt (`make shakespeare`, not in the repository) to rebuild their
# task; their checkpoints are still loaded below.
NEEDS_NO_DATA = [p for p in CHECKPOINTS if "chars_" not in p]


def _name(path):
    return os.path.relpath(os.path.dirname(path), ROOT)


def test_there_are_old_checkpoints_to_check():
    assert len(NEEDS_NO_DATA) >= 10, CHECKPOINTS


@pytest.mark.parametrize("path", CHECKPOINTS, ids=_name)
def test_a_shipped_checkpoint_loads_through_old_and_new_names(path):
    old, new = train.load_checkpoint(path), load_checkpoint(path)
    assert old["step"] == new["step"] > 0 and set(new) >= {"model", "optimizer", "step", "rows", "args"}


@pytest.mark.parametrize("path", NEEDS_NO_DATA, ids=_name)
def test_a_shipped_checkpoint_rebuilds_its_model_and_resumes_with_its_own_settings(path, tmp_path):
    ckpt = load_checkpoint(path)
    saved = ckpt["args"]
    task = make_task(saved["task"], saved["seq_len"], saved["input"], saved["data"], not saved["no_permute"],
                     saved["seed"])
    build, _ = model_description(saved, task)
    kwargs = {k: build[k] for k in ("k_top", "k_att", "k_trunc", "attn_dim", "eps")}
    model = build_model(build["kind"], build["input_size"], build["hidden_size"], build["output_size"], backend="cpu",
                        **kwargs)
    model.load_state_dict(ckpt["model"])  # strict: every weight of the old file has its place
    # --resume in a folder holding this checkpoint, with the settings it records: accepted (no "other settings").
    os.symlink(path, tmp_path / "checkpoint.pt")
    args = train.parse_args([saved["task"]])  # defaults for what older checkpoints did not record
    vars(args).update(saved)
    vars(args).update(out=str(tmp_path), resume=True, overwrite=False, device="cpu", threads=None)
    train.check_args(args)


def test_model_file_cli_exports_an_old_checkpoint(tmp_path):
    src = os.path.join(ROOT, "copy_T100_h128", "sab_seed0", "checkpoint.pt")
    shutil.copy(src, tmp_path / "checkpoint.pt")
    from sab_kernels import model_file

    assert model_file.main([str(tmp_path)]) == 0
    model, info = load_model(str(tmp_path / "model.pt"), backend="cpu")
    assert info["task"]["name"] == "copy" and info["metrics"]["step"] == load_checkpoint(src)["step"]
    assert model_file.main([str(tmp_path / "nowhere")]) == 2


def test_the_old_import_paths_still_work():
    from sab_kernels.evaluate import evaluate_task  # noqa: F401
    from sab_kernels.model_file import export_checkpoint, save_model  # noqa: F401
    from sab_kernels.train import (RESUME_MUST_MATCH, clip_gradients, evaluate, main, parse_args, read_rows,  # noqa: F401
                                   run, transfer_lengths)

    assert "seed" in RESUME_MUST_MATCH and transfer_lengths("200,300") == [200, 300]
