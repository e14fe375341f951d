"""Ablation: SAB on characters with sparse replay cut, to split SAB's gap to truncated BPTT into what the attention
does in the forward pass and what replay's gradient does.

Usage: python bench/results/training/chars_shakespeare/no_replay.py SAB-TRAIN-ARGS...
       (the sab_seed0 run's arguments with --out sab_no_replay_seed0; --resume continues it; see README.md)

The model, data, batches and optimiser are sab-train's (`sab_kernels.train.main`), with two changes made here:
every slot is written detached (gradient that reaches a slot stops there, so each step learns through its local
truncated BPTT and the attention's own parameters only), and the per-step path is used, since the fused kernels
always replay. The forward pass, and so what the model computes, is SAB's. The checkpoint and model file are
ordinary SAB ones; only this script knows that replay was cut, so the folder's name says it.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE)))))
from sab_kernels import train  # noqa: E402
from sab_kernels.nn import SparseAttentiveMemory  # noqa: E402
from sab_kernels.training import loop  # noqa: E402

real_append, real_build = SparseAttentiveMemory.append, loop.build_model


def detached_append(self, state, h):
    real_append(self, state, h.detach())


def per_step_build(*args, **kwargs):
    model = real_build(*args, **kwargs)
    model.core.path = "step"
    return model


if __name__ == "__main__":
    if "--model" in sys.argv and sys.argv[sys.argv.index("--model") + 1] != "sab":
        raise SystemExit("no_replay.py: the ablation is of --model sab")
    SparseAttentiveMemory.append = detached_append
    loop.build_model = per_step_build
    sys.exit(train.main(sys.argv[1:]))
