"""Run the notebooks top to bottom against the embedded fleet and save their outputs in place.

    .venv/bin/python notebooks/execute.py [NOTEBOOK ...]     (``make notebooks``: all of them)

nbval (``make test``) re-runs them and compares with what this saved, so run it
after changing a notebook or anything that changes what a notebook shows.
``$TUNNELNB_URL`` is ignored here: saved outputs always come from the seeded,
embedded fleet.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def execute(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    keep_displayed_widgets_only(nb)
    nbformat.write(nb, path)
    print(f"{path.name}: {len(nb.cells)} cells in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def keep_displayed_widgets_only(nb: nbformat.NotebookNode) -> None:
    """Drop the saved state of widgets no output shows (closed progress bars), keep what the outputs need."""
    widgets = nb.metadata.get("widgets", {}).get(WIDGET_STATE)
    if not widgets:
        return
    state = widgets["state"]
    todo = [
        out["data"][WIDGET_VIEW]["model_id"]
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if WIDGET_VIEW in out.get("data", {})
    ]
    needed: set[str] = set()
    while todo:
        model_id = todo.pop()
        if model_id in needed or model_id not in state:
            continue
        needed.add(model_id)
        todo += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state[model_id]))
    widgets["state"] = {k: v for k, v in state.items() if k in needed}


def main(argv: list[str]) -> int:
    for name in ("TUNNELNB_URL", "TUNNELNB_API_TOKEN", "TUNNELNB_LOGIN_PASSWORD", "TUNNELNB_LOGIN_USER"):
        os.environ.pop(name, None)
    paths = [Path(a).resolve() for a in argv] or sorted(HERE.glob("[0-9][0-9]-*.ipynb"))
    for path in paths:
        execute(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
