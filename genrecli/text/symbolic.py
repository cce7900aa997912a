"""One symbolic encoding across score formats: a score in any format to kern, MusicXML or note-event tokens.

The text modality of the paper is the raw file encoding (``**kern``). A model trained on kern text then meets a
MusicXML or ABC file of the same music as a foreign language (issue 18: the text SVMs put almost every
MusicXML piece into one era). The canonical encodings here re-write every score, whatever its format, from
its music21 parse:

``kern``
    Humdrum ``**kern`` written by converter21's Humdrum writer. Only the writer is used: registering
    converter21 also replaces music21's Humdrum *parser*, and converter21 4.0.1 (the last release for Python
    3.11) fails on music21 10's metadata API; music21's own kern parser reads every kern-eras file.
``musicxml``
    MusicXML written by music21's exporter (``GeneralObjectExporter``), the way a notation program would save
    the piece.
``tokens``
    A format-neutral note-event text defined here (:func:`score_to_tokens`): per bar, the time and key
    signatures in force, then for each onset its metric position and its notes (spelled pitch, duration).
    Nothing of the source's layout, beaming, stems, voices, parts or metadata survives, so every format of the
    same notes gives the same string.

Metadata stripping (:func:`genrecli.text.convert.score_to_text`) applies after conversion, so a ``kern`` or
``musicxml`` text of a MusicXML source loses its composer and title the same way a raw kern file does.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import math
import re
from fractions import Fraction
from pathlib import Path

from genrecli import ui
from genrecli.errors import InputError, UsageError

TEXT_FORMATS = ("raw", "kern", "musicxml", "tokens")
CANONICAL_FORMATS = TEXT_FORMATS[1:]
TEXT_FORMAT_CHOICES = ("auto", *TEXT_FORMATS)
MIXED_FORMAT_DEFAULT = "tokens"  # `auto` on a corpus whose scores come in several formats (see resolve_text_format)
TICKS_PER_QUARTER = 24  # token durations and positions: 32nd = 3, 16th triplet = 4, 32nd triplet = 2
TOKENS_SPEC = (
    "tokens v2: per bar '|', then 'M<n>/<d>' (time signature) and 'K<sharps>' (key signature, flats < 0) where "
    "they change; per onset '@<ticks into the bar>' then its notes '<pitch><octave>:<ticks>' (music21 spelling, "
    "'-' = flat) by ascending pitch, tied notes merged; bars on the time signatures' grid (after a pickup bar), not "
    "the written measures; 24 ticks per quarter (rounded), grace notes ':0'; rests, voices, parts, layout and metadata "
    "dropped; repeats not expanded"
)


def resolve_text_format(text_format: str, score_formats) -> str:
    """The text format a corpus is converted to: ``text_format``, or for ``auto`` raw when all its scores share
    one format and :data:`MIXED_FORMAT_DEFAULT` (``tokens``) when they come in several.

    Parameters
    ----------
    text_format : {'auto', 'raw', 'kern', 'musicxml', 'tokens'}
    score_formats : iterable of str
        The score formats of the corpus's tracks (``humdrum``, ``musicxml``, ``abc``; plain-text formats such
        as ``lyrics`` are ignored: they are never converted).

    Why tokens for mixed corpora: it is the only encoding that is the same string for the same notes in every
    format (kern written by converter21 still carries spine and layout choices of the source's parse), and it
    never fails where the parse succeeded (converter21 cannot write some scores).
    """
    if text_format not in TEXT_FORMAT_CHOICES:
        raise UsageError(f"--text-format: expected one of {', '.join(TEXT_FORMAT_CHOICES)} (got {text_format!r})")
    if text_format != "auto":
        return text_format
    scores = {f for f in score_formats if f in ("humdrum", "musicxml", "abc")}
    return MIXED_FORMAT_DEFAULT if len(scores) > 1 else "raw"


def converter_versions(text_format: str) -> dict:
    """The converters behind a canonical format, recorded in the feature parameters (a new music21 or
    converter21 may write other text for the same score, so stores converted by different versions are not
    mixed)."""
    import music21

    versions = {"music21": str(music21.__version__)}
    if text_format == "kern":
        import converter21

        versions["converter21"] = _package_version("converter21", getattr(converter21, "__version__", None))
    return versions


def _package_version(name: str, fallback) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return str(fallback)


# ---------------------------------------------------------------------------------------------- parsing


def parse_score(*, path=None, text=None, fmt=None, name=None):
    """A score file (or inline score text) parsed by music21, within the text stage's bounds.

    Parameters
    ----------
    path : str or Path, optional
    text : str, optional
        Exactly one of ``path`` and ``text``.
    fmt : {'humdrum', 'musicxml', 'abc'}, optional
        Default: from the suffix of ``path``, or sniffed from ``text``.
    name : str, optional
        How the score is named in errors (default: the path, or ``<inline score>``).

    Returns
    -------
    music21.stream.Score

    Raises
    ------
    InputError
        One line naming the score: missing, over a bound, unparseable, several pieces, or no notes.
    """
    from genrecli.text.convert import _sniff_format, check_score_bounds, check_text_bounds, score_format

    if (path is None) == (text is None):
        raise UsageError("parse_score needs exactly one of path= and text=")
    path = Path(path) if path is not None else None
    name = name or (str(path) if path is not None else "<inline score>")
    if path is not None:
        if not path.is_file():
            raise InputError(f"{name}: score file not found")
        fmt = fmt or score_format(path)
        check_score_bounds(path, fmt)  # music21 would spend gigabytes on a zip bomb or a 50 MB kern line
    else:
        fmt = fmt or _sniff_format(text, name)
        check_text_bounds(text, name)

    return checked_parse(lambda: read_with_music21(path, text, fmt), name=name, fmt=fmt)


def read_with_music21(path: Path | None, text: str | None, fmt: str):
    """music21's parse of a score file or text (no bounds, no checks: see :func:`checked_parse`)."""
    from music21 import converter

    if path is not None:
        # No pickle cache: music21 would write one per file into a shared temp folder, then re-read it.
        return converter.parse(path, format=fmt, forceSource=True, storePickle=False)
    return converter.parseData(text, format=fmt)


def checked_parse(parse, *, name: str, fmt: str):
    """Run a music21 ``parse()`` the way every stage does: its stderr notices kept out of the output (one
    ``--verbose`` line instead), its errors as one :class:`InputError` line, an opus of one piece unwrapped,
    and a score without notes refused. The one place the text and audio stages read scores through.

    Returns
    -------
    music21.stream.Score
    """
    from music21 import stream

    from genrecli.audio.io import one_line

    # music21 writes a warning straight to stderr for every token it skips (hundreds for some kern files,
    # none naming the file); keep them out of the stage's output and give one line with --verbose.
    notices = io.StringIO()
    try:
        with contextlib.redirect_stderr(notices):
            score = parse()
    except Exception as exc:  # noqa: BLE001 - music21 raises many unrelated types for malformed input
        raise InputError(f"{name}: cannot parse {fmt} score ({one_line(exc)})") from None
    if skipped := [line for line in notices.getvalue().splitlines() if line.strip()]:
        first = re.sub(r"^\S+: WARNING: ", "", one_line(skipped[0]))  # drop music21's "module: WARNING:" prefix
        ui.debug(f"{name}: music21 skipped {len(skipped)} unreadable token(s), first: {first}")
    if isinstance(score, stream.Opus):
        if len(score.scores) != 1:
            raise InputError(f"{name}: holds {len(score.scores)} pieces; give one piece per track")
        score = score.scores[0]
    if next(iter(score.recurse().notes), None) is None:
        raise InputError(f"{name}: score has no notes")
    return score


# ---------------------------------------------------------------------------------------------- writers


def score_to_kern(score, *, name: str = "<score>") -> str:
    """Humdrum ``**kern`` of a music21 score, written by converter21 (metadata records included).

    Raises
    ------
    InputError
        converter21 cannot write the score (it rejects some voice layouts: "layer index is -1").
    """
    from converter21.humdrum import HumdrumWriter

    from genrecli.audio.io import one_line

    out = io.StringIO()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            ok = HumdrumWriter(score).write(out)
    except Exception as exc:  # noqa: BLE001 - converter21 raises its own and music21's errors
        raise InputError(f"{name}: converter21 cannot write the score as **kern ({one_line(exc)})") from None
    text = out.getvalue()
    if not ok or "**kern" not in text:
        raise InputError(f"{name}: converter21 wrote no **kern spine for the score")
    return text


def score_to_musicxml(score, *, name: str = "<score>") -> str:
    """MusicXML of a music21 score, as music21's exporter writes it (metadata included).

    music21 names parts it has no id for by ``id()`` of the Python object, which differs between runs; they
    are renumbered ``P1, P2, ...`` in order of appearance so the same score always gives the same text.
    """
    from music21.musicxml.m21ToXml import GeneralObjectExporter

    from genrecli.audio.io import one_line

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            data = GeneralObjectExporter(score).parse()
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{name}: music21 cannot write the score as MusicXML ({one_line(exc)})") from None
    text = data.decode("utf-8") if isinstance(data, bytes) else str(data)
    ids: dict[str, str] = {}
    for pid in re.findall(r'<score-part id="([^"]+)"', text):
        ids.setdefault(pid, f"P{len(ids) + 1}")
    if ids:
        text = re.sub(r'(<(?:score-part|part) id=")([^"]+)(")', lambda m: m[1] + ids.get(m[2], m[2]) + m[3], text)
    return text


def score_to_tokens(score, *, ticks_per_quarter: int = TICKS_PER_QUARTER) -> str:
    """The format-neutral note-event text of a score (:data:`TOKENS_SPEC`); one line per bar.

    Parameters
    ----------
    score : music21.stream.Score
    ticks_per_quarter : int
        Resolution of positions and durations (rounded to the nearest tick).

    Returns
    -------
    str
        e.g. ``"| M3/4 K-1 @0 F3:24 A4:12 @12 B-4:12 @24 ...\\n| @0 ...\\n"``.

    Bars come from the time signatures (:func:`_metric_bars`), tied notes are merged into one, and notes are
    placed by their offset in the whole score, so measures, ties, voices, staves and parts need not agree
    between formats for the text to agree.
    """
    from music21 import harmony, key, meter

    def ticks(q) -> int:
        return int(math.floor(Fraction(q) * ticks_per_quarter + Fraction(1, 2)))

    flat = score.flatten()
    starts = _metric_bars(flat, ticks, pickup=_pickup(score))
    marks: dict[int, list[str]] = {}
    last = {"M": None, "K": None}
    for element in flat.getElementsByClass((meter.TimeSignature, key.KeySignature)):
        kind = "M" if isinstance(element, meter.TimeSignature) else "K"
        value = element.ratioString if kind == "M" else str(element.sharps)
        at = ticks(element.offset)
        if last[kind] == value:
            continue  # the same signature restated (in each part, or at a new system) is not a change
        last[kind] = value
        marks.setdefault(at, []).append(f"{kind}{value}")
    onsets: dict[int, list[tuple[int, str]]] = {}
    for n in flat.stripTies(matchByPitch=True).notes:
        if isinstance(n, harmony.ChordSymbol):  # chord names are annotations, not sounding notes
            continue
        at, dur = ticks(n.offset), ticks(n.quarterLength)
        for p in n.pitches:
            onsets.setdefault(at, []).append((p.ps, f"{p.nameWithOctave}:{dur}"))
    bars: dict[int, list[str]] = {s: [] for s in starts}
    for at in sorted(set(marks) | set(onsets)):
        bar = starts[max(bisect.bisect_right(starts, at) - 1, 0)]
        words = bars[bar]
        words += sorted(marks.get(at, []), key=lambda w: (w[0] != "M", w))  # time signature, then key
        if at in onsets:
            words.append(f"@{at - bar}")
            words += [w for _, w in sorted(onsets[at])]
    return "".join("| " + " ".join(bars[s]) + "\n" if bars[s] else "|\n" for s in starts)


def _pickup(score) -> Fraction:
    """The length (quarters) of an opening pickup bar: the first measure of the first part when it is shorter
    than its time signature's bar, else 0."""
    from music21 import stream

    part = score.parts[0] if score.parts else score
    first = next(iter(part.getElementsByClass(stream.Measure)), None)
    if first is None:
        return Fraction(0)
    ts = first.timeSignature or next(iter(first.recurse().getElementsByClass("TimeSignature")), None)
    if ts is None:
        return Fraction(0)
    full, have = Fraction(ts.barDuration.quarterLength), Fraction(first.duration.quarterLength)
    return have if 0 < have < full else Fraction(0)


def _metric_bars(flat, ticks, *, pickup=Fraction(0)) -> list[int]:
    """Bar starts (ticks) on the time signatures' grid: from each signature on, one bar per bar length (4/4
    before the first signature), after an opening ``pickup`` bar, up to the end of the score.

    The written measures are not used: formats (and music21's readers) disagree on them (a kern measure split
    in two by a dotted barline, re-barred on MusicXML export, ABC tunes read without measures), while the
    signatures and the notes' offsets agree.
    """
    from music21 import meter

    end = max(ticks(flat.highestTime), 1)
    changes = [(ticks(ts.offset), ticks(ts.barDuration.quarterLength))
               for ts in flat.getElementsByClass(meter.TimeSignature)]
    changes = sorted(dict(changes).items())  # one per offset (every part restates it)
    if not changes or changes[0][0] > 0:
        changes.insert(0, (0, ticks(4)))
    first_bar = ticks(pickup)
    starts = [0] if first_bar else []
    for (at, length), (until, _) in zip(changes, changes[1:] + [(end, 0)]):
        at = max(at, first_bar)
        starts += range(at, max(until, at), max(length, 1))
    return sorted(set(starts)) or [0]


# ---------------------------------------------------------------------------------------------- text


def canonical_text(*, path=None, text=None, fmt=None, text_format: str, keep_metadata: bool = False,
                   name=None) -> str:
    """A score (file or inline text, any format) re-written in ``text_format`` and de-identified.

    Parameters
    ----------
    path, text, fmt, name
        As :func:`parse_score`.
    text_format : {'kern', 'musicxml', 'tokens'}
    keep_metadata : bool
        False strips composer/title/... records from the written kern or MusicXML exactly as for raw files
        (:func:`genrecli.text.convert.score_to_text`); tokens never carry metadata.

    Raises
    ------
    InputError
        One line naming the score: unparseable, or the writer cannot write it.
    """
    from genrecli.text.convert import score_to_text

    if text_format not in CANONICAL_FORMATS:
        raise UsageError(f"canonical_text: text_format must be one of {', '.join(CANONICAL_FORMATS)} (got {text_format!r})")
    name = name or (str(path) if path is not None else "<inline score>")
    # The raw format's checks first (no kern spine, ragged spines, no ABC key field, ...): a file the raw text
    # stage refuses is refused in every format, with the same message, before music21 guesses around it.
    score_to_text(path=path, text=text, fmt=fmt)
    score = parse_score(path=path, text=text, fmt=fmt, name=name)
    if text_format == "tokens":
        return score_to_tokens(score)
    if text_format == "kern":
        written, written_fmt = score_to_kern(score, name=name), "humdrum"
    else:
        written, written_fmt = score_to_musicxml(score, name=name), "musicxml"
    try:
        return score_to_text(text=written, fmt=written_fmt, keep_metadata=keep_metadata)
    except InputError as exc:  # our conversion gave text the validator rejects: name the source, not "<inline>"
        raise InputError(f"{name}: the {text_format} written from it is unusable ({str(exc).split(': ', 1)[-1]})") from None
