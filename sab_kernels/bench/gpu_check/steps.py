"""What every step returns, and how a step's failure is caught without stopping the others."""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any, Callable, Dict, List


@dataclasses.dataclass
class StepResult:
    """name; ok (False: the check fails, exit status 1); summary (one line); details (Markdown);
    rows (flat dicts for the CSV); seconds (wall time of the step)."""

    name: str
    ok: bool
    summary: str
    details: str = ""
    rows: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    data: Dict[str, Any] = dataclasses.field(default_factory=dict)  # for plots and verdicts


def run_step(name: str, fn: Callable[[], StepResult]) -> StepResult:
    """Run one step, time it, and turn an exception into a failed step (the report says where it broke)."""
    print(f"gpu-check: {name} ...", flush=True)
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - a broken step must not hide the others
        tb = traceback.format_exc(limit=8)
        result = StepResult(name, False, f"crashed: {type(exc).__name__}: {exc}", f"```\n{tb}\n```")
    result.seconds = time.perf_counter() - t0
    print(f"gpu-check: {name}: {'ok' if result.ok else 'FAILED'} ({result.seconds:.0f} s): {result.summary}", flush=True)
    return result
