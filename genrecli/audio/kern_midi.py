"""Humdrum **kern to MIDI without music21: the notes music21 writes for a kern score's opening, at a fraction of the cost.

:func:`kern_midi` reads the opening that :func:`genrecli.audio.synth.score_to_midi` would hand to music21 (the text
cut by :func:`genrecli.audio.humdrum.kern_opening`) the way music21 10.5's Humdrum parser and MIDI writer read it,
and writes the Standard MIDI File music21 writes for it, byte for byte: the same channel messages (notes,
velocities, channels, program changes, pitch-wheel resets, the last only in tracks with messages), their order in
every track, the tempo map and the track ends. What it reproduces, music21's reading step by step:

* spines as ``HumdrumDataCollection.createHumdrumSpines`` tracks them (``*^`` makes two voices, ``*v`` joins two, a
  third ``*v`` on the line ends its spine, ``*x`` exchanges two); sub-spines are inserted into their root spine at the root's end time when they start, as
  ``performInsertions`` does (sub-spines of sub-spines are not: music21 drops their notes, and so does this);
* every element's offset as the running end of its (sub-)spine's stream, notes, chords (the first note's rhythm),
  rests, grace notes (no duration), tuplets and ``%`` rhythms, a token without a rhythm a quarter note (a Note's
  default), each part's elements ordered as ``flatten`` sorts them (offset, line, grace first, voice); the
  zero-duration elements of a pickup bar at its start, where moveElementsIntoMeasures moves them;
* measures where moveElementsIntoMeasures appends them (each where the contents of the one before it end): a
  barline off the Humdrum timeline (a sub-spine inserted late) is fine where music21's measures still start at
  their barlines;
* ties merged as ``stripTies(matchByPitch=True)`` merges them over a part's flattened notes and rests;
* velocities as ``volume.realizeVolume`` sets them: ``**dynam`` marks attached to the ``*staff`` they name on the
  line of a kern element (in a split ``**dynam`` spine the marks performInsertions keeps, see _dynamic_events), each mark's span from its start to the next one's in music21's float / Fraction arithmetic
  (a rounded float end can give a note at the next mark's start the previous mark), articulations (staccato,
  accent, ...) on single notes;
* ``*I`` instruments as ``instruments.fromHumdrumInstrument`` maps them, ``*ICklav`` as ``fromHumdrumClass`` does (a
  keyboard without a program: no program change at the start of its track, a program change 0 for the element),
  one channel per program (None for a part without one) in part order;
* ``*MM`` tempo marks moved to the conductor track as ``conductorStream`` moves them;
* repeat barlines (``:|``, ``|:``, ``:|!|:``, ``:!!:`` ...) as the MIDI writer's ``repeat.Expander`` expands the
  parsed opening: each barline's repeat dots as ``hdStringToMeasure`` reads them (an unnumbered ``=:|!`` is a start
  and an end; an end at a spine's first barline is lost), the measures ``moveElementsIntoMeasures`` makes, the
  innermost repeat first, every pass its own copies of the measures (their notes, ties, dynamics, tempo marks and
  instruments) laid end to end, the elements left outside the measures where they were; and where a part's repeats
  are badly formed, the opening played straight through as ``synth._midi_bytes`` plays it;
* the whole score where ``score_to_midi`` parses it whole: a score no longer than the opening (no text cut), or a cut
  ``_parse_kern_opening`` rejects (music21 reads it shorter than the opening, or other bars than its barlines).

Anything else makes it decline (:class:`Declined`): ``**text``, tempo words, microtones, a dynamic on a line whose
notes music21 reads at two times of a part (so a dynamic inside a repeated section), appoggiaturas, measures music21
appends off their barlines, tempo / meter / key marks in sub-spines where the order music21 walks them matters,
repeated measures or marks music21 places at other times than their offsets, rhythms it cannot place exactly, an
opening that ``synth._opening`` would cut again after parsing. The caller then converts with music21. On the
kern-eras corpus it accepts 693 of the 777 files. tests/test_kern_midi.py compares the notes, the MIDI bytes and
the rendered audio with music21's.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

from genrecli.audio.humdrum import kern_opening

__all__ = ["Declined", "kern_midi", "VERSION"]

VERSION = "4"  # part of the MIDI cache key: another version may write other bytes
TICKS = 10080  # music21's defaults.ticksPerQuarter
_DURATION_TYPES = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048}
_STEPS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_PATH = {"*+", "*-", "*^", "*v", "*x", "*"}
_NOTE_ON, _NOTE_OFF, _PITCH_BEND, _PROGRAM = 0x90, 0x80, 0xE0, 0xC0
_SORT_ORDER = {_NOTE_OFF: -20, _PITCH_BEND: -10, _NOTE_ON: 0, _PROGRAM: 0}
_BASE_VOLUME = 0.5 + 0.20866  # Volume.getRealized without a velocity
_ARTICULATIONS = (("'", 0.05), ('"', 0.0), ("`", 0.05), ("~", -0.05), ("^", 0.1))  # in hdStringToNote's order


class Declined(Exception):
    """Something this converter does not reproduce exactly: convert with music21 instead."""


# ------------------------------------------------------------------------------------------- elements
class _El:
    """One element of a spine's stream, as music21 makes it (a Note, Chord, Rest, Measure or tandem object)."""

    __slots__ = ("kind", "line", "dur", "grace", "pitches", "tie", "shift", "offset", "voice", "value", "vel")

    def __init__(self, kind, line, dur=Fraction(0), value=None):
        self.kind, self.line, self.dur, self.value = kind, line, dur, value
        self.grace = False
        self.pitches = ()  # ((step, alter, octave, midi, tie type or None), ...)
        self.tie = None
        self.shift = ()  # articulation volume shifts, in order
        self.offset = Fraction(0)
        self.voice = 0
        self.vel = None


