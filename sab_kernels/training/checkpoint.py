"""sab-train checkpoints: what one holds, how it is written and read, and the rules for resuming from it.

A checkpoint (OUT/checkpoint.pt) is a dict of plain values only (tensors, numbers, strings, lists, dicts), so it
loads with `torch.load(..., weights_only=True)`:
    {"model": state_dict, "optimizer": state_dict, "step": int, "rows": [metrics rows], "seconds": float,
     "args": {the latest run's arguments}, "carried": packed state of a --stateful run or None}
It is written atomically (temporary file, fsync, rename), so a run killed mid-save keeps the previous one.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Dict, List, Optional

import torch

from .._io import atomic_write
from ..nn import SABState

# Settings that define the trained model and its data: a resumed run must use the checkpoint's values.
RESUME_MUST_MATCH = ("task", "model", "seq_len", "k_top", "k_att", "k_trunc", "hidden", "attn_dim", "batch_size",
                     "lr", "clip", "skip_norm", "lr_schedule", "warmup", "eps", "seed", "input", "data", "no_permute", "eval_size",
                     "stateful", "memory_window", "num_layers", "dropout", "recent_slots", "relevant_slots",
                     "flush_denormal")
# The files of a run in OUT; an OUT holding any of them is a run that must not be overwritten by accident.
OUTPUTS = ("checkpoint.pt", "metrics.csv", "final.json", "curve.png", "model.pt")
REQUIRED = ("model", "optimizer", "step", "rows", "args")


def load_error(path: str, exc: BaseException) -> str:
    """Why torch.load(path, weights_only=True) failed, in a few words and without torch's advice to retry with
    weights_only=False: this package never loads a file that could run code."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a bare pickle starts with its protocol byte
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK":
            return "a truncated or damaged torch.save file"
        if head[:1] != b"\x80":
            return "it is not a file written by torch.save"
    if isinstance(exc, pickle.UnpicklingError) or "weights only" in str(exc).lower():
        return ("it holds Python objects other than plain tensors, numbers, strings, lists and dicts, which this "
                "package refuses to load")
    first = " ".join(str(exc).split()).split(". ")[0]  # torch's messages run to several sentences
    return f"{type(exc).__name__}: {first}"


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A checkpoint written by sab-train (plain values only, loaded with weights_only=True); ValueError if it is
    unreadable, truncated or not one of ours."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - EOFError, zip and unpickling errors all mean "corrupt"
        raise ValueError(f"{path} is not a readable checkpoint ({load_error(path, exc)}); remove it or use "
                         "--overwrite to start again") from None
    missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a sab-train checkpoint (missing {', '.join(missing)})")
    return ckpt


def save_checkpoint(path: str, model, optimizer, step: int, rows: List[dict], seconds: float, args: Dict,
                    carried=None) -> None:
    """Write a checkpoint atomically (see the module docstring for its layout)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "rows": rows,
             "seconds": seconds, "args": dict(args), "carried": pack_state(carried)}
    atomic_write(path, lambda f: torch.save(state, f))


def resume_mismatches(saved: Dict, now: Dict) -> List[str]:
    """The settings of `now` (a run's arguments) that differ from a checkpoint's `saved` ones, one phrase each;
    empty when the run may resume. --steps must match too under the cosine schedule (it sets the decay)."""
    must_match = RESUME_MUST_MATCH + (("steps",) if now.get("lr_schedule") == "cosine" else ())
    return [f"--{k.replace('_', '-')} {saved[k]!r} in the checkpoint, {now[k]!r} now"
            for k in must_match if k in saved and k in now and saved[k] != now[k]]


def pack_state(state) -> Optional[dict]:
    """A carried state as plain tensors and ints (loads with weights_only=True); None stays None."""
    if state is None:
        return None
    packed = {"h": state[0], "c": state[1]}
    if isinstance(state, SABState):
        packed.update(memory=state.memory, step=state.step)
    return packed


def unpack_state(packed: Optional[dict]):
    """The inverse of pack_state."""
    if packed is None:
        return None
    if "step" in packed:
        return SABState(packed["h"], packed["c"], packed["memory"], packed["step"])
    return packed["h"], packed["c"]
