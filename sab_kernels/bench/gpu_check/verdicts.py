"""Step 3: the GPU targets, judged from the benchmark's rows (the op's T sweep at B=32, D=H=128, k_top=8).

- fused forward + backward >= 5x the eager reference and >= 2x torch.compile of it, at every T >= 4096, bfloat16;
- fused forward >= 60% of the HBM bandwidth roofline at B=32, T=65536, D=H=128;
- fused forward + backward peak memory <= half of the eager reference's, at every T measured.
A verdict is "met", "MISSED" or "no data"; missed targets do not fail the check (they are tuning goals).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

from .config import CheckConfig

BASE = dict(B=32, D=128, H=128, k_top=8)


@dataclasses.dataclass
class Verdict:
    target: str
    values: str  # the figures it was judged on
    status: str  # met | MISSED | no data


def _ok(r: Optional[Dict]) -> bool:
    return r is not None and r.get("status") == "ok" and isinstance(r.get("median_ms"), float) and r["median_ms"] > 0


def _judge(target: str, checks: List[tuple]) -> Verdict:
    """checks: (label, value text, passed) per size; no data when empty."""
    if not checks:
        return Verdict(target, "-", "no data")
    values = ", ".join(f"{label}: {text}" for label, text, _ in checks)
    return Verdict(target, values, "met" if all(p for _, _, p in checks) else "MISSED")


def judge(rows: List[Dict], cfg: CheckConfig) -> List[Verdict]:
    op = [r for r in rows if r.get("section") == "op" and r.get("sweep") == "T" and r.get("dtype") == cfg.target_dtype
          and all(r.get(k) == v for k, v in BASE.items())]
    get = {(r["T"], r["mode"], r["impl"]): r for r in op}
    Ts = sorted({r["T"] for r in op})
    verdicts = []
    for other, factor in (("eager", 5.0), ("compiled", 2.0)):
        checks = []
        for T in (t for t in Ts if t >= cfg.speedup_min_T):
            f, o = get.get((T, "fwd+bwd", "fused")), get.get((T, "fwd+bwd", other))
            if _ok(f) and _ok(o):
                s = o["median_ms"] / f["median_ms"]
                checks.append((f"T={T}", f"{s:.2f}x", s >= factor))
        name = "eager reference" if other == "eager" else "torch.compile of the reference"
        verdicts.append(_judge(f"fused fwd+bwd >= {factor:g}x {name}, T >= {cfg.speedup_min_T}, {cfg.target_dtype}", checks))
    f = get.get((cfg.roofline_T, "forward", "fused"))
    checks = []
    if _ok(f) and isinstance(f.get("bandwidth_frac"), float):
        checks.append((f"T={cfg.roofline_T}", f"{100 * f['bandwidth_frac']:.0f}% ({f['median_ms']:.3g} ms)",
                       f["bandwidth_frac"] >= 0.6))
    verdicts.append(_judge(f"fused forward >= 60% of the HBM bandwidth roofline, B=32 T={cfg.roofline_T} D=H=128", checks))
    checks = []
    for T in Ts:
        f, e = get.get((T, "fwd+bwd", "fused")), get.get((T, "fwd+bwd", "eager"))
        if _ok(f) and _ok(e) and isinstance(f.get("peak_mem_mib"), float) and isinstance(e.get("peak_mem_mib"), float) \
                and e["peak_mem_mib"] > 0:
            ratio = f["peak_mem_mib"] / e["peak_mem_mib"]
            checks.append((f"T={T}", f"{ratio:.2f} ({f['peak_mem_mib']:.0f} / {e['peak_mem_mib']:.0f} MiB)", ratio <= 0.5))
    verdicts.append(_judge("fused fwd+bwd peak memory <= 1/2 of the eager reference's", checks))
    return verdicts
