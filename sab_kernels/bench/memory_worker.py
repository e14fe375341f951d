"""The CPU memory worker (`python -m sab_kernels.bench.memory_worker`, started by memory.MemoryMeter): rebuilds a
benchmark's inputs and implementations by name, runs each once to warm up, then measures the resident-set growth
of a second run and answers on the protocol fd. See memory.py for the method. No module imports this one: it
imports the runner and the sections (to rebuild what they time), which import memory.py for the parent side.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
from typing import Callable

from .memory import PROTOCOL_FD_ENV

M_MMAP_THRESHOLD = -3


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_high_water_mark() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_peak_bytes(call: Callable[[], None]) -> int:
    """Peak resident bytes during call() above those resident before it (Linux)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
    base = _status_bytes("VmRSS")
    _reset_high_water_mark()
    call()
    return max(0, _status_bytes("VmHWM") - base)


class _Worker:
    def __init__(self):
        self.inputs = {}
        self.impls = {}

    # torch and the benchmark modules are imported inside, after serve() has set M_MMAP_THRESHOLD.
    def op(self, req):
        from .registry import OpCase, implementations
        from .runner import mode_callables

        case = OpCase(**{**req["case"], "modes": tuple(req["case"]["modes"])})
        if case.key not in self.inputs:
            self.inputs = {case.key: case.make_inputs("cpu")}  # one case at a time
        if req["impl"] not in self.impls:
            self.impls[req["impl"]] = implementations("cpu", [req["impl"]])[0][0]
        fn, setup, leaves = mode_callables(self.impls[req["impl"]], self.inputs[case.key], case.k_top, req["mode"],
                                           case.upstream_grad("cpu"))
        return self._measure(fn, setup, leaves)

    def lstm(self, req):
        from .sections import lstm_step

        step = lstm_step("cpu", req["quick"], req["T"], req["name"])
        return self._measure(step, None, ())

    @staticmethod
    def _measure(fn, setup, leaves):
        def once(measure):
            for leaf in leaves:
                leaf.grad = None
            arg = setup() if setup is not None else None
            call = (lambda: fn(arg)) if setup is not None else fn
            return rss_peak_bytes(call) if measure else call()

        once(False)  # warm-up: compilation, lazy initialisation, optimizer state
        return once(True)


def serve() -> None:
    """Answer JSON requests, one per line on stdin, on the protocol fd; everything else goes to stderr."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    except (OSError, AttributeError):
        pass
    out = os.fdopen(int(os.environ.get(PROTOCOL_FD_ENV, "1")), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (C or Python) must not reach the protocol
    import warnings

    warnings.simplefilter("ignore")
    import torch

    worker = _Worker()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["kind"] == "init":
                if req.get("threads"):
                    torch.set_num_threads(req["threads"])
                _reset_high_water_mark()
                _status_bytes("VmHWM")
                reply = {"ok": True, "value": torch.get_num_threads()}
            elif req["kind"] == "op":
                reply = {"ok": True, "value": worker.op(req)}
            elif req["kind"] == "lstm":
                reply = {"ok": True, "value": worker.lstm(req)}
            else:
                reply = {"ok": False, "error": f"unknown request {req['kind']!r}"}
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            reply = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        out.write(json.dumps(reply) + "\n")




if __name__ == "__main__":
    serve()
