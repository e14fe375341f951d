import os
import sys

# Let `pytest bench/` import sab_kernels from this clone even when it is not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