@functools.lru_cache(maxsize=8192)
def _rhythm(token: str) -> tuple[Fraction, bool]:
    """hdStringToNote's quarter length and whether the token is a grace note."""
    if "P" in token:
        raise Declined("an appoggiatura (P)")
    if "q" in token or "Q" in token:
        return Fraction(0), True
    rational = re.search(r"(\d+)%(\d+)", token)
    dots = token.count(".")
    if rational:
        if dots:
            raise Declined(f"a dotted rational rhythm {token!r}")
        first, second = int(rational.group(1)), int(rational.group(2))
        if first == 0:
            raise Declined(f"rhythm {token!r}")
        return Fraction(4 * second, first), False
    number = re.search(r"(\d+)", token)
    if number is None:
        return Fraction(1), False  # hdStringToNote sets no duration: a Note's or Rest's default quarter note
    digits = number.group(1)
    value = int(digits)
    if value == 0:
        base = {"0": Fraction(8), "00": Fraction(16), "000": Fraction(32)}.get(digits)
        if base is None:
            raise Declined(f"rhythm {token!r}")
    else:
        base = Fraction(4, value)
    if dots > 3:
        raise Declined(f"rhythm {token!r}")
    if value != 0 and value not in _DURATION_TYPES and value > 2048:
        raise Declined(f"rhythm {token!r}")
    return base * (2 - Fraction(1, 2**dots)), False


@functools.lru_cache(maxsize=8192)
def _pitch(token: str):
    """(step, alter, octave, midi) of a kern note token as hdStringToNote spells it."""
    match = re.search("([a-gA-G]+)", token)
    if match is None:
        return None
    name = match.group(1)
    if len(set(name.lower())) != 1 or len(set(name)) != 1:
        raise Declined(f"pitch {token!r}")
    step = name[0].lower()
    octave = 3 + len(name) if step == name[0] else 4 - len(name)
    sharps = re.search(r"(#+)", token)
    flats = re.search(r"(-+)", token)
    if sharps:
        alter = len(sharps.group(1))
    elif flats:
        alter = -len(flats.group(1))
    else:
        alter = 0
    if abs(alter) > 3:
        raise Declined(f"accidental {token!r}")
    midi = (octave + 1) * 12 + _STEPS[step] + alter
    if not 0 <= midi <= 127:
        raise Declined(f"pitch out of the MIDI range {token!r}")
    return step, alter, octave, midi


def _tie(token: str):
    if "[" in token:
        return "start"
    if "]" in token:
        return "stop"
    if "_" in token:
        return "continue"
    return None


def _note(token: str, line: int) -> _El | None:
    """hdStringToNote of one token (None where music21 fails on it and skips the event)."""
    if "r" in token:
        if _tie(token) is not None:
            raise Declined(f"a tied rest {token!r}")
        dur, grace = _rhythm(token)
        el = _El("rest", line, dur)
        el.grace = grace
        return el
    pitch = _pitch(token)
    if pitch is None:
        raise Declined(f"a token music21 cannot read {token!r}")
    dur, grace = _rhythm(token)
    el = _El("note", line, dur)
    el.grace = grace
    el.tie = _tie(token)
    el.pitches = (pitch + (el.tie,),)
    el.shift = tuple(shift for mark, shift in _ARTICULATIONS if mark in token)
    return el


def _chord(token: str, line: int) -> _El | None:
    notes = [_note(sub, line) for sub in token.split()]
    notes = [n for n in notes if n is not None and n.kind == "note"]
    if not notes:
        return None  # music21's processChordEvent fails (IndexError) and the event is skipped
    if len({n.grace for n in notes}) > 1:
        raise Declined(f"a chord of grace and other notes {token!r}")
    el = _El("chord", line, notes[0].dur)
    el.grace = notes[0].grace
    el.pitches = tuple(n.pitches[0] for n in notes)
    el.tie = next((p[4] for p in el.pitches if p[4] is not None), None)
    return el


@functools.lru_cache(maxsize=256)
def _instrument(name: str):
    """(bestName, midiProgram) of a ``*I`` tandem music21 maps to an instrument, else None (a MiscTandem)."""
    from music21.humdrum import instruments

    try:
        inst = instruments.fromHumdrumInstrument(name)
    except instruments.HumdrumInstrumentException:
        return None
    if inst.midiProgram is None or inst.midiChannel is not None:
        raise Declined(f"instrument {name!r} without a plain program")
    return inst.bestName() or "", inst.midiProgram


@functools.lru_cache(maxsize=64)
def _instrument_class(name: str):
    """(bestName, midiProgram or None) of a ``*IC`` tandem music21 maps to an instrument, else None (a MiscTandem).

    ``*ICklav`` is a KeyboardInstrument, without a MIDI program: music21 writes no program change at the start of
    its track, keys its channel by the program None, and writes a program change 0 for the element itself.
    """
    from music21 import instrument
    from music21.humdrum import instruments

    try:
        inst = instruments.fromHumdrumClass(name)
    except instruments.HumdrumInstrumentException:
        return None
    if inst.midiChannel is not None or isinstance(inst, (instrument.UnpitchedPercussion, instrument.Percussion)):
        raise Declined(f"instrument class {name!r} without a plain program")
    return inst.bestName() or "", inst.midiProgram


@functools.lru_cache(maxsize=256)
def _dynamic_scalar(token: str) -> float:
    from music21 import dynamics

    try:
        return dynamics.Dynamic(token).volumeScalar
    except Exception as exc:  # noqa: BLE001 - music21 would fail on the whole score
        raise Declined(f"dynamic {token!r} ({exc})") from None


@functools.lru_cache(maxsize=256)
def _key_sharps(tonic: str) -> tuple[int, int]:
    from music21 import key

    try:
        k = key.Key(tonic)
    except Exception as exc:  # noqa: BLE001
        raise Declined(f"key {tonic!r} ({exc})") from None
    return k.sharps, 1 if k.mode == "minor" else 0


