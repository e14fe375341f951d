"""Build the C++ CPU kernels of sab-kernels; the package metadata is in pyproject.toml.

Install torch first (the CPU wheel, or the CUDA build you already use), then build without isolation so
pip compiles the C++ kernels against that torch instead of fetching another:

    pip install torch==2.13.0
    pip install --no-build-isolation -e ".[test]"

A failed build of the kernels fails the install. To install without them (no compiler: the `cpu` backend
then falls back to the PyTorch reference with a warning), ask for it explicitly:

    SAB_KERNELS_ALLOW_NO_EXTENSION=1 pip install --no-build-isolation .   # try, and go on without on failure
    SAB_KERNELS_NO_EXTENSION=1 pip install --no-build-isolation .         # do not even try
"""

import glob
import os
import sys

from setuptools import setup

SKIP = os.environ.get("SAB_KERNELS_NO_EXTENSION") == "1"
ALLOW_MISSING = os.environ.get("SAB_KERNELS_ALLOW_NO_EXTENSION") == "1"
HOW_TO_SKIP = "set SAB_KERNELS_ALLOW_NO_EXTENSION=1 to install without the C++ kernels (the slower reference is used)"


def _extensions():
    if SKIP:
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        if ALLOW_MISSING:
            print("WARNING: torch is not installed, so sab_kernels' C++ kernels are not built.", file=sys.stderr)
            return [], {}
        sys.exit("error: building sab_kernels' C++ kernels needs torch: install torch first, then "
                 f"`pip install --no-build-isolation .` (see setup.py); or {HOW_TO_SKIP}")
    if not sources:
        sys.exit(f"error: csrc/*.cpp not found next to setup.py; {HOW_TO_SKIP}")

    class CheckedBuildExtension(BuildExtension):
        """A failed build is an error, unless SAB_KERNELS_ALLOW_NO_EXTENSION=1 asks to go on without it."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any compiler or linker failure
                if not ALLOW_MISSING:
                    raise SystemExit(f"error: sab_kernels' C++ kernels failed to build ({exc}); {HOW_TO_SKIP}") from exc
                print(f"WARNING: sab_kernels C++ kernels were not built ({exc}); the reference will be used.",
                      file=sys.stderr)

    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    ext = CppExtension(
        "sab_kernels._C",
        sources,
        # The torch the kernels are compiled against: cpu_backend refuses to load them under another one.
        define_macros=[("SAB_TORCH_VERSION", f'"{torch.__version__}"')],
        extra_compile_args={"cxx": ["-O3", "-std=c++17", *openmp]},
        extra_link_args=openmp,
    )
    # ninja compiles the five sources in parallel (MAX_JOBS, default: every core); without ninja, torch warns
    # and compiles them one after another.
    return [ext], {"build_ext": CheckedBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
