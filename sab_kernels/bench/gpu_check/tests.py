"""Step 1: every CUDA test. tests/test_triton.py runs each of its cases on the GPU when there is one (and the
CUDA-only tests: large shapes, 64-bit offsets, determinism); the CPU mode runs a few cases in the interpreter."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET

from .config import CheckConfig
from .steps import StepResult


def run_tests(cfg: CheckConfig, root: str, out_dir: str, env: dict) -> StepResult:
    xml = os.path.join(out_dir, "tests.xml")
    cmd = [sys.executable, "-m", "pytest", *cfg.test_args, f"--junitxml={xml}"]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=cfg.test_timeout_s)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-3000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return StepResult("tests", False, f"timed out after {cfg.test_timeout_s} s", f"```\n{tail}\n```")
    with open(os.path.join(out_dir, "tests.log"), "w") as f:
        f.write(proc.stdout + proc.stderr)
    counts = _junit_counts(xml)
    last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    ok = proc.returncode == 0 and counts.get("tests", 0) > 0
    summary = (f"{counts.get('passed', 0)} passed, {counts.get('failures', 0) + counts.get('errors', 0)} failed, "
               f"{counts.get('skipped', 0)} skipped: {last}")
    details = f"`{shlex.join(['python', '-m', 'pytest', *cfg.test_args])}` (full log: tests.log)"
    failed = [c for c in counts.get("failed_names", [])]
    if failed:
        details += "\n\nFailed:\n" + "\n".join(f"- `{n}`" for n in failed[:50])
    if proc.returncode not in (0, 1):
        details += f"\n\npytest exit status {proc.returncode}:\n```\n{(proc.stdout + proc.stderr)[-3000:]}\n```"
    row = dict(step="tests", what="pytest", value=counts.get("passed", 0), unit="passed",
               note=f"failed {counts.get('failures', 0) + counts.get('errors', 0)}, skipped {counts.get('skipped', 0)}")
    return StepResult("tests", ok, summary, details, [row])


def _junit_counts(path: str) -> dict:
    """tests / failures / errors / skipped / passed and the failed test names from a JUnit XML file."""
    if not os.path.exists(path):
        return {}
    suites = ET.parse(path).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites.iter("testsuite"))
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "failed_names": []}
    for s in suites:
        for key in ("tests", "failures", "errors", "skipped"):
            out[key] += int(s.get(key, 0))
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                out["failed_names"].append(f"{case.get('classname')}::{case.get('name')}")
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    return out