def _tandem(token: str, line: int) -> _El | None:
    """kernTandemToObject: the objects that reach the MIDI file are kept with their kind."""
    if token in _PATH:
        return None
    if token.startswith("*clef"):
        return _El("other", line)
    if token.startswith("*MM"):
        try:
            number = float(token[3:])
        except ValueError:
            raise Declined(f"a tempo word {token!r}") from None
        if not number > 0 or number != number:
            raise Declined(f"tempo {token!r}")
        return _El("mm", line, value=number)
    if token.startswith("*M"):
        match = re.match(r"(\d+)/(\d+)", token[2:])
        if not match:
            return None  # HumdrumException: music21 skips the event
        numerator, denominator = int(match.group(1)), match.group(2)
        if denominator in ("0", "00", "000"):
            numerator *= {"0": 2, "00": 4, "000": 8}[denominator]
            denominator = "1"
        den = int(denominator)
        if den <= 0 or den & (den - 1) or numerator <= 0 or numerator > 255:
            raise Declined(f"time signature {token!r}")
        return _El("ts", line, value=(numerator, den))
    if token.startswith("*IC"):
        inst = _instrument_class(token[3:])
        return _El("inst", line, value=inst) if inst is not None else _El("other", line, value=token[3:])
    if token.startswith(("*IG", "*ITr")):
        return _El("other", line)
    if token.startswith("*I"):
        inst = _instrument(token[2:])
        return _El("inst", line, value=inst) if inst is not None else _El("other", line, value=token)
    if token.startswith("*k"):
        sharps = token.count("#") or -token.count("-")
        if abs(sharps) > 7:
            raise Declined(f"key signature {token!r}")
        return _El("ks", line, value=(sharps, 0))
    if token.endswith(":"):
        return _El("ks", line, value=_key_sharps(token[1:-1]))
    return _El("other", line, value=token)


# -------------------------------------------------------------------------------------------- spines
class _Spine:
    __slots__ = ("parent", "children", "inserts", "first_voice", "events", "kind", "stream", "ending")

    def __init__(self, parent=None):
        self.parent = parent
        self.children = []
        self.inserts = {}  # line of the split -> (voice 1 spine, voice 2 spine)
        self.first_voice = False
        self.events = []  # (line, token)
        self.kind = None
        self.stream = []  # elements in stream order, offsets set


def _spines(lines: list[str]) -> list[_Spine]:
    """createHumdrumSpines: every spine (root and sub-spines) with its events, in creation order."""
    spines: list[_Spine] = []
    current: list[_Spine | None] = []
    for number, line in lines:
        tokens = re.split("\t+", line)
        path = False
        for j, token in enumerate(tokens):
            while len(current) <= j:
                current.append(None)
            spine = current[j]
            if spine is None:
                spine = _Spine()
                spines.append(spine)
                current[j] = spine
            spine.events.append((number, token))
            path = path or token in _PATH
        if not path:
            continue
        new: list[_Spine | None] = []
        merger = None  # None: no merge active; True: merging root spines; else the parent being merged into
        exchange = None
        for j in range(len(current)):
            token = tokens[j] if j < len(tokens) else None
            spine = current[j]
            if token is None:
                if spine is not None:
                    new.append(spine)
                continue
            if token == "*-":
                continue
            if token == "*^":
                one, two = _Spine(spine), _Spine(spine)
                one.first_voice = True
                spine.children += [one, two]
                spine.inserts[number] = (one, two)
                spines += [one, two]
                new += [one, two]
            elif token == "*v":
                if merger is None:
                    merger = spine.parent if spine.parent is not None else True
                else:
                    if spine.parent is not None:
                        new.append(spine.parent)
                    elif merger is not True:
                        new.append(merger)
                    else:
                        raise Declined("a join of two root spines")
                    merger = None
            elif token == "*x":
                if exchange is None:
                    exchange = spine
                else:
                    new += [spine, exchange]
                    exchange = None
            elif token == "*+":
                raise Declined("an added spine (*+)")
            else:
                new.append(spine)
        if exchange is not None:
            raise Declined("an unpaired exchange")
        # a join left open at the end of the line (a third *v): music21 ends that spine and keeps no spine for it
        current = new
    return spines


def _kind(spine: _Spine) -> str | None:
    while spine.parent is not None:
        spine = spine.parent
    for _, token in spine.events:
        if token.startswith("**"):
            return token[2:]
    return None


def _parse_kern_spine(spine: _Spine) -> None:
    """KernSpine.parse: the spine's elements, each at the running end of the stream (coreAppend)."""
    end = Fraction(0)
    for number, token in spine.events:
        if token == ".":
            continue
        if token.startswith("*"):
            el = _tandem(token, number)
        elif token.startswith("="):
            el = _El("measure", number, value=token)
        elif token.startswith("!"):
            el = _El("comment", number) if re.sub(r"^!+\s?", "", token) != "" else None
        elif " " in token:
            el = _chord(token, number)
        else:
            el = _note(token, number)
        if el is None:
            continue
        el.offset = end
        end += el.dur
        spine.stream.append(el)


def _insert_children(root: _Spine) -> list[_El]:
    """performInsertions for one root spine (its sub-spines, not theirs), as music21's loop does it."""
    if not root.children:
        return list(root.stream)
    out: list[_El] = []
    high = Fraction(0)
    points = sorted(root.inserts)

    def insert(point):
        nonlocal high
        start = high
        for voice, child in enumerate(root.inserts[point], start=1):
            # grandchildren are never inserted (music21's loop only visits root spines): their notes are lost
            for el in child.stream:
                if el.kind == "measure" and not child.first_voice:
                    continue
                el.offset = start + el.offset
                el.voice = voice
                out.append(el)
                high = max(high, el.offset + el.dur)

    last = -1
    for el in root.stream:
        line = el.line
        i = 0
        while i < len(points):  # music21 removes from the list it iterates over: the next point is skipped
            point = points[i]
            if last > point or line < point:
                i += 1
                continue
            insert(point)
            points.pop(i)
            i += 1
        last = line
        el.offset = high
        out.append(el)
        high = high + el.dur
    for point in points:
        insert(point)
    return out


# ------------------------------------------------------------------------------------ the conversion
def _opening_text(text: str, max_seconds: float) -> str | None:
    """The cut _parse_kern_opening hands to music21, None where it parses the whole score."""
    qpm = 120.0
    for mark in re.findall(r"(?:^|\t)\*MM([^\t\n]*)", text, flags=re.MULTILINE):
        try:
            qpm = max(qpm, float(mark))
        except ValueError:
            raise Declined("a tempo word") from None
    return kern_opening(text, quarters=max_seconds * qpm / 60.0)


