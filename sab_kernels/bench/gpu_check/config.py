"""Sizes of every step of the GPU check: one set for a GPU (about 8 minutes on an H100/H200) and one tiny
set for the CPU mode (Triton in the interpreter, a couple of minutes on 2 cores)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    device: str
    # CUDA tests: test files, an optional -k expression, parallel pytest processes, a time limit.
    test_paths: Tuple[str, ...]
    test_k: Optional[str]
    test_shards: int
    test_timeout_s: int
    # The op benchmark: `python -m sab_kernels.bench` arguments (device and output added by bench.py).
    bench_args: Tuple[str, ...]
    bench_timeout_s: int
    # Targets are judged on the benchmark's T sweep at these sizes.
    target_dtype: str
    speedup_min_T: int  # fused fwd+bwd vs eager / compiled at T >= this
    roofline_T: int  # forward bandwidth roofline at this T
    # SAB-LSTM (fused and per-step paths) vs nn.LSTM: training step and inference, rows of (T, B, H, timed reps).
    lstm_rows: Tuple[Tuple[int, int, int, int], ...]
    per_step_max_T: int  # the per-step path is timed up to this T
    lstm_warmup: int
    sync_T: int  # sequence length of the host-sync count
    # Copy-task training.
    copy_T: int
    copy_B: int
    copy_hidden: int
    copy_steps: int
    copy_lr: float
    copy_eval_every: int
    copy_eval_size: int
    copy_backend: str = "auto"  # sparse-attention backend of the copy run
    k_top: int = 5
    k_att: int = 1
    k_trunc: int = 5
    peak_bandwidth: Optional[float] = None  # bytes/s override for the roofline


def gpu_config() -> CheckConfig:
    return CheckConfig(
        device="cuda",
        test_paths=("tests/test_triton.py",),
        test_k=None,
        test_shards=4,  # compiling the kernel variants dominates: spread it over processes
        test_timeout_s=240,
        # B=32 D=H=128 k_top=8 bfloat16 (the quick CUDA sweep's base), at the targets' two sizes only:
        # torch.compile of the reference compiles once per size, which dominates the benchmark's time.
        bench_args=("--quick", "--sections", "op,overhead", "--T", "4096,65536"),
        bench_timeout_s=240,
        target_dtype="bfloat16",
        speedup_min_T=4096,
        roofline_T=65536,
        lstm_rows=((128, 8, 64, 10), (100, 64, 128, 10), (1000, 64, 128, 3), (4096, 16, 128, 2)),  # the rows
        per_step_max_T=1000,
        lstm_warmup=2,
        sync_T=128,
        copy_T=10,
        copy_B=64,
        copy_hidden=128,
        copy_steps=1200,
        copy_lr=3e-3,
        copy_eval_every=100,
        copy_eval_size=512,
    )


def cpu_config() -> CheckConfig:
    return CheckConfig(
        device="cpu",
        test_paths=("tests/test_triton.py",),
        test_k="test_matches_reference and (B1-T1-D1-H1-k1-full or B6-T33) and fp32",
        test_shards=2,  # the sharded path, as on a GPU
        test_timeout_s=120,
        bench_args=("--quick", "--sections", "op,overhead", "--T", "64,256", "--impls", "fused,eager",
                    "--threads", "1"),
        bench_timeout_s=180,
        target_dtype="float32",
        speedup_min_T=64,
        roofline_T=256,
        # The interpreter runs one program after another on numpy: a few steps only.
        lstm_rows=((4, 4, 16, 1), (8, 4, 16, 1)),
        per_step_max_T=8,
        lstm_warmup=1,
        sync_T=4,
        copy_T=3,
        copy_B=16,
        copy_hidden=16,
        copy_steps=40,
        copy_lr=1e-2,
        copy_eval_every=20,
        copy_eval_size=32,
        copy_backend="cpu",  # 40 steps of 23 time steps would take minutes in the interpreter: the C++ kernels
    )
