"""SGR, the colours and attributes of terminal text: the style model of :mod:`tunnelnb.notebook.ansi`.

``ESC[...m`` sequences change a :class:`Style`; :func:`css` turns one into
inline CSS.  Kept apart from the screen (which only tracks where text goes)
because it is the one place that decides what reaches the browser as style:
colours come from our palette or are numbers we format, never text from the
output.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DEFAULT_BACKGROUND", "DEFAULT_FOREGROUND", "DEFAULT_STYLE", "PALETTE", "Style", "apply_sgr", "css"]

DEFAULT_FOREGROUND = "#d4d4d4"
DEFAULT_BACKGROUND = "#1e1e1e"

#: The 16 basic colours (SGR 30-37, 90-97 and their backgrounds), xterm's.
PALETTE = (
    "#000000", "#cd0000", "#00cd00", "#cdcd00", "#0000ee", "#cd00cd", "#00cdcd", "#e5e5e5",
    "#7f7f7f", "#ff0000", "#00ff00", "#ffff00", "#5c5cff", "#ff00ff", "#00ffff", "#ffffff",
)  # fmt: skip

_CUBE = (0, 95, 135, 175, 215, 255)


def _hex(r: int, g: int, b: int) -> str:
    return f"#{r:02x}{g:02x}{b:02x}"


def _colour_256(n: int) -> str:
    """xterm's 256-colour palette: 16 basic colours, a 6x6x6 cube, 24 greys."""
    if n < 16:
        return PALETTE[n]
    if n < 232:
        n -= 16
        return _hex(_CUBE[n // 36], _CUBE[n // 6 % 6], _CUBE[n % 6])
    grey = 8 + 10 * (n - 232)
    return _hex(grey, grey, grey)


class Style(NamedTuple):
    """The attributes of one character cell; ``fg``/``bg`` are CSS colours, ``None`` is the default."""

    fg: str | None = None
    bg: str | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    inverse: bool = False
    strike: bool = False


#: No colours, no attributes: what ``ESC[0m`` resets to.
DEFAULT_STYLE = Style()
_css_cache: dict[Style, str] = {DEFAULT_STYLE: ""}


def css(style: Style) -> str:
    """The inline CSS of a style (colours come from our palette only, never from the output)."""
    text = _css_cache.get(style)
    if text is None:
        fg, bg = style.fg, style.bg
        if style.inverse:
            fg, bg = bg or DEFAULT_BACKGROUND, fg or DEFAULT_FOREGROUND
        parts = []
        if fg:
            parts.append(f"color:{fg}")
        if bg:
            parts.append(f"background-color:{bg}")
        if style.bold:
            parts.append("font-weight:bold")
        if style.dim:
            parts.append("opacity:0.6")
        if style.italic:
            parts.append("font-style:italic")
        decorations = [name for on, name in ((style.underline, "underline"), (style.strike, "line-through")) if on]
        if decorations:
            parts.append("text-decoration:" + " ".join(decorations))
        text = ";".join(parts)
        if len(_css_cache) < 4096:  # 24-bit colours could make it grow without end
            _css_cache[style] = text
    return text


def apply_sgr(style: Style, params: str) -> Style:
    """``style`` after ``ESC[<params>m``: SGR colours (16, 256, 24-bit) and attributes; what is unknown is ignored."""
    groups = params.split(";") if params else [""]
    i = 0
    while i < len(groups):
        sub = groups[i].split(":")
        code = int(sub[0]) if sub[0] else 0
        i += 1
        if code in (38, 48, 58):
            if len(sub) > 1:  # ESC[38:2::r:g:bm
                colour = _extended_colour(sub[1:], colon=True)
            else:  # ESC[38;5;nm, ESC[38;2;r;g;bm
                kind = groups[i] if i < len(groups) else ""
                used = 1 + (1 if kind == "5" else 3 if kind == "2" else 0)
                colour = _extended_colour(groups[i : i + used], colon=False)
                i += used
            if colour is not None and code == 38:
                style = style._replace(fg=colour)
            elif colour is not None and code == 48:
                style = style._replace(bg=colour)
            continue  # 58: underline colour, not shown
        if code == 0:
            style = DEFAULT_STYLE
        elif code == 1:
            style = style._replace(bold=True)
        elif code == 2:
            style = style._replace(dim=True)
        elif code == 3:
            style = style._replace(italic=True)
        elif code in (4, 21):
            style = style._replace(underline=not (len(sub) > 1 and sub[1] == "0"))
        elif code == 7:
            style = style._replace(inverse=True)
        elif code == 9:
            style = style._replace(strike=True)
        elif code == 22:
            style = style._replace(bold=False, dim=False)
        elif code == 23:
            style = style._replace(italic=False)
        elif code == 24:
            style = style._replace(underline=False)
        elif code == 27:
            style = style._replace(inverse=False)
        elif code == 29:
            style = style._replace(strike=False)
        elif 30 <= code <= 37:
            style = style._replace(fg=PALETTE[code - 30])
        elif code == 39:
            style = style._replace(fg=None)
        elif 40 <= code <= 47:
            style = style._replace(bg=PALETTE[code - 40])
        elif code == 49:
            style = style._replace(bg=None)
        elif 90 <= code <= 97:
            style = style._replace(fg=PALETTE[code - 90 + 8])
        elif 100 <= code <= 107:
            style = style._replace(bg=PALETTE[code - 100 + 8])
    return style


def _extended_colour(values: list[str], *, colon: bool) -> str | None:
    """The colour of ``38;5;n`` / ``38;2;r;g;b`` (``values`` from the 5 or 2 on), or None if malformed."""
    if not values or not all(v.isdigit() or v == "" for v in values):
        return None
    kind, rest = values[0], values[1:]
    if kind == "5" and rest and rest[0]:
        n = int(rest[0])
        return _colour_256(n) if n < 256 else None
    if kind == "2":
        if colon and len(rest) >= 4:
            rest = rest[1:]  # 38:2:<colour space>:r:g:b
        if len(rest) >= 3 and all(rest[:3]):
            r, g, b = (int(v) for v in rest[:3])
            if max(r, g, b) < 256:
                return _hex(r, g, b)
    return None
