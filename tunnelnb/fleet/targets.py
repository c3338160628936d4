"""Which devices a command goes to: target specs resolved against an inventory (docs/architecture.md).

Pure functions, no I/O: the fleet hands in the inventory it already has.

A spec is a string of terms separated by spaces or commas (commas inside ``[...]``
do not separate), or a list of such strings (a magic's ``$targets``).  Terms:

``device-01``
    an exact device id.
``device-0*``, ``dev-?1``, ``dev-[ab]``
    shell-style globs, case-sensitive (:func:`fnmatch.fnmatchcase`).
``device-0[1-4]``, ``device-[001-120]``, ``rack[1-2]-dev[01-03,07]``
    numeric ranges and lists in brackets, expanded to ids; a bound written with a
    leading zero sets the width (``[001-120]`` gives ``001`` … ``120``).  A bracket
    holding anything else (``[ab]``, ``[12]``) keeps its glob meaning.
``@edge``
    devices that have a tag *key* ``edge`` or any tag whose *value* is ``edge``
    (a tag such as ``role=edge`` is usually written as just its value).
``@key=value``
    devices whose tag ``key`` equals ``value``; ``fw``/``sw`` also match the
    ``fw_version``/``sw_version`` fields, and any other top-level field of the
    record matches too (``@status=ONLINE``).  Keys and values may be globs
    (``@fw=2.*``).
``*`` or ``all``
    every device in the inventory.
``&PATTERN``, ``!PATTERN``
    as in Ansible's patterns: the plain terms are a union, ``&PATTERN`` keeps only
    the devices that also match it, ``!PATTERN`` removes the devices that match it
    (``@edge &@fw=2.1 !device-12``); with no plain term they apply to every device
    (``!device-12`` is all the others).  In a shell, quote them (``'!device-12'``).

The result is the matching ids, each once, in inventory order.  Every term must match at
least one device: a term that matches none is almost always a typo, and running on
fewer devices than meant is worse than stopping, so :class:`UnknownTargets` names all
such terms with close ids to try.  A range that matches only some of its ids is fine
(like a glob, it is a pattern).
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from ..errors import TargetError, UnknownTargets

__all__ = ["MAX_EXPANSION", "expand_ranges", "select_targets", "split_terms"]

MAX_EXPANSION = 100_000
"""Most ids one term may expand to (``[0-9999999]`` is a typo, not a fleet)."""

# Fields ``@fw=…`` and ``@sw=…`` also look at (the IoTDA device record's names).
_FIELD_ALIASES = {"fw": "fw_version", "sw": "sw_version"}
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_NUMERIC_ITEM = re.compile(r"(\d+)(?:-(\d+))?")
_GLOB_CHARS = frozenset("*?[")
_CUTOFF = 0.6  # difflib's own default for close matches


def _or_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


# -- parsing the spec -------------------------------------------------------------


def _split(text: str) -> list[str]:
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
        if depth == 0 and (ch.isspace() or ch == ","):
            if current:
                terms.append("".join(current))
                current = []
        else:
            current.append(ch)
    if depth:
        raise TargetError(f"unclosed '[' in target spec {text!r}")
    if current:
        terms.append("".join(current))
    return terms


def split_terms(spec: str | Iterable[Any] | None) -> list[str]:
    """The terms of a spec: split on spaces and commas outside brackets.

    A list (a magic's ``$targets``) gives its items, each split the same way, so
    ``["device-01", "device-0[5-6] @edge"]`` is three terms.  Raises
    :class:`TargetError` when there is no term at all or a ``[`` is not closed.
    """
    if isinstance(spec, str):
        terms = _split(spec)
    elif spec is None:
        terms = []
    else:
        terms = [term for item in spec for term in _split(str(item))]
    if not terms:
        raise TargetError(
            "no targets given: name devices by id (device-01), glob (device-0*), range (device-0[1-4]), "
            "tag (@edge, @fw=2.1) or all"
        )
    return terms


def _numeric_bracket(content: str) -> list[str] | None:
    """The ids a numeric bracket stands for, or None when it is a glob character class.

    Numeric means comma-separated numbers and ``lo-hi`` ranges with at least one ``-`` or
    ``,``: plain ``[12]`` stays the glob "1 or 2", as a shell reads it.
    """
    if "-" not in content and "," not in content:
        return None
    items = content.split(",")
    parsed = [_NUMERIC_ITEM.fullmatch(item.strip()) for item in items]
    if not all(parsed):
        return None
    values: list[str] = []
    for match in parsed:
        assert match is not None
        lo, hi = match.group(1), match.group(2) or match.group(1)
        if int(lo) > int(hi):
            raise TargetError(f"range [{match.group(0)}] runs backwards: write [{hi}-{lo}]")
        width = max((len(bound) for bound in (lo, hi) if len(bound) > 1 and bound.startswith("0")), default=0)
        if len(values) + int(hi) - int(lo) + 1 > MAX_EXPANSION:
            raise TargetError(f"[{content}] expands to more than {MAX_EXPANSION:,} ids")
        values.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return values


def expand_ranges(term: str) -> list[str]:
    """Expand every numeric bracket of ``term``: ``dev-0[1-3]`` → ``dev-01 dev-02 dev-03``.

    Several brackets multiply out, left to right.  Brackets that are not numeric
    (``[ab]``) are left in place for glob matching.  A term without brackets is
    returned as the one item.
    """
    pieces: list[list[str]] = []
    pos = 0
    for match in _BRACKET.finditer(term):
        expanded = _numeric_bracket(match.group(1))
        if expanded is None:
            continue
        pieces.append([term[pos : match.start()]])
        pieces.append(expanded)
        pos = match.end()
    pieces.append([term[pos:]])
    total = 1
    for options in pieces:
        total *= len(options)
    if total > MAX_EXPANSION:
        raise TargetError(f"{term!r} expands to {total:,} ids, more than {MAX_EXPANSION:,}")
    return ["".join(combo) for combo in itertools.product(*pieces)]


# -- matching ---------------------------------------------------------------------


def _records(inventory: Any) -> list[Mapping[str, Any]]:
    if hasattr(inventory, "to_dict") and not isinstance(inventory, Mapping):  # an inventory DataFrame
        return list(inventory.to_dict("records"))
    return list(inventory)


def _tags(record: Mapping[str, Any]) -> dict[str, str]:
    """A record's tags as a dict, from a dict or IoTDA's ``[{tag_key, tag_value}]`` list."""
    tags = record.get("tags")
    if isinstance(tags, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in tags.items()}
    if isinstance(tags, list):
        out: dict[str, str] = {}
        for tag in tags:
            if isinstance(tag, Mapping) and "tag_key" in tag:
                value = tag.get("tag_value")
                out[str(tag["tag_key"])] = "" if value is None else str(value)
        return out
    return {}


def _fields(record: Mapping[str, Any], key: str) -> list[str]:
    """The values ``@key=…`` compares with: the tag, the aliased field, the field itself."""
    values = []
    tags = _tags(record)
    for tag_key, tag_value in tags.items():
        if fnmatchcase(tag_key, key):
            values.append(tag_value)
    for name in (_FIELD_ALIASES.get(key), key):
        if name and isinstance(record.get(name), str | int | float):
            values.append(str(record[name]))
    return values


def _match_tag(term: str, record: Mapping[str, Any]) -> bool:
    body = term[1:]
    if "=" in body:
        key, _, value = body.partition("=")
        return any(fnmatchcase(found, value) for found in _fields(record, key))
    tags = _tags(record)
    return any(fnmatchcase(key, body) or fnmatchcase(value, body) for key, value in tags.items())


def _match_term(term: str, ids: list[str], records: list[Mapping[str, Any]]) -> list[int]:
    if term in ("*", "all"):
        return list(range(len(ids)))
    if term.startswith("@"):
        if len(term) == 1 or term.startswith("@="):
            raise TargetError(f"tag term {term!r} names no tag: write @edge or @fw=2.1")
        return [i for i, record in enumerate(records) if _match_tag(term, record)]
    exact = [i for i, device_id in enumerate(ids) if device_id == term]
    if exact:  # an id that happens to contain glob characters still matches itself
        return exact
    matched: list[int] = []
    by_id: dict[str, list[int]] = {}
    for i, device_id in enumerate(ids):
        by_id.setdefault(device_id, []).append(i)
    for pattern in expand_ranges(term):
        if _GLOB_CHARS.intersection(pattern):
            matched.extend(i for i, device_id in enumerate(ids) if fnmatchcase(device_id, pattern))
        else:
            matched.extend(by_id.get(pattern, ()))
    return matched


def _suggest(term: str, ids: list[str], records: list[Mapping[str, Any]]) -> list[str]:
    """Close spellings for an unmatched term, from the inventory's ids or tags."""
    if term[:1] in "&!":
        return [term[0] + close for close in _suggest(term[1:], ids, records)]
    if term.startswith("@"):
        vocabulary: set[str] = set()
        for record in records:
            for key, value in _tags(record).items():
                vocabulary.update({f"@{key}", f"@{key}={value}"})
                if value:
                    vocabulary.add(f"@{value}")
            for alias, field in _FIELD_ALIASES.items():
                if record.get(field) not in (None, ""):
                    vocabulary.add(f"@{alias}={record[field]}")
        candidates = sorted(vocabulary)
        probe = term
    else:
        candidates = list(dict.fromkeys(ids))
        try:
            probe = expand_ranges(term)[0]
        except TargetError:
            probe = term
    scored = []
    for candidate in candidates:
        matcher = difflib.SequenceMatcher(None, probe, candidate)
        if matcher.real_quick_ratio() >= _CUTOFF and matcher.quick_ratio() >= _CUTOFF:
            scored.append((matcher.ratio(), candidate))
    if not scored:
        return []
    best = max(score for score, _ in scored)
    # Only the nearly-best: with ids that differ in one digit, "did you mean" one of ten helps nobody.
    close = [(score, c) for score, c in scored if score >= max(_CUTOFF, best - 0.05)]
    close.sort(key=lambda item: -item[0])
    return [c for _, c in close[:3]]


def select_targets(spec: str | Iterable[Any] | None, inventory: Iterable[Mapping[str, Any]] | Any) -> list[str]:
    """The ids of the devices ``spec`` names, each once, in inventory order.

    ``inventory`` is a sequence of device records (dicts with at least ``device_id``;
    ``tags``, ``fw_version``, ``sw_version``, ``status`` … are used by ``@`` terms) or an
    inventory DataFrame.  Raises :class:`TargetError` for an unreadable spec and
    :class:`UnknownTargets` when some term matches no device.
    """
    terms = split_terms(spec)
    records = _records(inventory)
    ids = [str(record.get("device_id", "")) for record in records]
    selected: set[int] = set()
    keep: list[set[int]] = []
    drop: set[int] = set()
    unmatched: list[str] = []
    plain = False
    for term in dict.fromkeys(terms):
        pattern = term[1:] if term[:1] in "&!" else term
        if not pattern:
            raise TargetError(f"{term!r} needs a pattern after {term!r}: e.g. &@edge or !device-12")
        found = _match_term(pattern, ids, records)
        if not found:
            unmatched.append(term)
        if term.startswith("&"):
            keep.append(set(found))
        elif term.startswith("!"):
            drop.update(found)
        else:
            plain = True
            selected.update(found)
    if not plain:
        selected = set(range(len(ids)))
    for found_set in keep:
        selected &= found_set
    selected -= drop
    if unmatched:
        suggestions = {term: _suggest(term, ids, records) for term in unmatched}
        raise UnknownTargets(unmatched, suggestions, len(records))
    return list(dict.fromkeys(ids[i] for i in sorted(selected)))
