"""The opening of a Humdrum **kern score as text, so that music21 parses only the bars synthesis can play.

Parsing is most of the cost of turning a kern score into MIDI (0.9 s of 1.3 s per kern-eras piece, most of
the piece never sounding in a 30 s excerpt). :func:`kern_opening` cuts the text after the first barline that
lies at least a given number of quarter notes into the score, before music21 sees it. Its timeline is
Humdrum's: each data line starts when the earliest note still sounding in a **kern spine ends.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

__all__ = ["kern_opening", "barline_quarters"]

_RECIP = re.compile(r"(\d+)(?:%(\d+))?(\.*)")


class _Uncuttable(Exception):
    """Something the timeline does not model: the caller parses the whole text instead."""


@functools.lru_cache(maxsize=4096)  # a score repeats few distinct tokens; Fraction arithmetic is the cost
def _duration(token: str) -> Fraction:
    """Quarter notes of one kern token (a note, a rest or a chord; the first sub-token's rhythm counts)."""
    first = token.split(" ", 1)[0]
    if "q" in first or "Q" in first:
        return Fraction(0)  # a grace note takes no time
    match = _RECIP.search(first)
    if match is None:
        raise _Uncuttable(f"token without a rhythm: {token!r}")
    number, numerator, dots = match.groups()
    if set(number) == {"0"}:  # 0 = breve, 00 = long, 000 = maxima
        base = Fraction(8 * 2 ** (len(number) - 1))
    else:
        base = Fraction(4 * int(numerator or 1), int(number))
    return base * (2 - Fraction(1, 2 ** len(dots)))


def barline_quarters(
    lines: list[str], *, until: float | None = None
) -> list[tuple[int, Fraction | None, int | None]]:
    """Every barline of a one-piece Humdrum file: where it stands in quarter notes from the start.

    Parameters
    ----------
    lines : list of str
        The file's lines without their line ends, split at "\\n" only (as music21 reads a file).
    until : float, optional
        Stop the timeline at the first barline at or past this many quarter notes: the barlines after it
        are listed with ``quarters`` None. The rest of the file is still checked as without ``until``
        (what raises :class:`_Uncuttable` is the same), only the time arithmetic is left out.

    Returns
    -------
    list of (line_index, quarters, open_repeat)
        ``open_repeat`` is the index of the line whose start-repeat sign (``|:``) has no end-repeat
        (``:|``) up to this barline (a cut right after it would split that repeated section), else None.

    Raises
    ------
    _Uncuttable
        More than one exclusive-interpretation line (several pieces or added spines), a **kern token
        without a rhythm, or a spine manipulator the timeline does not follow.
    """
    kinds: list[str] = []  # the exclusive interpretation of each column
    ends: list[Fraction] = []  # when each column's latest note ends
    now = Fraction(0)
    started = False
    open_repeat = None
    barlines = []
    timing = True  # False past ``until``: what the caller needs of the timeline is known
    for index, line in enumerate(lines):
        if not line or line.startswith("!!"):
            continue
        tokens = line.split("\t")
        if line.startswith("**"):
            if started:  # a second piece after the first ended (*-), or spines added with *+
                raise _Uncuttable("a second exclusive interpretation line")
            kinds, ends, started = tokens, [now] * len(tokens), True
            continue
        if not kinds or len(tokens) != len(kinds):
            raise _Uncuttable(f"line {index + 1} has {len(tokens)} spines, expected {len(kinds)}")
        if line.startswith("*"):
            kinds, ends = _manipulate(tokens, kinds, ends)
            continue
        if line.startswith("!"):
            continue
        if line.startswith("="):
            bar = tokens[0]
            if ":|" in bar:
                open_repeat = None
            if "|:" in bar:
                open_repeat = index
            barlines.append((index, now if timing else None, open_repeat))
            timing = timing and (until is None or now < until)
            continue
        for column, token in enumerate(tokens):
            if kinds[column] == "**kern" and token != ".":
                duration = _duration(token)  # past ``until`` too: a token without a rhythm makes the file uncuttable
                if timing:
                    ends[column] = now + duration
        later = [end for kind, end in zip(kinds, ends) if kind == "**kern" and end > now] if timing else None
        if later:
            now = min(later)
    return barlines


def _manipulate(tokens: list[str], kinds: list[str], ends: list[Fraction]) -> tuple[list[str], list[Fraction]]:
    """Apply a tandem-interpretation line's spine splits (``*^``), joins (``*v``), exchanges (``*x``) and ends (``*-``)."""
    if not any(t in ("*^", "*v", "*x", "*-", "*+") for t in tokens):
        return kinds, ends
    if "*+" in tokens:
        raise _Uncuttable("an added spine (*+)")
    if "*x" in tokens:
        swapped = [i for i, t in enumerate(tokens) if t == "*x"]
        if len(swapped) != 2:
            raise _Uncuttable("an exchange (*x) of other than two spines")
        kinds, ends = list(kinds), list(ends)
        a, b = swapped
        kinds[a], kinds[b], ends[a], ends[b] = kinds[b], kinds[a], ends[b], ends[a]
        return kinds, ends
    new_kinds, new_ends = [], []
    column = 0
    while column < len(tokens):
        token = tokens[column]
        if token == "*^":
            new_kinds += [kinds[column]] * 2
            new_ends += [ends[column]] * 2
        elif token == "*v":
            run = column
            while run + 1 < len(tokens) and tokens[run + 1] == "*v":
                run += 1
            new_kinds.append(kinds[column])
            new_ends.append(max(ends[column : run + 1]))
            column = run
        elif token != "*-":
            new_kinds.append(kinds[column])
            new_ends.append(ends[column])
        column += 1
    return new_kinds, new_ends


def kern_opening(text: str, *, quarters: float, margin_bars: int = 1) -> str | None:
    """The leading bars of a Humdrum score that hold its first ``quarters`` quarter notes, as Humdrum text.

    The cut falls ``margin_bars`` barlines after the first barline at or past ``quarters``. Every spine
    still open there is ended (``*-``), and the global records (``!!``) after the cut are kept. A cut inside
    a repeated section (``|:`` with its ``:|`` after the cut) drops that section's start-repeat sign: the
    first pass through it already reaches ``quarters``, so its repetition would sound later, and music21
    would take the unmatched sign for badly formed repeats and play the whole cut without any repeat.

    Parameters
    ----------
    text : str
        A Humdrum file holding one piece, newlines translated to "\\n".
    quarters : float
        How much of the score must stay, in quarter notes.
    margin_bars : int
        Extra bars kept after the bound (what music21's own cut of the parsed score keeps, too).

    Returns
    -------
    str or None
        The cut text, or None when nothing would be cut (the score is no longer) or the text is one the
        timeline does not model (several pieces, added spines, a note without a rhythm): then parse all of it.
    """
    lines = text.split("\n")  # not splitlines(): UTF-8 text read as Latin-1 holds U+0085, which it splits at
    try:
        # Only the bars up to the bound need their time: the Fraction arithmetic of the rest of the score
        # was half the cost of the cut (33 -> 17 ms per kern-eras piece).
        barlines = barline_quarters(lines, until=quarters)
    except _Uncuttable:
        return None
    past = next((i for i, (_, q, _) in enumerate(barlines) if q is not None and q >= quarters), None)
    if past is None or past + margin_bars >= len(barlines):
        return None
    cut, _, open_repeat = barlines[past + margin_bars]
    rest = lines[cut + 1 :]
    if not any(line and not line.startswith(("!", "*", "=")) for line in rest):
        return None  # no notes after the cut
    spines = len(lines[cut].split("\t"))
    records = [line for line in rest if line.startswith("!!")]
    kept = lines[: cut + 1]
    if open_repeat is not None:
        kept[open_repeat] = kept[open_repeat].replace("|:", "")  # =!|: -> =!, =:|!|: -> =:|!
    return "\n".join(kept + ["\t".join(["*-"] * spines)] + records) + "\n"
