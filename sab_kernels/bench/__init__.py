"""`python -m sab_kernels.bench` / `sab-bench`: how much faster is the fused op, on this machine, at these sizes.

registry.py (cases and implementations) -> verify.py (each implementation against the reference, before
timing) -> runner.py / sections.py (timing and peak memory via timing.py) -> report.py (Markdown, CSV, PNG).
Nothing heavy is imported until `main` runs, so `import sab_kernels` stays light.
"""


def main(argv=None) -> int:
    from .cli import main as _main

    return _main(argv)


__all__ = ["main"]
