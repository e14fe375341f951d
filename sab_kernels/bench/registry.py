"""One registry: the benchmark cases (sizes, dtype, modes) and the implementations compared on them.

Add an implementation to `implementations()` or a size to `op_cases()` and the runner times it, the
verifier checks it against the reference first, and the report puts it in the tables and plots.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..reference import sparse_attention_reference

MODES = ("forward", "backward", "fwd+bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclasses.dataclass(frozen=True)
class OpCase:
    """One size of the op. `sweep` names the axis this case belongs to (T, B, D, k_top or dtype)."""

    sweep: str
    B: int
    T: int
    D: int
    H: int
    k_top: int
    dtype: str = "float32"
    modes: Tuple[str, ...] = MODES

    @property
    def key(self):
        """Identity of the measurement: the same sizes in two sweeps are measured once."""
        return (self.B, self.T, self.D, self.H, self.k_top, self.dtype)

    @property
    def label(self) -> str:
        return f"B={self.B} T={self.T} D={self.D} H={self.H} k_top={self.k_top} {self.dtype}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def make_inputs(self, device, seed: int = 0):
        """query (B, D), keys (B, T, D), values (B, T, H), score_weight (D,): standard normal, then cast."""
        g = torch.Generator().manual_seed(seed)
        shapes = ((self.B, self.D), (self.B, self.T, self.D), (self.B, self.T, self.H), (self.D,))
        return [torch.randn(*s, generator=g).to(device=device, dtype=self.torch_dtype) for s in shapes]

    def upstream_grad(self, device, seed: int = 1):
        """dL/dsummary used by every backward timing: fixed, random, in the input dtype."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.B, self.H, generator=g).to(device=device, dtype=self.torch_dtype)


@dataclasses.dataclass
class Impl:
    """An implementation: fn(query, keys, values, score_weight, k_top) -> (summary, weights, indices)."""

    name: str  # short id used on the command line and in the CSV
    label: str  # column title
    fn: Callable
    note: str = ""


# ---------------------------------------------------------------------------------------------- sizes

def _powers_of_4(lo: int, hi: int) -> List[int]:
    out, t = [], lo
    while t <= hi:
        out.append(t)
        t *= 4
    return out


def op_cases(device: str, quick: bool = False, T_values: Optional[Sequence[int]] = None, sweeps=None) -> List[OpCase]:
    """The op's benchmark cases on `device`.

    CPU base: B=32, D=H=128, k_top=8, float32 (the issue's target). CUDA base: the same in bfloat16.
    Full: T in 64 ... 65,536 (x4) in all three modes; B, D=H, k_top and dtype swept at one T in fwd+bwd.
    Quick: T in {64, 256, 1024} (CUDA: {256, 4096, 16384}), all modes, nothing else.
    """
    cuda = device == "cuda"
    base = dict(B=32, D=128, H=128, k_top=8, dtype="bfloat16" if cuda else "float32")
    quick_T = [256, 4096, 16384] if cuda else [64, 256, 1024]
    T_list = list(T_values) if T_values else (quick_T if quick else _powers_of_4(64, 65536))
    cases = [OpCase("T", T=T, **base) for T in T_list]
    if quick:
        return [c for c in cases if sweeps is None or c.sweep in sweeps]
    T_mid = 4096 if cuda else 1024
    one = ("fwd+bwd",)
    for B in (1, 8, 32, 128):
        cases.append(OpCase("B", T=T_mid, modes=one, **{**base, "B": B}))
    for D in (32, 64, 128, 256):
        cases.append(OpCase("D", T=T_mid, modes=one, **{**base, "D": D, "H": D}))
    for k in (1, 4, 8, 32, 128):
        cases.append(OpCase("k_top", T=T_mid, modes=one, **{**base, "k_top": k}))
    for dt in (("float32", "float16", "bfloat16") if cuda else ("float32", "bfloat16")):
        cases.append(OpCase("dtype", T=T_mid, modes=("forward", "fwd+bwd"), **{**base, "dtype": dt}))
    return [c for c in cases if sweeps is None or c.sweep in sweeps]


