"""Step 1: every CUDA test. tests/test_triton.py runs each of its cases on the GPU when there is one (and the
CUDA-only tests: large shapes, 64-bit offsets, determinism); the CPU mode runs a few cases in the interpreter.

On a GPU most of the time goes to compiling the kernels' many constexpr variants (one per shape and dtype),
so the collected tests are split round-robin over `test_shards` pytest processes that run side by side
(they share the GPU and Triton's on-disk cache).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from typing import List

from .config import CheckConfig
from .steps import StepResult


OPTIONS = ("-q", "-p", "no:cacheprovider")


def selection(cfg: CheckConfig) -> List[str]:
    """pytest arguments that select the tests of `cfg`."""
    return [*cfg.test_paths, *(["-k", cfg.test_k] if cfg.test_k else [])]


def collect(cfg: CheckConfig, root: str, env: dict) -> List[str]:
    """Node ids of the selected tests."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *OPTIONS[1:], *selection(cfg)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    return [line.strip() for line in proc.stdout.splitlines() if "::" in line]


def run_tests(cfg: CheckConfig, root: str, out_dir: str, env: dict) -> StepResult:
    shown = shlex.join(["python", "-m", "pytest", *selection(cfg)])
    missing = [m for m in ("pytest", "hypothesis", "numpy") if importlib.util.find_spec(m) is None]
    if missing:  # a GPU machine without network may lack the test extras
        return StepResult("tests", False, f"cannot run the tests: {', '.join(missing)} not installed in {sys.executable}",
                          f"`{shown}` needs the test extras (`pip install pytest hypothesis numpy`, or wheels copied over)")
    node_ids = collect(cfg, root, env) if cfg.test_shards > 1 else []
    # Round-robin, so every process gets a share of each kind of test; one process when not sharded.
    shards = [s for s in (node_ids[i::cfg.test_shards] for i in range(cfg.test_shards)) if s] or [selection(cfg)]
    procs, logs, xmls = [], [], []
    for i, args in enumerate(shards):
        xmls.append(os.path.join(out_dir, f"tests-{i}.xml"))
        logs.append(open(os.path.join(out_dir, f"tests-{i}.log"), "w"))
        cmd = [sys.executable, "-m", "pytest", *OPTIONS, *args, f"--junitxml={xmls[-1]}"]
        procs.append(subprocess.Popen(cmd, cwd=root, env=env, stdout=logs[-1], stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + cfg.test_timeout_s
    timed_out = False
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            p.kill()
            p.wait()
    for log in logs:
        log.close()
    counts = _merge([_junit_counts(x) for x in xmls])
    codes = [p.returncode for p in procs]
    failed = counts["failures"] + counts["errors"]
    ok = not timed_out and all(c == 0 for c in codes) and counts["tests"] > 0
    summary = (f"{counts['passed']} passed, {failed} failed, {counts['skipped']} skipped"
               + (f" in {len(shards)} parallel pytest processes" if len(shards) > 1 else "")
               + (f"; TIMED OUT after {cfg.test_timeout_s} s" if timed_out else ""))
    details = f"`{shown}`" + (f", split over {len(shards)} processes" if len(shards) > 1 else "") + " (logs: tests*.log)"
    if counts["failed_names"]:
        details += "\n\nFailed:\n" + "\n".join(f"- `{n}`" for n in counts["failed_names"][:50])
    bad = [c for c in codes if c not in (0, 1)]
    if bad and not timed_out:
        details += f"\n\npytest exit status {bad}: see the logs"
    row = dict(step="tests", what="pytest", value=counts["passed"], unit="passed",
               note=f"failed {failed}, skipped {counts['skipped']}")
    return StepResult("tests", ok, summary, details, [row])


def _merge(all_counts: List[dict]) -> dict:
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "passed": 0, "failed_names": []}
    for c in all_counts:
        for key in out:
            out[key] += c.get(key, [] if key == "failed_names" else 0)
    return out


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
