"""Reading what the user gives ``%tunnel``: subcommand lines, cell scripts, target words, hidden prompts.

Shared by the subcommand modules.  Every mistake here is a one-line
:class:`~IPython.core.error.UsageError`, never a traceback, and a near miss
(``--timout``, ``conect``) says what was probably meant.
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import shlex
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser, MagicHelpFormatter, kwds, magic_arguments
from IPython.utils.text import DollarFormatter

__all__ = [
    "HelpShown",
    "PlainHelpFormatter",
    "Subcommand",
    "did_you_mean",
    "expand",
    "parse",
    "plural",
    "prompt",
    "subcommand",
    "target_words",
]


class HelpShown(Exception):
    """A subcommand's ``-h``: its help is printed, and there is nothing else to do."""


class PlainHelpFormatter(MagicHelpFormatter):
    """``-h`` output that starts with ``usage: %tunnel …``.

    IPython's formatter begins the usage with ``::``, the reST marker its help
    needs inside a docstring (``%tunnel?``); printed by ``-h`` it is noise.
    """

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, "usage: %")


class Subcommand(Protocol):
    """A ``%tunnel`` subcommand: the function, with the parser its decorators built."""

    parser: MagicArgumentParser

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


def subcommand(name: str) -> Callable[[Callable[..., Any]], Subcommand]:
    """:func:`~IPython.core.magic_arguments.magic_arguments` for ``%tunnel NAME``.

    The function's ``@argument`` decorators and its docstring (the description)
    make its ``.parser``, whose program is ``tunnel NAME`` and which takes ``-h``.
    """

    def decorate(func: Callable[..., Any]) -> Subcommand:
        command = cast(Subcommand, magic_arguments(name=f"tunnel {name}")(kwds(add_help=True)(func)))
        command.parser.formatter_class = PlainHelpFormatter
        return command

    return decorate


def parse(rest: str, parser: MagicArgumentParser) -> argparse.Namespace:
    """The arguments of a magic line; :class:`HelpShown` after ``-h`` has printed the help."""
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise UsageError(f"cannot parse {rest.strip()!r}: {exc}") from None
    try:
        args, extras = parser.parse_known_args(words)
    except SystemExit:  # -h printed the help
        raise HelpShown from None
    if extras:
        raise UsageError(f"unrecognized arguments: {' '.join(extras)}{_option_hint(extras, parser)}")
    return args


def _option_hint(extras: list[str], parser: MagicArgumentParser) -> str:
    """``; did you mean --timeout?`` for the mistyped options among ``extras`` (empty when none is close)."""
    if "-h" in extras or "--help" in extras:
        return "; %tunnel? shows the help"  # %%tunnel takes no -h: its help is the magic's docstring
    known = [option for option in parser._option_string_actions if option.startswith("--")]
    guesses = [did_you_mean(word.split("=", 1)[0], known) for word in extras if word.startswith("--")]
    meant = [guess for guess in guesses if guess]
    return f"; did you mean {' or '.join(dict.fromkeys(meant))}?" if meant else ""


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` that ``word`` most likely misspells, or None (difflib, as Python's own hints)."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return close[0] if close else None


def plural(n: int, word: str) -> str:
    """``1 device``, ``2 devices``: the magics' messages count things the way people do."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def target_words(words: list[str]) -> list[str]:
    """The target words of a magic line; a Python list or tuple expanded into it (``$ids``) counts too.

    IPython expands ``$ids`` to ``['device-01', 'device-02']``, which the line's
    shell-style splitting turns into ``[device-01,`` ``device-02]``.  Bracket
    ranges (``device-0[1-4]``) never start with a bracket, so they are safe.
    """
    text = " ".join(words).strip()
    if len(text) >= 2 and text[0] in "[(" and text[-1] in "])":
        return [w for w in text[1:-1].replace(",", " ").split() if w]
    return words


def expand(script: str, namespace: dict[str, Any]) -> str:
    """``{expr}`` and ``$var`` from the notebook, as IPython expands ``!`` lines.

    As there, it is all or nothing: when one name is unknown (``$HOME`` is the
    shell's), the script is left exactly as written.  IPython's formatter is
    made for single lines (it drops the lines before a ``$name``), so each line
    is expanded on its own.
    """
    formatter = DollarFormatter()
    try:
        return "".join(formatter.vformat(line, args=[], kwargs=namespace) for line in script.splitlines(keepends=True))
    except Exception:
        return script


def prompt(question: str) -> str:
    """A secret typed at a hidden prompt (never on the magic line)."""
    try:
        answer = getpass.getpass(question)
    except Exception as exc:  # no terminal and no notebook front end (e.g. nbclient)
        raise UsageError(f"cannot prompt here ({exc}): give the secret through an environment variable") from None
    if not answer:
        raise UsageError("nothing entered")
    return answer