class _WholeScore(Exception):
    """_parse_kern_opening rejects music21's reading of the cut: the whole score is parsed instead."""


def _lines(cut: str) -> tuple[list[tuple[int, str]], int]:
    """The spine lines of the cut (1-based line numbers) and how many barlines it has."""
    out = []
    for number, raw in enumerate(cut.split("\n")[:-1] if cut.endswith("\n") else cut.split("\n"), start=1):
        if "\r" in raw or "\x0b" in raw or "\x0c" in raw or "\x1c" in raw or "\x1d" in raw or "\x1e" in raw:
            raise Declined("a line break music21 reads otherwise")
        line = raw.rstrip()
        if line == "" or line.startswith("!!"):
            continue
        if line != raw and raw.rstrip("\t") != raw:
            raise Declined("a line with trailing tabs")
        out.append((number, line))
    barlines = sum(1 for line in cut.split("\n") if line.startswith("="))
    return out, barlines


def kern_midi(text: str, *, max_seconds: float) -> bytes:
    """The Standard MIDI File music21 writes for the opening of a one-piece **kern score (see the module doc).

    Parameters
    ----------
    text : str
        The Humdrum file as music21 reads it (Latin-1 decoded, newlines "\\n").
    max_seconds : float
        The opening's length, as ``score_to_midi(max_seconds=...)``.

    Raises
    ------
    Declined
        The score holds something this converter does not reproduce exactly.
    """
    cut = _opening_text(text, max_seconds)
    if cut is not None:
        try:
            return _convert(cut, max_seconds, whole=False)
        except _WholeScore:
            pass
    # score_to_midi parses the whole score (a short one, or a cut music21 reads otherwise), then cuts it
    if "\x85" in text:
        raise Declined("a line break music21 reads otherwise")  # parseData's splitlines splits at U+0085
    return _convert(text, max_seconds, whole=True)


def _convert(cut: str, max_seconds: float, *, whole: bool) -> bytes:
    """The MIDI file of music21's parse of ``cut``: the text cut, or with ``whole`` the whole score."""
    lines, barlines = _lines(cut)
    if not lines or not lines[0][1].startswith("**"):
        raise Declined("no exclusive interpretation on the first spine line")
    if any(line.startswith("**") for _, line in lines[1:]):
        raise Declined("a second exclusive interpretation line")
    kinds = set(re.split("\t+", lines[0][1]))
    if not kinds <= {"**kern", "**dynam", "**fing"}:
        raise Declined(f"spines {sorted(kinds - {'**kern', '**dynam', '**fing'})}")
    spines = _spines(lines)
    roots = []
    dynams = []
    for spine in spines:
        spine.kind = _kind(spine)
        if spine.kind == "kern":
            _parse_kern_spine(spine)
            if spine.parent is None:
                roots.append(spine)
        elif spine.kind == "dynam" and spine.parent is None:
            dynams.append(spine)

    if not roots:
        raise Declined("no **kern spine")
    parts = []
    for root in roots:
        stream = _insert_children(root)
        _pickup_at_zero(stream)
        parts.append(stream)
    if not any(el.kind in ("note", "chord") for part in parts for el in part):
        raise Declined("a score without notes")  # checked_parse refuses it
    _check_reading(parts, barlines, max_seconds, whole)
    for part in parts:
        _check_measures(part)
    parts, read = _expand_repeats(spines, parts, max_seconds), parts  # music21 cuts what it read, then expands it
    _attach_dynamics(roots, read, parts, [_dynamic_events(spine) for spine in dynams])
    parts = parts[::-1]  # music21's score lists the kern spines right to left
    _check_score_cut(read[-1], parts, max_seconds)
    tracks = [_part_events(stream) for stream in parts]
    return _write(parts, tracks)


def _sort_key(el: _El):
    return (el.offset, el.line, 0 if el.grace else 1, el.voice)


def _check_reading(parts: list[list[_El]], barlines: int, max_seconds: float, whole: bool) -> None:
    """_parse_kern_opening's two checks of music21's reading of the cut (where they fail, _WholeScore: the whole
    score is parsed), and what the converter assumes of it."""
    fastest = max([120.0] + [el.value for part in parts for el in part if el.kind == "mm"])
    highest = max((el.offset + el.dur for part in parts for el in part), default=Fraction(0))
    if not whole and highest < Fraction(max_seconds * fastest / 60.0):
        raise _WholeScore("music21 reads the cut shorter than the opening")
    for part in parts:
        measures = [el for el in part if el.kind == "measure"]
        count = len(measures)
        first = min((el.line for el in measures), default=None)
        ordered = sorted(part, key=_sort_key)
        if any(el.kind in ("note", "chord", "rest") and el.dur > 0 and (first is None or _before(el, measures[0]))
               for el in ordered):
            count += 1  # the pickup measure 0
        if not whole and abs(count - barlines) > 1:
            raise _WholeScore("music21 reads other bars than the cut's barlines")
        # zero-duration elements after an unnumbered barline go to the part, not the measure (moveElementsIntoMeasures)
        number = 0
        seen_measure = False
        for el in ordered:
            if el.kind == "measure":
                match = re.search(r"(\d+)([a-z]?)", el.value)
                number = int(match.group(1)) if match else 0
                seen_measure = True
            elif el.dur == 0 and seen_measure and number == 0 and el.kind in ("note", "chord", "rest", "mm", "inst"):
                raise Declined("an element after an unnumbered barline")
        for el in ordered:
            if el.kind == "inst" and (el.offset != 0 or el.voice):
                raise Declined("an instrument change inside a part")


