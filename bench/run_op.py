"""The op sweep alone: `python bench/run_op.py [--quick] [--device cpu|cuda] [--T 64,1024] [--impls fused,eager] ...`.

Same engine as `python -m sab_kernels.bench --sections op`; every option of that command works here.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a clone, uninstalled
from sab_kernels.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--sections", "op", *sys.argv[1:]]))
