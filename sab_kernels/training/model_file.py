"""A trained model in one file that anyone can load safely and re-evaluate.

    {"format": "sab-kernels/model", "version": 1,
     "build": {kind, input_size, hidden_size, output_size, k_top, k_att, k_trunc, attn_dim},   # build_model's arguments
     "task": {name, seq_len, input, permute, seed, data, [stateful, memory_window]},          # make_task's arguments
     "state_dict": {...}, "metrics": {...}, "train_args": {...}}   # the sab-train settings, when it wrote the file

`python -m sab_kernels.model_file RUN_DIR` (sab_kernels/model_file.py, the command-line face of this module) writes
RUN_DIR/model.pt from the latest checkpoint of a `sab-train` run (sab-train writes it itself when a run reaches
--steps).

Only plain values (tensors, numbers, strings, lists, dicts): `load_model` reads it with
`torch.load(..., weights_only=True)`, so a file from elsewhere cannot run code. Written atomically (a temporary
file in the same folder, fsync, rename): a failed save leaves the previous file intact.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .._io import atomic_write
from ..reference import EPS
from .checkpoint import load_checkpoint, load_error

FORMAT, VERSION = "sab-kernels/model", 1
BUILD_KEYS = ("kind", "input_size", "hidden_size", "output_size", "k_top", "k_att", "k_trunc", "attn_dim", "eps")
TASK_KEYS = ("name", "seq_len", "input", "permute", "seed", "data")
OPTIONAL_TASK_KEYS = ("stateful", "memory_window")
# build_model's later arguments: written when they differ from the default, so older files stay valid.
OPTIONAL_BUILD_KEYS = {"num_layers": 1, "dropout": 0.0, "recent_slots": None, "relevant_slots": None}  # chars models trained with --stateful are evaluated that way


def save_model(path: str, model: nn.Module, build: Dict[str, Any], task: Dict[str, Any],
               metrics: Optional[Dict[str, Any]] = None, train_args: Optional[Dict[str, Any]] = None) -> None:
    """Write `model` (built by build_model(**build)) with what rebuilds and re-evaluates it."""
    missing = [k for k in BUILD_KEYS if k not in build] + [k for k in TASK_KEYS if k not in task]
    if missing:
        raise ValueError(f"save_model: build/task lack {missing}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    optional = {k: build[k] for k, default in OPTIONAL_BUILD_KEYS.items() if build.get(k, default) != default}
    blob = {"format": FORMAT, "version": VERSION, "build": {**{k: build[k] for k in BUILD_KEYS}, **optional},
            "task": {k: task[k] for k in TASK_KEYS + OPTIONAL_TASK_KEYS if k in task}, "state_dict": state, "metrics": dict(metrics or {}),
            "train_args": dict(train_args or {})}
    atomic_write(path, lambda f: torch.save(blob, f))


def load_model(path: str, device="cpu", backend: str = "auto") -> Tuple[nn.Module, Dict[str, Any]]:
    """(model in eval mode, the file's dict without the weights). Raises ValueError for anything that is not a
    model file of this format (a checkpoint, a truncated file, a pickle with code)."""
    from ..nn import build_model

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling errors of every kind
        raise ValueError(f"{path}: not a readable sab-kernels model file ({load_error(path, exc)})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a sab-kernels model file (format {FORMAT!r} expected)")
    if blob.get("version") != VERSION:
        raise ValueError(f"{path}: model file version {blob.get('version')!r}, this package reads {VERSION}")
    build = dict(blob["build"])
    model = build_model(build.pop("kind"), build.pop("input_size"), build.pop("hidden_size"), build.pop("output_size"),
                        backend=backend, **build)
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return model, {k: v for k, v in blob.items() if k != "state_dict"}


def init_weights(path: str) -> Dict[str, Any]:
    """The state dict of model file `path`, to start a run from (sab-train --init)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a sab-kernels model file (format {FORMAT!r})")
    return blob["state_dict"]


def model_description(a: Dict[str, Any], task) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(build, task) entries of a model file from sab-train's arguments `a` (a dict, as a checkpoint stores them)
    and the task built from them. Arguments that older checkpoints lack get their defaults."""
    build = dict(kind=a["model"], input_size=task.input_size, hidden_size=a["hidden"], output_size=task.output_size,
                 k_top=a["k_top"], k_att=a["k_att"], k_trunc=a["k_trunc"] or None, attn_dim=a["attn_dim"],
                 eps=a.get("eps", EPS))
    build.update({k: a.get(k, default) for k, default in OPTIONAL_BUILD_KEYS.items()})
    # seq_len: the task's own sequence length where it has one (784 for mnist5k, 64 for digits; --seq-len is unused
    # there), so `evaluate` reports the length the model really ran at.
    task_info = dict(name=a["task"], seq_len=getattr(task, "seq_len", a["seq_len"]), input=a["input"], permute=not a["no_permute"],
                     seed=a["seed"], data=a["data"], stateful=a.get("stateful", False),
                     memory_window=a.get("memory_window", 0))
    return build, task_info


def checkpoint_model(path: str, root: Optional[str] = None, backend: str = "cpu") -> Tuple[dict, Any, nn.Module]:
    """(checkpoint, task, model) of the sab-train checkpoint at `path`: the task and model its arguments build,
    with the checkpoint's weights. root: the folder the run was started from, which a relative --data path is
    relative to (default: the current one)."""
    ckpt, task, _, _, model = _checkpoint_parts(path, root, backend)
    return ckpt, task, model


def _checkpoint_parts(path: str, root: Optional[str], backend: str):
    """checkpoint_model's (checkpoint, task, model) with the model file's (build, task) entries in the middle."""
    from ..nn import build_model
    from ..tasks import make_task

    ckpt = load_checkpoint(path)
    a = ckpt["args"]
    data = os.path.join(root, a["data"]) if root and a["data"] else a["data"]
    task = make_task(a["task"], a["seq_len"], a["input"], data, not a["no_permute"], a["seed"])
    build, task_info = model_description(a, task)
    kwargs = {k: build[k] for k in ("k_top", "k_att", "k_trunc", "attn_dim", "eps", *OPTIONAL_BUILD_KEYS)}
    model = build_model(build["kind"], build["input_size"], build["hidden_size"], build["output_size"], backend=backend,
                        **kwargs)
    model.load_state_dict(ckpt["model"])
    return ckpt, task, build, task_info, model


def export_checkpoint(run_dir: str) -> str:
    """Write run_dir/model.pt from run_dir/checkpoint.pt of a sab-train run; returns the path."""
    ckpt, _, build, task_info, model = _checkpoint_parts(os.path.join(run_dir, "checkpoint.pt"), None, "cpu")
    path = os.path.join(run_dir, "model.pt")
    metrics = {**(ckpt["rows"][-1] if ckpt["rows"] else {}), "step": ckpt["step"]}
    save_model(path, model, build, task_info, metrics=metrics, train_args=ckpt["args"])
    return path