def _measure_offsets(part: list[_El]) -> list[Fraction]:
    """The offsets of the measures moveElementsIntoMeasures makes of a part: a pickup measure 0 where an element
    with a duration comes before the first barline, one per barline, the last one only where something follows it."""
    offsets = []
    started = False  # a measure is open (a barline seen, or a pickup with a duration)
    current = None
    filled = False
    for el in sorted(part, key=_sort_key):
        if el.kind == "measure":
            if current is not None and (filled or current != "0"):
                offsets.append(current_offset)
            elif current is None and started:
                offsets.append(Fraction(0))
            match = re.search(r"(\d+)", el.value)
            current, current_offset, filled = (match.group(1) if match else "0"), el.offset, False
        elif current is None:
            started = started or el.dur != 0
        elif el.dur != 0 or current != "0":
            filled = True
    if current is None:
        if started:
            offsets.append(Fraction(0))
    elif filled:
        offsets.append(current_offset)
    return offsets


def _check_score_cut(first: list[_El], parts: list[list[_El]], max_seconds: float) -> None:
    """Decline where music21 would cut the parsed opening again: ``synth._opening`` keeps the measures of the
    score's first part that start at or before the bound, plus one, and cuts where that leaves a measure out (two
    or more start past the bound). The native file would then hold the notes past the cut (tests/test_kern_midi.py
    checks the measure offsets against music21's reading)."""
    fastest = max([120.0] + [el.value for part in parts for el in part if el.kind == "mm"])
    bound = max_seconds * fastest / 60.0
    if sum(1 for offset in _measure_offsets(first) if offset > bound) >= 2:
        raise Declined("music21 cuts the parsed opening again")


def _check_measures(part: list[_El]) -> None:
    """Every measure where music21 puts it: moveElementsIntoMeasures appends each measure to the part
    (``coreAppend``: at the end of the measures before it, each as long as its contents reach), so a measure
    starts at its barline only where the measures before it end there. Where a barline comes before the end of
    what the measure before it holds (a spine's notes music21 inserts elsewhere), music21 shifts every later
    measure and its notes: decline."""
    position = Fraction(0)  # where music21 appends the next measure
    start = Fraction(0)  # the open measure's barline offset
    reach = Fraction(0)  # how far the open measure's contents reach past its start
    number = "0"
    held = False  # the open measure holds something
    for el in sorted(part, key=_sort_key):  # the kern parser's priorities are line numbers: offset, then line
        if el.kind == "measure":
            if number != "0" or held:
                position += reach
            if position != el.offset:
                raise Declined("a barline music21 reads at another time than the Humdrum timeline")
            match = re.search(r"(\d+)", el.value)
            number, start, reach, held = (match.group(1) if match else "0"), el.offset, Fraction(0), False
        elif number != "0" or el.dur != 0:
            held = True
            reach = max(reach, el.offset - start + el.dur)


def _before(el: _El, measure: _El) -> bool:
    return _sort_key(el) < _sort_key(measure)


def _pickup_at_zero(part: list[_El]) -> None:
    """moveElementsIntoMeasures leaves the zero-duration elements before the first barline in the part (appended at
    its end, offset 0 then) and moves them into the first measure at offset 0: a grace note or a tempo mark late
    in a pickup bar sounds at its start."""
    for el in sorted(part, key=_sort_key):
        if el.kind == "measure":
            return
        if el.dur == 0:
            el.offset = Fraction(0)


def _dynamic_events(spine: _Spine) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """The (line, token) events of a **dynam spine whose Dynamic objects attachNonKernEvents finds by their line,
    and the events it finds the spine's ``*staff`` among.

    A spine split by ``*^`` gets its sub-spines inserted as performInsertions inserts them: the line numbers of the
    elements the loop walks (the spine's own, before its first barline: DynamSpine.parse puts the later ones into
    Measure containers, which have none) are deleted, so those dynamics are lost; the first sub-spine's elements
    and containers are inserted, of the second only what comes before its first barline (the containers of
    sub-spines other than the first are skipped as measures). Sub-spines of sub-spines are never inserted.
    The events come in the order music21 keys them by line (a later one replaces an earlier one on its line).
    """
    if not spine.children:
        return spine.events, spine.events

    def after_first_barline(events):
        for k, (_, token) in enumerate(events):
            if token.startswith("="):
                return events[k:]
        return []

    def before_first_barline(events):
        for k, (_, token) in enumerate(events):
            if token.startswith("="):
                return events[:k]
        return events

    kept = list(after_first_barline(spine.events))
    for child in spine.children:
        if child.children:
            raise Declined("a split of a split **dynam spine")
        kept += child.events if child.first_voice else before_first_barline(child.events)
    first_split = min(spine.inserts)
    staff_events = [(n, t) for n, t in spine.events if n < first_split]
    if any(t.startswith("*staff") for n, t in spine.events if n > first_split) or any(
            t.startswith("*staff") for child in spine.children for _, t in child.events):
        raise Declined("a *staff after the split of a **dynam spine")  # (none before it: no staff, no dynamics)
    # Where both sub-spines have a dynamic on a line, the second's wins: prioritiesToSearch keeps the last one that
    # stream[Dynamic] walks, every element at offset 0 (none has a duration), the Measure containers first.
    return kept, staff_events


