"""SAB-LSTM training step time and peak memory against nn.LSTM with full BPTT, over T:
`python bench/run_lstm.py [--quick] [--lstm-T 128,512,2048] [--device cuda]`.

Same engine as `python -m sab_kernels.bench --sections lstm`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a clone, uninstalled
from sab_kernels.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--sections", "lstm", *sys.argv[1:]]))
