"""Build and install sab-kernels.

Install torch first (the CPU wheel, or the CUDA build you already use), then build without isolation so
pip compiles the C++ kernels against that torch instead of fetching another:

    pip install torch==2.13.0
    pip install --no-build-isolation -e ".[test]"

The C++ CPU kernels in csrc/ are optional at install time: without a compiler the package still installs,
and the op falls back to the PyTorch reference with one warning.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources or os.environ.get("SAB_KERNELS_NO_EXTENSION") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:  # torch not installed yet: install it first (see the docstring)
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """Build the C++ kernels, but let the install go on without them if the build fails."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any compiler failure
                print(f"WARNING: sab_kernels C++ kernels were not built ({exc}); the reference will be used.", file=sys.stderr)

    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    ext = CppExtension(
        "sab_kernels._C",
        sources,
        extra_compile_args={"cxx": ["-O3", "-std=c++17", *openmp]},
        extra_link_args=openmp,
    )
    return [ext], {"build_ext": OptionalBuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = _extensions()

with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="sab-kernels",
    version="0.1.0",
    description="Fused kernels for Sparse Attentive Backtracking (Ke et al., NeurIPS 2018) in PyTorch",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["sab_kernels", "sab_kernels.*"]),
    install_requires=[
        "torch>=2.4",
        # CUDA torch 2.13 pins triton 3.7.1, 2.14 ~=3.8. CI tests 3.7.1, 3.8.0 and 3.9.0 (make triton-matrix).
        "triton>=3.7,<3.10; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "numpy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "numpy", "scikit-learn"],
        "tasks": ["scikit-learn"],
    },
    entry_points={"console_scripts": ["sab-train=sab_kernels.train:main", "sab-bench=sab_kernels.bench:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
