"""Peak memory of one run, measured the same way for every implementation.

CUDA: in process, `torch.cuda.max_memory_allocated()` above the bytes allocated before the run
(`timing.peak_memory`).

CPU: the growth of the resident set, peak VmHWM minus VmRSS before the run, measured in a separate worker
process (`python -m sab_kernels.bench.memory_worker`, which no module imports) so the timing process's allocator is left as it is. The
worker makes every allocation of 64 KiB or more its own mmap (glibc `M_MMAP_THRESHOLD`), so freed memory
leaves the resident set at once and the high-water mark is exact to a page; it resets the mark through
/proc/self/clear_refs just before the run. This counts everything that is really resident: tensors, the
C++ kernels' gradient buffers (fresh zero pages from the OS, of which only the pages written become
resident), autograd buffers, malloc scratch. The worker rebuilds the same inputs (same seeds) and
implementations by name, warms each up once (compiling, for torch.compile), then measures a second run.
Where that is not possible (no /proc, an implementation the worker cannot rebuild) the fallback is the
PyTorch profiler's count of allocator bytes in process, which does not see memory a kernel maps itself;
the report says which method was used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Optional

PROTOCOL_FD_ENV = "SAB_BENCH_MEMORY_FD"
WORKER_MODULE = "sab_kernels.bench.memory_worker"  # the worker's side: memory_worker.py

RSS_METHOD = ("peak resident-set growth (VmHWM - VmRSS) of one run after a warm-up run, in a separate worker "
              "process that maps every allocation >= 64 KiB on its own so freed memory leaves the RSS; counts all "
              "resident memory (tensors, lazily zeroed gradient pages only as far as written, malloc scratch); "
              "inputs not counted")
PROFILER_METHOD = ("PyTorch CPU allocator bytes (torch.profiler profile_memory), peak above the bytes live before the "
                   "run; does not see memory a kernel maps itself (the C++ kernels' lazily zeroed gradients)")


@dataclasses.dataclass
class MemoryMeter:
    """Peak memory for the runner: CUDA in process; CPU through the RSS worker when it starts, else the profiler."""

    device: str
    threads: Optional[int] = None
    use_worker: bool = True

    def __post_init__(self):
        self.proc: Optional[subprocess.Popen] = None
        self.method = "torch.cuda.max_memory_allocated above the bytes allocated before the run" if self.device == "cuda" else PROFILER_METHOD
        self.last_error = ""
        if self.device == "cpu" and self.use_worker and sys.platform.startswith("linux"):
            self._start()

    def _start(self) -> None:
        import torch

        read_fd, write_fd = os.pipe()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        env[PROTOCOL_FD_ENV] = str(write_fd)
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # idle worker threads must not spin on cores the timing process uses
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, text=True,
                                         pass_fds=(write_fd,))
        except OSError as exc:
            self.last_error = str(exc)
            os.close(read_fd)
            os.close(write_fd)
            return
        os.close(write_fd)
        self.replies = os.fdopen(read_fd, "r")
        ok, value = self._ask({"kind": "init", "threads": self.threads or torch.get_num_threads()})
        if ok:
            self.method = RSS_METHOD
        else:
            self.last_error = str(value)
            self.close()

    def _ask(self, req):
        if self.proc is None:
            return False, "no worker"
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.replies.readline()
        except OSError:  # BrokenPipeError included
            line = ""
        if not line:  # the worker died (killed for memory, a crash): restart it for the next request
            code = self.proc.poll()
            self.close()
            self._start()
            return False, f"memory worker died (exit {code})"
        reply = json.loads(line)
        return reply["ok"], reply.get("value") if reply["ok"] else reply.get("error")

    @property
    def uses_worker(self) -> bool:
        return self.proc is not None

    def op(self, case, impl, mode: str, fn, setup, leaves) -> Optional[int]:
        """Peak bytes of one run of (case, implementation, mode); fn/setup/leaves are the in-process callables."""
        from . import timing
        from .registry import IMPL_NAMES

        if self.device == "cpu" and self.uses_worker:
            if impl.name not in IMPL_NAMES:
                return None  # the worker cannot rebuild it: no number rather than one measured another way
            ok, value = self._ask({"kind": "op", "case": dataclasses.asdict(case), "impl": impl.name, "mode": mode})
            return int(value) if ok else None
        return timing.peak_memory(self.device, fn, setup, leaves)

    def lstm(self, quick: bool, T: int, name: str, step) -> Optional[int]:
        from . import timing

        if self.device == "cpu" and self.uses_worker:
            ok, value = self._ask({"kind": "lstm", "quick": quick, "T": T, "name": name})
            return int(value) if ok else None
        return timing.peak_memory(self.device, step)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
            self.proc = None

