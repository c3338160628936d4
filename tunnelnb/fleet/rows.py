"""What every output format shares: line ends, unique column names, a short quote of the output.

Kept apart so the generic formats (:mod:`.parsers`), the aligned-table reader
(:mod:`.aligned`) and the typed formats (:mod:`.typed`) say things the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["LABEL_COLUMN", "Row", "dedupe", "excerpt", "normalise"]

Row = dict[str, Any]

LABEL_COLUMN = "label"
"""Name of the unnamed first column of tables like ``free``'s (``Mem:``, ``Swap:``)."""


def normalise(text: str) -> str:
    """LF line ends and no byte-order mark: a PTY sends CRLF, some tools a BOM."""
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def dedupe(names: Sequence[str]) -> list[str]:
    """Unique column names, as pandas does it: ``a, a`` → ``a, a.1``."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            candidate = f"{name}.{seen[name]}"
            while candidate in seen:
                seen[name] += 1
                candidate = f"{name}.{seen[name]}"
            name = candidate
        seen.setdefault(name, 0)
        out.append(name)
    return out


def excerpt(text: str, limit: int = 40) -> str:
    """`` (it starts '…')``: the first line of an output that did not fit, so the reader sees why."""
    first = next((line.strip() for line in normalise(text).split("\n") if line.strip()), "")
    if not first:
        return " (it is empty)"
    return f" (it starts {first[:limit] + '…' if len(first) > limit else first!r})"
