"""`make lint` keeps the layering and the strict types: an upward import or a type error fails it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _copy(tmp_path: Path) -> Path:
    """The package and its configuration in a scratch directory, to break on purpose."""
    shutil.copytree(ROOT / "tunnelnb", tmp_path / "tunnelnb", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=where,
        env={"PATH": str(BIN), "PYTHONPATH": str(where)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_the_tree_keeps_every_contract(tmp_path):
    result = _lint_imports(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "message"),
    [
        ("client/api.py", "from ..fleet import results", "tunnelnb.client is not allowed to import tunnelnb.fleet"),
        ("protocol/shell.py", "import aiohttp", "tunnelnb.protocol is not allowed to import aiohttp"),
        ("server/oslimits.py", "from ..client import api", "tunnelnb.server is not allowed to import tunnelnb.client"),
    ],
)
def test_an_upward_import_breaks_a_contract(tmp_path, module, line, message):
    where = _copy(tmp_path)
    _append(where / "tunnelnb" / module, f"\n{line}  # noqa\n")
    result = _lint_imports(where)
    assert result.returncode == 1, result.stdout
    assert message in " ".join(result.stdout.split())


def test_a_type_error_in_a_strict_package_fails_mypy(tmp_path):
    where = _copy(tmp_path)
    _append(where / "tunnelnb" / "protocol" / "shell.py", "\n\ndef _untyped(x):\n    return x\n")
    result = subprocess.run(
        [str(BIN / "mypy"), "--no-incremental", "--follow-imports=silent", "tunnelnb/protocol/shell.py"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout
    assert "Function is missing a type annotation  [no-untyped-def]" in result.stdout