# ------------------------------------------------------------------------------------ implementations

def fused_backend(device: str) -> str:
    """The backend the fused column runs: Triton on CUDA, the compiled C++ kernels on CPU."""
    return "triton" if device == "cuda" else "cpu"


def fused_status(device: str) -> Tuple[bool, str]:
    """(really fused?, note). On CPU without the C++ extension the op falls back to the reference."""
    if device == "cuda":
        try:
            from ..kernels import get_backend

            get_backend("triton")
        except Exception as exc:  # noqa: BLE001 - a missing or broken kernel module
            return False, f"Triton backend not importable ({type(exc).__name__}: {exc})"
        return True, "sab_kernels.sparse_attention(backend='triton')"
    from ..kernels import cpu_backend

    if not cpu_backend.AVAILABLE:
        return False, (
            "C++ kernels NOT BUILT: backend='cpu' falls back to the PyTorch reference, so the 'fused' "
            "column measures the reference through the custom op (build with `pip install --no-build-isolation -e .`)"
        )
    return True, "sab_kernels.sparse_attention(backend='cpu'): the compiled C++ kernels"


def _fused(backend: str):
    from ..op import sparse_attention

    def fused(query, keys, values, score_weight, k_top):
        return sparse_attention(query, keys, values, score_weight, k_top, backend=backend)

    return fused


def _compiled_reference():
    """torch.compile of the eager reference, static shapes: each size is compiled once, outside the timing."""
    import torch._dynamo.config as dynamo_config

    # The sweeps visit more shapes than dynamo's default recompile limit (8) allows for one function.
    for name in ("recompile_limit", "cache_size_limit"):
        if getattr(dynamo_config, name, None) is not None:
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))
    compiled = torch.compile(sparse_attention_reference, dynamic=False)

    def compiled_reference(query, keys, values, score_weight, k_top):
        return compiled(query, keys, values, score_weight, k_top)

    return compiled_reference


def _eager(query, keys, values, score_weight, k_top):
    return sparse_attention_reference(query, keys, values, score_weight, k_top)


def _dense(query, keys, values, score_weight, k_top):
    from .baselines import dense_topk_attention

    return dense_topk_attention(query, keys, values, score_weight, k_top)


IMPL_NAMES = ("fused", "eager", "compiled", "dense")


def implementations(device: str, names: Optional[Sequence[str]] = None) -> Tuple[List[Impl], List[str]]:
    """The implementations to compare on `device`, and notes for the report (fallbacks, skips)."""
    names = list(names or IMPL_NAMES)
    unknown = set(names) - set(IMPL_NAMES)
    if unknown:
        raise ValueError(f"unknown implementation(s) {sorted(unknown)}; choose from {IMPL_NAMES}")
    impls, notes = [], []
    for name in names:
        if name == "fused":
            ok, note = fused_status(device)
            backend = fused_backend(device)
            if device == "cuda" and not ok:
                notes.append(f"fused: skipped, {note}")
                continue
            label = "fused (Triton)" if device == "cuda" else ("fused (C++)" if ok else "fused (C++ missing: reference fallback)")
            impls.append(Impl("fused", label, _fused(backend), note))
            if not ok:
                notes.append(f"fused: {note}")
        elif name == "eager":
            impls.append(Impl("eager", "eager reference", _eager, "sab_kernels.sparse_attention_reference, eager"))
        elif name == "compiled":
            impls.append(Impl("compiled", "compiled reference", _compiled_reference(),
                              "torch.compile(sparse_attention_reference, dynamic=False); compile time excluded"))
        elif name == "dense":
            impls.append(Impl("dense", "dense topk", _dense,
                              "what a user would write: all scores, torch.topk, gather (sab_kernels/bench/baselines.py)"))
    return impls, notes
