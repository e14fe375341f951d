"""sab-train's command line: parse and check the arguments, train, print the final metrics as one JSON line."""

from __future__ import annotations

import json
import os
from typing import List, Optional

from .args import parse_args
from .loop import run


def main(argv: Optional[List[str]] = None) -> None:
    """`sab-train` / `python -m sab_kernels.train`: bad arguments exit with status 2 before any work."""
    args = parse_args(argv)
    result = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result), flush=True)
