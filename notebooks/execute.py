"""Run the notebooks top to bottom against the embedded fleet and save their outputs in place.

    .venv/bin/python notebooks/execute.py [NOTEBOOK ...]     (``make notebooks``: all of them)

nbval (``make test``) re-runs them and compares with what this saved, so run it
after changing a notebook or anything that changes what a notebook shows.
``$TUNNELNB_URL`` is ignored here: saved outputs always come from the seeded,
embedded fleet.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(nb, path)
    print(f"{path.name}: {len(nb.cells)} cells in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def main(argv: list[str]) -> int:
    for name in ("TUNNELNB_URL", "TUNNELNB_API_TOKEN", "TUNNELNB_LOGIN_PASSWORD", "TUNNELNB_LOGIN_USER"):
        os.environ.pop(name, None)
    paths = [Path(a).resolve() for a in argv] or sorted(HERE.glob("[0-9][0-9]-*.ipynb"))
    for path in paths:
        execute(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