def _attach_dynamics(roots: list[_Spine], read: list[list[_El]], parts: list[list[_El]], dynams: list[tuple]) -> None:
    """attachNonKernEvents for **dynam, then realizeVolume: each note's and chord's velocity.

    ``read`` are the parts as parsed, ``parts`` the same with their repeats expanded: a mark goes with the kern
    element on its line, so every pass of a repeated measure holds its own copy of it (the Dynamic object travels
    with its measure)."""
    staffs: dict[int, int] = {}
    for index, root in enumerate(roots):
        for el in sorted(read[index], key=_sort_key):
            if el.kind == "measure":
                break  # music21 looks for *staff among the elements it left before the first measure
            if el.kind == "other" and isinstance(el.value, str) and el.value.startswith("*staff"):
                try:
                    staffs[int(el.value[6:])] = index  # a later spine naming the same staff wins
                except ValueError:
                    raise Declined(f"staff {el.value!r}") from None
                break
    marks: list[list[tuple]] = [[] for _ in parts]
    for events, staff_events in dynams:
        applied: list[int] = []
        by_line: dict[int, float] = {}
        for number, token in staff_events:
            if token.startswith("*staff"):
                try:
                    applied = [int(x) for x in token[6:].split("/")]
                except ValueError:
                    raise Declined(f"staff {token!r}") from None
                break
        for number, token in events:
            if token == "." or token.startswith(("*", "=", "!", "<", ">")):
                continue
            by_line[number] = _dynamic_scalar(token)
        for staff in applied:
            if staff not in staffs:
                raise Declined(f"a **dynam spine for a missing staff {staff}")
            at: dict[int, set] = {}
            for el in read[staffs[staff]]:
                if el.line in by_line:
                    at.setdefault(el.line, set()).add(el.offset)
            for el in parts[staffs[staff]]:
                if el.line in by_line:
                    marks[staffs[staff]].append((el.offset, by_line[el.line], el.line, el.voice))
            if any(len(offsets) > 1 for offsets in at.values()):
                # one Dynamic object inserted at two times of a part (voices out of step): its flattened part
                # holds it once, at one of them
                raise Declined("a dynamic attached at two times of a part")
    for index, part in enumerate(parts):
        found = sorted(set(marks[index]))
        by_offset: dict[Fraction, set] = {}
        for offset, scalar, _, _ in found:
            by_offset.setdefault(offset, set()).add(scalar)
        if any(len(s) > 1 for s in by_offset.values()):
            raise Declined("two dynamics at one time in a part")
        starts = sorted(by_offset)
        scalars = [next(iter(by_offset[o])) for o in starts]
        bounds = _dynamic_spans(part, starts)
        if bounds:
            from music21.common import opFrac
        last = 0
        for el in sorted(part, key=_sort_key):
            if el.kind not in ("note", "chord"):
                continue
            value = _BASE_VOLUME
            if bounds:
                start = opFrac(el.offset)
                for k in range(last, len(bounds)):
                    if bounds[k][1] > start >= bounds[k][0]:
                        last = k
                        value = value * (scalars[k] * 2.0)
                        break
            for shift in el.shift:
                value += shift
            value = min(1.0, max(0.0, value))
            el.vel = int(round(value * 127))


def _dynamic_spans(part: list[_El], starts: list[Fraction]) -> list[tuple]:
    """realizeVolume's (start, end) of each dynamic, in music21's arithmetic.

    Offsets are opFrac'd (a float where the denominator is a power of two, else a Fraction); extendDuration makes
    each span ``opFrac(next start - start)`` (the last one to the part's highest time) and the end is
    ``start + span``: a float plus a Fraction is a rounded float, which may reach past the next dynamic's start and
    give a note there the previous dynamic, as music21 does.
    """
    if not starts:
        return []
    from music21.common import opFrac

    highest = max((el.offset + el.dur for el in part), default=Fraction(0))
    points = [opFrac(o) for o in starts] + [opFrac(highest)]
    return [(a, a + opFrac(b - a)) for a, b in zip(points, points[1:])]


def _strip_ties(part: list[_El]) -> set[int]:
    """stream.stripTies(matchByPitch=True) over a part's flattened notes and rests: ids of the removed elements."""
    items = [el for el in sorted(part, key=_sort_key) if el.kind in ("note", "chord", "rest") and el.dur > 0]
    connected: list[int] = []
    delete: list[int] = []
    for i, n in enumerate(items):
        last_i = i - 1 if i > 0 else None
        last = items[last_i] if last_i is not None else None

        def end_match(inner) -> bool:
            if inner.kind == "note" and inner.tie == "stop":
                return True
            if (last is not None and last_i in connected and last.kind == "note" and inner.kind == "note"
                    and last.pitches[0][:3] == inner.pitches[0][:3]):
                return True
            if last is not None and inner.kind != "note" and last_i in connected:
                a = [p for p in last.pitches]
                b = [p for p in inner.pitches]
                if len(a) != len(b):
                    return False
                return all(pa[0] == pb[0] and pa[3] == pb[3] for pa, pb in zip(a, b))
            return False

        match = None
        tie = n.tie if n.kind != "rest" else None
        if tie == "start":
            if last_i is None or last_i not in connected:
                connected = [i]
            else:
                connected.append(i)
            match = False
        elif tie == "continue":
            if not connected:
                connected.append(i)
            elif end_match(n):
                connected.append(i)
            else:
                connected = [i]
            match = False
        if match is None:
            match = end_match(n)
        if match:
            connected.append(i)
            if len(connected) < 2:
                connected = []
                continue
            total = sum((items[q].dur for q in connected[1:]), Fraction(0))
            if total == 0:
                raise Declined("aggregated ties with no duration")
            delete += connected[1:]
            first = items[connected[0]]
            first.dur = first.dur + total
            first.tie = None
            connected = []
    return {id(items[i]) for i in delete}


def _part_events(part: list[_El]) -> list[tuple[int, int, int, int, int]]:
    """The part's channel packets (tick, sort order, kind, data1, data2) sorted as music21 sorts them; channel later."""
    removed = _strip_ties(part)
    packets = []
    for el in sorted(part, key=_sort_key):
        if id(el) in removed:
            continue
        if el.kind == "inst":
            # instrumentToMidiEvents: a program change for every instrument, 0 for one without a program
            packets.append((_ticks(el.offset), _PROGRAM, el.value[1] if el.value[1] is not None else 0, 0))
        elif el.kind in ("note", "chord"):
            on = _ticks(el.offset)
            off = on + _ticks(el.dur)
            for pitch in el.pitches:
                packets.append((on, _NOTE_ON, pitch[3], el.vel))
            for pitch in el.pitches:
                packets.append((off, _NOTE_OFF, pitch[3], 0))
    packets.sort(key=lambda p: (p[0], _SORT_ORDER[p[1]]))
    return packets


def _ticks(quarters: Fraction) -> int:
    return int(round(quarters * TICKS))


# ----------------------------------------------------------------------------------- repeat barlines
#
# music21's MIDI writer expands the repeats of the parsed opening (repeat.Expander, via _prepare_in_place in
# synth.py) before it realises the volumes and moves the tempo, time and key signature marks into the conductor
# track: every pass of a repeated section holds its own copies of the section's measures, laid end to end, and
# the elements the parser left outside the measures stay where they were. Where a part's repeats are badly formed
# (an unclosed start, or more ends than starts can close) music21 cannot expand the score and synth._midi_bytes
# plays it straight through, its repeat marks removed: the reading without repeats.
_MIDI_KINDS = ("note", "chord", "rest", "mm", "ts", "ks", "inst")  # the elements whose place reaches the MIDI file


