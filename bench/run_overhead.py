"""Per-call dispatch overhead of the op at B=1 against an LSTM cell step: `python bench/run_overhead.py [--device cuda]`.

Same engine as `python -m sab_kernels.bench --sections overhead`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a clone, uninstalled
from sab_kernels.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--sections", "overhead", *sys.argv[1:]]))