def _repeat_signs(token: str) -> tuple[bool, bool]:
    """hdStringToMeasure's repeat dots of a barline token: (a start repeat on its measure's left barline, an end
    repeat on the right barline of the measure before it in the same spine)."""
    both = token.count(":") > 1
    start = both or re.search(r"[|!=]:", token) is not None
    end = both or re.search(r":[|!=]", token) is not None
    return start, end


def _barline_repeats(spines: list[_Spine]) -> dict[int, tuple[bool, bool, bool]]:
    """id of each measure element -> (start repeat on its left, end repeat on its right, a right barline at all).

    Each spine parses its barlines as a chain: a barline sets the right barline of the spine's previous measure
    (a dummy measure 0 that is never used before the spine's first barline, so an end repeat there is lost) and
    a start repeat on its own measure's left barline."""
    signs: dict[int, tuple[bool, bool, bool]] = {}
    for spine in spines:
        if spine.kind != "kern":
            continue
        measures = [el for el in spine.stream if el.kind == "measure"]
        for k, el in enumerate(measures):
            start = _repeat_signs(el.value)[0]
            following = measures[k + 1] if k + 1 < len(measures) else None
            end = following is not None and _repeat_signs(following.value)[1]
            signs[id(el)] = (start, end, following is not None)
    return signs


def _has_barlines(measure: _El | None, signs: dict) -> bool:
    """Whether the parser gave the measure barline objects (a left start repeat or a right barline): a measure
    with them is not empty, and moveElementsIntoMeasures keeps it even unnumbered and without elements."""
    start, _, right = signs.get(id(measure), (False, False, False))
    return start or right


def _measure_groups(part: list[_El], signs: dict) -> tuple[list[tuple], list[_El]]:
    """moveElementsIntoMeasures of a part: its measures in order, each (barline element or None for a pickup,
    the offset its elements are placed from, its elements), and the elements left in the part.

    A measure is kept when it has a number, elements or barline objects; the elements without a duration before
    the first barline or after an unnumbered one stay in the part, those at offset 0 (but MiscTandems) move into
    the first measure. Declined where music21 would place an element or a measure at another time than its
    offset here."""
    measures: list[tuple] = []
    loose: list[_El] = []
    current, start, members, number = None, Fraction(0), [], 0
    end = Fraction(0)  # music21's highestTime of the part being built: where the next measure goes

    def flush():
        nonlocal end
        if current is not None and start != end:
            raise Declined("a repeated measure music21 places at another time")
        extent = max((el.offset + el.dur - start for el in members), default=Fraction(0))
        measures.append((current, start, members))
        end = start + extent

    for el in sorted(part, key=_sort_key):
        if el.kind == "measure":
            if number != 0 or members or _has_barlines(current, signs):
                flush()
            match = re.search(r"(\d+)", el.value)
            current, start, members, number = el, el.offset, [], int(match.group(1)) if match else 0
        elif number != 0 or el.dur != 0:
            members.append(el)
        else:
            if el.kind in _MIDI_KINDS and el.offset != end:
                raise Declined("an element music21 moves to another time (repeats)")
            loose.append(el)
    if members or _has_barlines(current, signs):
        flush()
    if measures:
        first = measures[0][2]
        for el in [el for el in loose if el.offset == 0 and el.kind in _MIDI_KINDS]:
            loose.remove(el)
            first.append(el)
    return measures, loose


def _expanded_order(flags: list[tuple[bool, bool]]) -> list[int] | None:
    """Expander.process of a part's measures, given each measure's (start repeat left, end repeat right): the
    indices of the measures in the expanded part, or None where the repeats are badly formed."""
    if not any(left or right for left, right in flags):
        return list(range(len(flags)))
    balance = 0
    for left, right in flags:  # repeatBarsAreCoherent: an end without a start repeats from the beginning
        balance += left
        if right:
            balance = max(balance, 1) - 1
    if balance != 0:
        return None
    seq = [(index, left, right) for index, (left, right) in enumerate(flags)]
    for _ in range(100):  # _processRecursiveRepeatBars: the innermost repeat first, each played twice
        starts: list[int] = []
        span = None
        for i, (_, left, right) in enumerate(seq):
            if left:
                starts.append(i)
            if right:
                span = (starts[-1] if starts else 0, i)
                break
        if span is None:
            raise Declined("repeats music21 expands to nothing")
        a, b = span
        passes = [(index, left and i not in (a, b), right and i not in (a, b))
                  for i, (index, left, right) in enumerate(seq[a:b + 1], start=a)]
        seq = seq[:a] + passes + passes + seq[b + 1:]
        if not any(left or right for _, left, right in seq):
            return [index for index, _, _ in seq]
    raise Declined("more repeats than music21 expands")


def _copy(el: _El, offset: Fraction) -> _El:
    new = _El(el.kind, el.line, el.dur, el.value)
    new.grace, new.pitches, new.tie, new.shift, new.voice = el.grace, el.pitches, el.tie, el.shift, el.voice
    new.offset = offset
    return new


def _expand_repeats(spines: list[_Spine], parts: list[list[_El]], max_seconds: float) -> list[list[_El]]:
    """The parts as music21's MIDI writer sees them after it expanded their repeats (the parts themselves where
    nothing is repeated or the repeats are badly formed: then music21 plays the opening straight through)."""
    signs = _barline_repeats(spines)
    if not any(left or right for left, right, _ in signs.values()):
        return parts
    grouped = [_measure_groups(part, signs) for part in parts]
    # _check_score_cut with the measures of the score's first part (the last spine) counted as music21 keeps them:
    # an empty measure with a start repeat (after a closing =:|!) is one, and a second cut would drop it
    fastest = max([120.0] + [el.value for part in parts for el in part if el.kind == "mm"])
    if sum(1 for _, start, _ in grouped[-1][0] if start > max_seconds * fastest / 60.0) >= 2:
        raise Declined("music21 cuts the parsed opening again")
    orders = []
    for measures, _ in grouped:
        if not measures:
            raise Declined("a part without measures beside repeats")
        flags = [signs.get(id(m), (False, False, False))[:2] for m, _, _ in measures]
        orders.append(_expanded_order(flags))
    if any(order is None for order in orders):
        return parts  # badly formed repeats: straight through
    expanded = []
    for (measures, loose), order in zip(grouped, orders):
        out = list(loose)
        walk = {id(el): (el.offset, el.line, 0, ()) for el in loose}  # the order conductorStream visits them in
        end = Fraction(0)
        for index in order:
            barline, start, members = measures[index]
            if barline is not None:
                out.append(_copy(barline, end))
            for el in members:
                out.append(_copy(el, end + el.offset - start))
                walk[id(out[-1])] = (end, barline.line if barline is not None else 0, 1, _sort_key(out[-1]))
            end += max((el.offset + el.dur - start for el in members), default=Fraction(0))
        for kind in ("mm", "ts", "ks"):
            marks = [el for el in sorted(out, key=_sort_key) if el.kind == kind]
            if marks != sorted(marks, key=lambda el: walk[id(el)]):
                raise Declined("conductor marks music21 reads in another order (repeats)")
        expanded.append(out)
    return expanded


# ------------------------------------------------------------------------------------------ writing
def _var(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _track(events: list[tuple[int, bytes]]) -> bytes:
    body = bytearray()
    now = 0
    for tick, data in events:
        body += _var(tick - now)
        body += data
        now = tick
    body += _var(TICKS) + b"\xff\x2f\x00"
    return b"MTrk" + len(body).to_bytes(4, "big") + bytes(body)


def _voice_order(part: list[_El]) -> list[_El]:
    """A part's elements in the order ``s[klass]`` walks them after makeVoices: in each measure its own elements up
    to the offset of its first voice-1 element (where the Voice streams sit), each voice's elements, then the
    measure's later elements."""
    out: list[_El] = []
    measure: list[_El] = []

    def flush():
        first = next((el.offset for el in measure if el.voice == 1), None)
        if first is None:
            out.extend(measure)
        else:
            out.extend(sorted(measure, key=lambda el: (el.voice if el.voice else (0 if el.offset <= first else 3))))
        measure.clear()

    for el in sorted(part, key=_sort_key):
        if el.kind == "measure":
            flush()
        measure.append(el)
    flush()
    return out


def _conductor(parts: list[list[_El]], order_of) -> list[tuple]:
    """conductorStream's marks: per class, an element whose offset is past the last one seen walking the parts
    in order (``order_of``: a part's elements in walking order)."""
    conductor = []
    for kind, order in (("mm", 2), ("ts", 1), ("ks", 0)):
        last = Fraction(-1)
        found = False
        for part in parts:
            for el in order_of(part):
                if el.kind != kind:
                    continue
                found = True
                if el.offset > last:
                    conductor.append((_ticks(el.offset), el.line, order, kind, el.value))
                last = el.offset
        if not found:
            conductor.append((0, 0, order, kind, 120.0 if kind == "mm" else (4, 4) if kind == "ts" else None))
    return conductor


def _write(parts: list[list[_El]], tracks: list[list[tuple]]) -> bytes:
    conductor = _conductor(parts, lambda part: sorted(part, key=_sort_key))
    if conductor != _conductor(parts, _voice_order):
        raise Declined("tempo, meter or key marks music21 may walk in another order (in split spines)")
    meta = []
    for tick, _, order, kind, value in sorted(conductor, key=lambda c: (c[0], c[1], c[2])):
        if kind == "mm":
            tempo = int(round(60_000_000 / value))
            if not 0 < tempo < 2**24:
                raise Declined("tempo out of range")
            meta.append((tick, b"\xff\x51\x03" + tempo.to_bytes(3, "big")))
        elif kind == "ts":
            numerator, denominator = value
            meta.append((tick, bytes([0xFF, 0x58, 4, numerator, denominator.bit_length() - 1, 24, 8])))
        elif value is not None:
            sharps, mode = value
            meta.append((tick, bytes([0xFF, 0x59, 2, sharps & 0xFF, mode])))
    chunks = [_track(meta)]

    # Channels: one per program in part order (None: a part without an instrument), 1-9 then 11-16.
    programs = []
    inits = []
    for part in parts:
        insts = [el.value for el in sorted(part, key=_sort_key) if el.kind == "inst"]
        inits.append(insts[0] if insts else None)
        for program in [i[1] for i in insts] or [None]:
            if program not in programs:
                programs.append(program)
    channels_free = list(range(1, 10)) + list(range(11, 17))
    channel_of = {p: channels_free[i] if i < len(channels_free) - 1 else channels_free[0]
                  for i, p in enumerate(programs)}
    for init, packets in zip(inits, tracks):
        channel = channel_of[init[1] if init is not None else None] - 1
        name = (init[0] if init is not None else "").encode("utf-8", "ignore")
        events = [(0, b"\xff\x03" + _var(len(name)) + name)]
        if init is not None and init[1] is not None:  # getStartEvents: only for an instrument with a program
            events.append((0, bytes([_PROGRAM | channel, init[1]])))
        # assignPacketsToChannels adds a zero pitch bend at offset 0 to each track with packets and sorts again
        if packets:
            packets = packets + [(0, _PITCH_BEND, 0, 0x40)]
        packets.sort(key=lambda p: (p[0], _SORT_ORDER[p[1]]))
        for tick, kind, a, b in packets:
            if kind == _PROGRAM:
                events.append((tick, bytes([kind | channel, a])))
            else:
                events.append((tick, bytes([kind | channel, a, b])))
        chunks.append(_track(events))
    header = b"MThd" + (6).to_bytes(4, "big") + (1).to_bytes(2, "big") + len(chunks).to_bytes(2, "big")
    return header + TICKS.to_bytes(2, "big") + b"".join(chunks)
