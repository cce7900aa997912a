"""Audio from symbolic music: scores to MIDI (music21) and MIDI to audio (a General-MIDI SoundFont).

The SoundFont renderer is tinysoundfont with the TimGM6mb.sf2 General-MIDI bank that ships in the
pretty_midi wheel, so synthesis needs no system library. MIDI files are read with mido because music21
writes ``ticks_per_beat = 10080`` and pretty_midi rejects long pieces as "likely corrupt".
"""

from __future__ import annotations

import functools
import importlib.util
import io
import pathlib
import re
import threading
from typing import Callable

import numpy as np

from genrecli import ui
from genrecli.audio.io import decode_audio, one_line, resample
from genrecli.errors import InputError, UsageError
from genrecli.formats import SCORE_FORMATS

# Seconds rendered after the last MIDI event so that the final notes decay instead of being cut.
RELEASE_SECONDS = 1.0
_DRUM_CHANNEL = 9
_DEFAULT_TEMPO = 500_000  # microseconds per beat (120 bpm), the MIDI default before any set_tempo
DEFAULT_OPENING = "text"  # how score_to_midi finds a Humdrum score's opening (part of the MIDI cache key)
DEFAULT_CONVERTER = "auto"  # score_to_midi: the native kern converter where it reproduces music21, else music21
CONVERTERS = ("auto", "music21")


def default_soundfont() -> pathlib.Path:
    """Return the path of the TimGM6mb.sf2 General-MIDI SoundFont bundled with pretty_midi."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or spec.origin is None:
        raise UsageError("the pretty_midi package (which ships TimGM6mb.sf2) is not installed")
    path = pathlib.Path(spec.origin).parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise UsageError(f"{path}: SoundFont missing from the pretty_midi installation")
    return path


def _soundfont_bytes(path: pathlib.Path) -> bytes:
    # Loading from memory is 3x faster than from a path; the file is read once per process and version of
    # it (an edited SoundFont at the same path is read again, as its sha256 in the feature params changes).
    try:
        stat = path.stat()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read SoundFont ({one_line(exc)})") from None
    return _read_soundfont(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_soundfont(path: pathlib.Path, size: int, mtime_ns: int) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read SoundFont ({one_line(exc)})") from None


def _loaded_synth(sf_path: pathlib.Path, sr: int):
    """A tinysoundfont synth with ``sf_path`` loaded at ``sr``, reset to its state just after loading.

    Parsing the SoundFont costs ~25 ms a render (a quarter of rendering 30 s); the loaded one is kept per
    process, SoundFont version and rate, and ``reset`` (TinySoundFont's ``tsf_reset``: every voice stopped,
    every channel dropped) makes it render exactly as a fresh one (tested: identical bytes).
    """
    try:
        synth, sfid = _synth_for(_soundfont_bytes(sf_path), sr)
    except Exception as exc:
        raise UsageError(f"{sf_path}: not a usable SoundFont ({one_line(exc)})") from None
    for loaded in synth.soundfonts.values():
        loaded.reset()  # ends the voices still sounding with a quick (~10 ms) release, drops every channel
    synth.generate_simple(_FLUSH_FRAMES.get(sr) or _flush_frames(sr))  # let those releases finish
    return synth, sfid


_FLUSH_FRAMES: dict[int, int] = {}


def _flush_frames(sr: int) -> int:
    _FLUSH_FRAMES[sr] = int(sr * 0.25)
    return _FLUSH_FRAMES[sr]


@functools.lru_cache(maxsize=4)
def _synth_for(data: bytes, sr: int):
    tinysoundfont = _tinysoundfont()
    synth = tinysoundfont.Synth(samplerate=sr)
    return synth, synth.sfload(data)


def _midi_name(midi, name: str | None) -> str:
    return name or ("MIDI data" if isinstance(midi, bytes) else str(midi))


def _note_on(synth, msg):
    if msg.velocity:
        synth.noteon(msg.channel, msg.note, msg.velocity)
    else:  # running-status files end notes with velocity-0 note-ons
        synth.noteoff(msg.channel, msg.note)


def _tinysoundfont():
    try:
        import tinysoundfont
    except ImportError:
        raise UsageError("tinysoundfont is not installed: pip install --no-deps tinysoundfont==0.3.7 (see the Makefile)") from None
    return tinysoundfont


def _program_change(synth, msg):
    tinysoundfont = _tinysoundfont()

    try:
        synth.program_change(msg.channel, msg.program, msg.channel == _DRUM_CHANNEL)
    except (RuntimeError, tinysoundfont.SoundFontException):
        # A preset missing from the SoundFont keeps the previous instrument, as hardware synths do.
        pass


_HANDLERS = {
    "note_on": _note_on,
    "note_off": lambda s, m: s.noteoff(m.channel, m.note),
    "control_change": lambda s, m: s.control_change(m.channel, m.control, m.value),
    "program_change": _program_change,
    # mido's pitch is signed (-8192..8191); the synth expects 0..16383 with 8192 = no bend
    "pitchwheel": lambda s, m: s.pitchbend(m.channel, m.pitch + 8192),
}


def midi_events(
    midi: str | pathlib.Path | bytes, *, name: str | None = None
) -> tuple[np.ndarray, list, float]:
    """Read a Standard MIDI File into time-stamped channel messages.

    Parameters
    ----------
    midi : path or bytes
    name : str, optional
        How to name ``midi`` in error messages (default: the path, or "MIDI data").

    Returns
    -------
    times : np.ndarray, float64, shape (n_events,)
        Onset of each channel message in seconds, tempo changes applied.
    messages : list of mido.Message, length n_events
        Note, control, program and pitch-wheel messages in time order.
    length : float
        Time of the last event of the file (meta events included) in seconds.

    Raises
    ------
    InputError
        Missing or unreadable file, data that is not MIDI, or a file without notes.
    """
    name = _midi_name(midi, name)
    if not isinstance(midi, bytes) and not pathlib.Path(midi).is_file():
        raise InputError(f"{name}: MIDI file not found")
    if isinstance(midi, bytes):
        data = midi
    else:
        try:
            data = pathlib.Path(midi).read_bytes()
        except OSError as exc:
            raise InputError(f"{name}: cannot read the MIDI file ({exc.strerror or exc})") from None
    from genrecli.audio.smf import Irregular, read_merged

    try:
        midi_type, ticks_per_beat, delta, tempo, keep, messages = read_merged(data)
    except Irregular:  # anything the fast reader does not read as mido does: mido's reading, or its error
        midi_type, ticks_per_beat, delta, tempo, keep, messages = _mido_merged(data, name)
    if midi_type == 2 or ticks_per_beat <= 0:
        raise InputError(f"{name}: unsupported MIDI file (type {midi_type}, {ticks_per_beat} ticks per beat)")

    is_tempo = tempo >= 0
    tempos = np.concatenate(([_DEFAULT_TEMPO], tempo[is_tempo])).astype(np.float64)
    # Index of the tempo in force after each message (0 = default), then shift by one: a delta time
    # is measured in the tempo that was set before the message it precedes.
    after = np.maximum.accumulate(np.where(is_tempo, np.cumsum(is_tempo), 0))
    before = tempos[np.concatenate(([0], after[:-1]))] if len(delta) else tempos[:0]
    times = np.cumsum(delta.astype(np.float64) * before) / (1e6 * ticks_per_beat)
    if not any(msg.type == "note_on" and msg.velocity > 0 for msg in messages):
        raise InputError(f"{name}: MIDI file has no notes")
    length = float(times[-1]) if len(times) else 0.0
    return times[keep], messages, length


def _mido_merged(data: bytes, name: str):
    """:func:`genrecli.audio.smf.read_merged`'s result, read by mido (the files the fast reader leaves)."""
    import mido

    try:
        # clip: out-of-range data bytes occur in real files and are harmless once clipped
        mid = mido.MidiFile(file=io.BytesIO(data), clip=True)
        merged = list(mido.merge_tracks(mid.tracks))
    except Exception as exc:  # mido raises OSError, EOFError, KeyError, ValueError... on bad data
        raise InputError(f"{name}: not a readable MIDI file ({one_line(exc)})") from None
    delta = np.array([msg.time for msg in merged], dtype=np.int64)
    tempo = np.array([msg.tempo if msg.type == "set_tempo" else -1 for msg in merged], dtype=np.int64)
    keep = np.array([i for i, msg in enumerate(merged) if msg.type in _HANDLERS], dtype=np.int64)
    return mid.type, mid.ticks_per_beat, delta, tempo, keep, [merged[i] for i in keep.tolist()]


NOTE_FIELDS = [("onset", "f8"), ("duration", "f8"), ("pitch", "i2"), ("velocity", "i2"), ("channel", "i2")]


def midi_notes(midi: str | pathlib.Path | bytes, *, name: str | None = None) -> np.ndarray:
    """The notes of a MIDI file: onset and duration in seconds, pitch, velocity, channel.

    A note-on is closed by the next note-off (or velocity-0 note-on) of its channel and pitch; a note still
    open at the end of the file ends there. Used to compare score-to-MIDI conversions note for note.

    Returns
    -------
    np.ndarray, structured with fields :data:`NOTE_FIELDS`, shape (n_notes,)
        Sorted by onset, then channel, pitch, duration.

    Raises
    ------
    InputError
        As :func:`midi_events`.
    """
    times, messages, length = midi_events(midi, name=name)
    sounding: dict[tuple[int, int], list[tuple[float, int]]] = {}
    rows = []
    for time, msg in zip(times.tolist(), messages):
        if msg.type == "note_on" and msg.velocity > 0:
            sounding.setdefault((msg.channel, msg.note), []).append((time, msg.velocity))
        elif msg.type in ("note_on", "note_off") and sounding.get((msg.channel, msg.note)):
            onset, velocity = sounding[msg.channel, msg.note].pop(0)
            rows.append((onset, time - onset, msg.note, velocity, msg.channel))
    for (channel, pitch), opened in sounding.items():
        rows += [(onset, length - onset, pitch, velocity, channel) for onset, velocity in opened]
    notes = np.array(rows, dtype=NOTE_FIELDS)
    return np.sort(notes, order=["onset", "channel", "pitch", "duration"])


def notes_difference(a: np.ndarray, b: np.ndarray, *, max_seconds: float, tolerance: float = 1e-6) -> str | None:
    """How two note lists (:func:`midi_notes`) differ within the first ``max_seconds``, or None where they agree.

    Notes starting at or after ``max_seconds`` are left out and durations are cut at ``max_seconds`` (what a
    render of that length plays). Pitch, velocity and channel must be equal, onset and duration within
    ``tolerance`` seconds.
    """

    def opening(notes):
        notes = notes[notes["onset"] < max_seconds].copy()
        notes["duration"] = np.minimum(notes["onset"] + notes["duration"], max_seconds) - notes["onset"]
        return np.sort(notes, order=["onset", "channel", "pitch", "duration"])

    a, b = opening(a), opening(b)
    if len(a) != len(b):
        return f"{len(a)} notes against {len(b)}"
    for field in ("pitch", "velocity", "channel"):
        if (bad := np.flatnonzero(a[field] != b[field])).size:
            i = bad[0]
            return f"{bad.size} notes differ in {field}, first at {a['onset'][i]:.3f} s: {a[field][i]} vs {b[field][i]}"
    for field in ("onset", "duration"):
        if (bad := np.flatnonzero(np.abs(a[field] - b[field]) > tolerance)).size:
            i = bad[0]
            return f"{bad.size} notes differ in {field}, first at {a['onset'][i]:.3f} s: {a[field][i]:.6f} vs {b[field][i]:.6f}"
    return None


def render_midi(
    midi: str | pathlib.Path | bytes,
    *,
    sr: int = 22050,
    max_seconds: float | None = 30.0,
    soundfont: str | pathlib.Path | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Render a MIDI file to mono audio with a General-MIDI SoundFont.

    Tempo changes, program changes, pitch bends and the controllers TinySoundFont implements (bank
    select, volume, expression, pan; not the sustain pedal) are honoured; channel 10 plays drums.
    Only the first ``max_seconds`` are synthesised.

    Parameters
    ----------
    midi : path or bytes
        A Standard MIDI File (type 0 or 1).
    sr : int
        Output sample rate in Hz.
    max_seconds : float or None
        Render at most this many seconds (None: the whole file).
    soundfont : path, optional
        An .sf2/.sf3 SoundFont; default :func:`default_soundfont`.
    name : str, optional
        How to name ``midi`` in error messages.

    Returns
    -------
    y : np.ndarray, float32, shape (n_samples,)
        ``n_samples = round(sr * min(max_seconds, length + RELEASE_SECONDS))`` where ``length`` is the
        time of the file's last event.

    Raises
    ------
    InputError
        Unreadable MIDI, no notes, or no notes within the first ``max_seconds``.
    """
    tinysoundfont = _tinysoundfont()
    name = _midi_name(midi, name)
    times, messages, length = midi_events(midi, name=name)
    duration = length + RELEASE_SECONDS if max_seconds is None else min(max_seconds, length + RELEASE_SECONDS)
    n_samples = int(round(duration * sr))
    starts = np.minimum(np.round(times * sr).astype(np.int64), n_samples)
    onsets = np.array([m.type == "note_on" and m.velocity > 0 for m in messages])
    if not (starts[onsets] < n_samples).any():
        raise InputError(f"{name}: no notes in the first {duration:g} s of the MIDI file")

    sf_path = pathlib.Path(soundfont) if soundfont is not None else default_soundfont()
    synth, sfid = _loaded_synth(sf_path, sr)
    for channel in range(16):
        synth.program_select(channel, sfid, 0, 0, is_drums=channel == _DRUM_CHANNEL)

    # Stereo interleaved float32, rendered block by block between consecutive event times; the synth
    # writes straight into this buffer through a byte view.
    out = np.zeros((n_samples, 2), dtype=np.float32)
    view = memoryview(out.reshape(-1)).cast("B")
    frame_bytes = out.strides[0]
    position = 0
    for start, msg in zip(starts, messages):
        if start >= n_samples:
            break
        if start > position:
            block = view[position * frame_bytes : start * frame_bytes]
            synth.generate_simple(int(start - position), buffer=block)
            position = int(start)
        _HANDLERS[msg.type](synth, msg)
    if position < n_samples:
        synth.generate_simple(n_samples - position, buffer=view[position * frame_bytes :])
    # (left + right) / 2 as out.mean(axis=1) computes it, bit for bit, at a tenth of its cost
    mono = np.add(out[:, 0], out[:, 1])
    mono *= np.float32(0.5)
    return mono


def _score_format(path: pathlib.Path | None, text: str | None, fmt: str | None, name: str) -> str:
    if fmt is not None:
        if fmt not in {"humdrum", "musicxml", "abc"}:
            raise UsageError(f"unknown score format {fmt!r} (expected humdrum, musicxml or abc)")
        return fmt
    if path is not None:
        if path.suffix.lower() not in SCORE_FORMATS:
            expected = ", ".join(SCORE_FORMATS)
            raise InputError(f"{name}: unknown score suffix {path.suffix!r} (expected {expected})")
        return SCORE_FORMATS[path.suffix.lower()]
    head = text.lstrip()[:2000]
    if "**kern" in head:
        return "humdrum"
    if head.startswith("<"):
        return "musicxml"
    if re.search(r"^[XK]:", head, flags=re.MULTILINE):
        return "abc"
    raise InputError(f"{name}: cannot tell whether the score is Humdrum, MusicXML or ABC; give its format")


def score_to_midi(
    *,
    path: str | pathlib.Path | None = None,
    text: str | None = None,
    fmt: str | None = None,
    name: str | None = None,
    max_seconds: float | None = None,
    opening: str = DEFAULT_OPENING,
    converter: str = DEFAULT_CONVERTER,
) -> bytes:
    """Convert a score (Humdrum **kern, MusicXML, ABC) to a Standard MIDI File with music21.

    With ``converter="auto"`` (the default), a Humdrum score's text-cut opening is first converted without
    music21 by :func:`genrecli.audio.kern_midi.kern_midi`, which writes the notes, velocities, channels,
    programs and tempo map music21 writes (repeats expanded as music21 expands them) and declines whatever it
    does not reproduce exactly (appoggiaturas, barlines music21 reads off the Humdrum timeline, an opening
    music21 would cut again, ...); a declined score goes to music21. On the kern-eras corpus it takes 693 of
    the 777 files, at about 0.02 CPU s per piece where music21's parse and MIDI take about 0.2;
    tests/test_kern_midi.py checks its notes and rendered audio against music21's. ``converter="music21"``
    always converts with music21.

    Repeats are expanded. A score whose repeat signs music21 cannot expand ("badly formed repeats") is
    played straight through instead, with its repeat barlines and repeat marks removed.

    With ``max_seconds``, a Humdrum score is cut twice by default (``opening="text"``): its text before
    music21 parses it (:func:`genrecli.audio.humdrum.kern_opening`, at the bars that can sound within
    ``max_seconds`` at the fastest ``*MM`` tempo of the file, outside repeated sections), then the parsed
    opening as for every format. Parsing is most of the cost, and a 30 s opening is a fraction of most
    pieces: 3-4x less CPU per kern-eras piece. The notes that sound within ``max_seconds`` are those of
    ``opening="score"`` (parse the whole score, then cut it; the conversion before this option existed):
    tests/test_audio_synth_opening.py compares both on kern-eras scores. When music21 finds the cut text
    shorter than the bound (a rhythm the text timeline reads otherwise), the whole text is parsed.

    Parameters
    ----------
    path : path, optional
        Score file (.krn, .musicxml, .xml, .mxl, .abc).
    text : str, optional
        The score itself, when there is no file (exactly one of ``path`` and ``text``).
    fmt : {"humdrum", "musicxml", "abc"}, optional
        Default: from the suffix of ``path``, or sniffed from ``text``.
    name : str, optional
        How to name the score in error messages (default: the path, or "inline score").
    max_seconds : float or None
        Convert only the opening measures that can sound within this many seconds at the score's
        fastest tempo (None: the whole score). MIDI writing (repeat expansion) costs far more than
        parsing for long pieces, and synthesis only needs the opening.
    opening : {"text", "score"}
        How a Humdrum score's opening is found: cut as text before parsing, or from the parsed whole score.
        Other formats are always parsed whole.
    converter : {"auto", "music21"}
        "auto": the native **kern converter for a Humdrum opening (``opening="text"``) where it does not
        decline, music21 otherwise; "music21": always music21.

    Returns
    -------
    bytes
        The MIDI file.

    Raises
    ------
    InputError
        Missing file, a score music21 cannot parse or convert, a file holding several pieces, or a
        score without notes.
    """
    if (path is None) == (text is None):
        raise UsageError("score_to_midi needs exactly one of path= and text=")
    path = pathlib.Path(path) if path is not None else None
    name = name or (str(path) if path is not None else "inline score")
    fmt = _score_format(path, text, fmt, name)
    if path is not None and not path.is_file():
        raise InputError(f"{name}: score file not found")
    # music21 reads whatever it is given: an .mxl bomb or one 50 MB kern line would cost gigabytes and
    # minutes in the parser, so the bounds of the text stage apply here first (one failed track each).
    from genrecli.text.convert import check_score_bounds, check_text_bounds

    if path is not None:
        check_score_bounds(path, fmt)
    else:
        check_text_bounds(text, name)

    if opening not in ("text", "score"):
        raise UsageError(f"unknown score opening {opening!r} (expected text or score)")
    if converter not in CONVERTERS:
        raise UsageError(f"unknown score converter {converter!r} (expected {' or '.join(CONVERTERS)})")
    cut_opening = fmt == "humdrum" and opening == "text" and max_seconds is not None
    # read once, for the native converter and the cut music21 parses (the whole score is parsed from the path)
    try:
        kern_text = _read_kern_text(path, text) if cut_opening else None
    except OSError as exc:
        raise InputError(f"{name}: cannot read the score ({exc.strerror or exc})") from None
    if cut_opening and converter == "auto":
        midi = _native_kern_midi(kern_text, max_seconds)
        if midi is not None:
            return midi
    from genrecli.text.symbolic import checked_parse, read_with_music21

    def parse():
        score = None
        if cut_opening:
            score = _parse_kern_opening(None, kern_text, max_seconds)
        return score if score is not None else read_with_music21(path, text, fmt)

    score = checked_parse(parse, name=name, fmt=fmt)
    try:
        return _score_midi(score, max_seconds, name, in_place=fmt == "humdrum" and _in_place_supported())
    except _ChangedOnFailure:
        # music21 failed on a score the in-place conversion had already changed, so the fall-backs would
        # not see the score music21 read: start again from a fresh parse, the stock (copying) way.
        return _score_midi(checked_parse(parse, name=name, fmt=fmt), max_seconds, name, in_place=False)


def _read_kern_text(path: pathlib.Path | None, text: str | None) -> str:
    """``text``, or the Humdrum file at ``path`` read as music21's HumdrumFile reads it (Latin-1)."""
    if text is not None:
        return text
    with open(path, encoding="latin-1") as handle:
        return handle.read()


def _native_kern_midi(text: str, max_seconds: float) -> bytes | None:
    """:func:`~genrecli.audio.kern_midi.kern_midi` of a Humdrum text, None where it declines."""
    from genrecli.audio.kern_midi import Declined, kern_midi

    try:
        return kern_midi(text, max_seconds=max_seconds)
    except Declined as why:
        ui.debug(f"native kern converter declined ({why}); converting with music21")
        return None


def _score_midi(score, max_seconds: float | None, name: str, *, in_place: bool) -> bytes:
    """:func:`_midi_bytes`, retried once with distinct context objects where music21 met one object twice."""
    try:
        return _midi_bytes(score, max_seconds, in_place=in_place)
    except _ChangedOnFailure:
        raise
    except Exception as exc:
        if "already found in this Stream" in str(exc) and _distinct_context_objects(score):
            try:  # only on failure, so that every score music21 already converted keeps its exact MIDI
                return _midi_bytes(score, max_seconds, in_place=in_place)
            except _ChangedOnFailure:
                raise
            except Exception as again:
                exc = again
        raise InputError(f"{name}: music21 cannot convert the score to MIDI ({one_line(exc)})") from None


def _parse_kern_opening(path: pathlib.Path | None, text: str | None, max_seconds: float):
    """music21's parse of the opening of a Humdrum score cut as text, or None where the whole is to be parsed.

    The text is read as music21 reads a Humdrum file (Latin-1, lines split at "\\n" only), and the cut
    lines are handed to its Humdrum parser as they would come from the file. The cut must reach
    ``max_seconds`` at the fastest tempo in it by music21's own measure (the parsed cut's length in
    quarter notes and its tempo marks); if it does not, None.
    """
    from music21 import stream, tempo
    from music21.humdrum.spineParser import HumdrumDataCollection

    from genrecli.audio.humdrum import kern_opening

    text = _read_kern_text(path, text)
    qpm = 120.0  # music21 plays a score without tempo marks at 120 quarter notes a minute
    for mark in re.findall(r"(?:^|\t)\*MM([^\t\n]*)", text, flags=re.MULTILINE):
        try:
            qpm = max(qpm, float(mark))
        except ValueError:  # a tempo word, e.g. *MM[Allegro]: music21's number for it, as its parser makes it
            qpm = max(qpm, tempo.MetronomeMark(text=mark.strip("[] ")).getQuarterBPM() or 0.0)
    bound = max_seconds * qpm / 60.0
    cut = kern_opening(text, quarters=bound)
    if cut is None:
        return None
    collection = HumdrumDataCollection(io.StringIO(cut).readlines())
    collection.parse()
    score = collection.stream
    # What the cut must hold, by music21's reading of its tempo marks and rhythms: tempo marks after the
    # cut cannot speed up the bars before it.
    fastest = max([120.0] + [m.getQuarterBPM() or 0.0 for m in score.recurse().getElementsByClass(tempo.MetronomeMark)])
    if score.highestTime < max_seconds * fastest / 60.0:
        ui.debug(f"kern opening: music21 reads {score.highestTime:g} quarter notes where {max_seconds * fastest / 60.0:g} "
                 "were due; parsing the whole score")
        return None
    # music21 misreads the measures of some spine layouts (a bar per barline expected, e.g. one bar for ten
    # in the WTC I prelude 9), and then reads the whole score otherwise than its opening: keep its whole reading.
    barlines = sum(1 for line in cut.split("\n") if line.startswith("="))
    parts = score.parts if score.parts else [score]
    if any(abs(len(part.getElementsByClass(stream.Measure)) - barlines) > 1 for part in parts):
        ui.debug(f"kern opening: music21 reads other bars than the {barlines} barlines of the cut; parsing the whole score")
        return None
    return score


def _distinct_context_objects(score) -> int:
    """Give every occurrence of a time / key signature or tempo mark its own object; returns how many were copied.

    music21's ABC reader can put one TimeSignature object into two measures (e.g. ``M: C`` restated after a
    1/4 pick-up bar); its MIDI writer then moves that object into the conductor track twice and fails with
    "... is already found in this Stream" (13 of the 1837 bundled folk tunes did).
    """
    import copy

    seen, copied = set(), 0
    for inner in score.recurse(streamsOnly=True, includeSelf=True):
        for element in list(inner.getElementsByClass(("TimeSignature", "KeySignature", "MetronomeMark"))):
            if id(element) in seen:
                inner.replace(element, copy.deepcopy(element))
                copied += 1
            else:
                seen.add(id(element))
    return copied


def _midi_bytes(score, max_seconds: float | None, *, in_place: bool = False) -> bytes:
    """MIDI of the opening (when ``max_seconds``), else of the whole score; straight through if repeats fail.

    The whole score is the fall-back of the opening: a cut may split a repeat that the whole score closes,
    and music21 rejects some cut streams ("... is already found in this Stream"). A score whose repeats
    music21 cannot expand ("badly formed repeats") is played straight through (SOURCE.md: this fixes all
    such files).

    With ``in_place`` (``score`` is ours to change), each attempt converts its stream without music21's
    copies (:func:`_prepare_in_place`); an attempt that fails after changing the stream raises
    :class:`_ChangedOnFailure`, as the next attempts would see another score than music21's reading.
    """
    from music21 import bar, repeat

    candidates = ([lambda: _opening(score, max_seconds)] if max_seconds is not None else []) + [lambda: score]
    error: Exception | None = None
    for straight_through in (False, True):
        if straight_through:
            score.remove(list(score.recurse().getElementsByClass((bar.Repeat, repeat.RepeatMark))), recurse=True)
        for make in candidates:
            try:
                return _midi_file(make(), in_place=in_place).writestr()
            except _ChangedOnFailure:
                raise
            except Exception as exc:  # noqa: BLE001 - ExpanderException and music21's errors on cut streams
                error = exc
    raise error


# --------------------------------------------------------------- MIDI conversion without music21's copies
#
# music21's MIDI writer (streamToMidiFile -> prepareStreamForMidi) deep-copies the whole stream before it
# changes it (repeat expansion copies it once more): a quarter of the CPU time of a kern-eras opening. Our
# scores are parsed for the conversion and thrown away after it, so the copies protect nothing. A
# dispatcher in place of music21's prepareStreamForMidi runs the same steps without the copies for the
# one stream we hand over, and music21's own function for every other caller.
#
# Only Humdrum scores are converted in place, the kind the identity of the MIDI bytes is tested on
# (tests/test_synth_speed.py). Elsewhere a context search can see the difference: a MusicXML chord's
# per-note volumes are realised by searching their notes' contexts, which reach other dynamics from the
# parsed objects than from their copies (other velocities in joplin/maple_leaf_rag.mxl).

_IN_PLACE = True  # False: the stock, copying conversion (bench/bench_audio.py times both)
_IN_PLACE_MUSIC21 = "10.5."  # the release whose prepareStreamForMidi and expandRepeats are repeated here


class _ChangedOnFailure(Exception):
    """An in-place conversion failed after it had changed the stream it converts."""


class _Owned(threading.local):
    stream = None  # the stream being converted in place (None: every stream goes the stock way)
    changed = False  # whether the in-place conversion of ``stream`` has changed it yet


_OWNED = _Owned()
_STOCK_PREPARE: list = []  # music21's prepareStreamForMidi, once the dispatcher replaced it


def _in_place_supported() -> bool:
    """Whether to convert in place: the flag is on and music21 is the release the steps were taken from."""
    import music21

    return _IN_PLACE and music21.__version__.startswith(_IN_PLACE_MUSIC21)


def _midi_file(stream_obj, *, in_place: bool):
    """music21's ``streamToMidiFile(stream_obj)``; with ``in_place``, without copying ``stream_obj``."""
    from music21.midi import translate

    if not in_place:
        return translate.streamToMidiFile(stream_obj)
    if not _STOCK_PREPARE:
        _STOCK_PREPARE.append(translate.prepareStreamForMidi)
        translate.prepareStreamForMidi = _prepare_dispatch
    _OWNED.stream, _OWNED.changed = stream_obj, False
    try:
        return translate.streamToMidiFile(stream_obj)
    except Exception as exc:
        if _OWNED.changed:
            raise _ChangedOnFailure(one_line(exc)) from exc
        raise
    finally:
        _OWNED.stream = None


def _prepare_dispatch(s):
    """music21's ``prepareStreamForMidi``: in place for the stream handed over by :func:`_midi_file`."""
    if s is not None and s is _OWNED.stream:
        return _prepare_in_place(s)
    return _STOCK_PREPARE[0](s)


def _prepare_in_place(s):
    """music21 10.5's ``midi.translate.prepareStreamForMidi`` of ``s``, changing ``s`` instead of a copy.

    The same steps: repeats expanded (:func:`_expand_repeats_uncopied`), the tempo, time and key signature
    marks moved into a conductor part, volumes realised per part, and a single stream put into a score.
    """
    from music21 import stream, volume
    from music21.midi.translate import conductorStream

    if s[stream.Measure]:
        s = _expand_repeats_uncopied(s)
    _OWNED.changed = True
    conductor = conductorStream(s)
    if s.hasPartLikeStreams():
        for part in s.getElementsByClass(stream.Stream):
            volume.realizeVolume(part)
        s.insert(0, conductor)
        return s
    volume.realizeVolume(s)
    out = stream.Score()
    out.insert(0, conductor)
    out.insert(0, s)
    return out


def _expand_repeats_uncopied(s):
    """music21 10.5's ``s.expandRepeats()`` (a Score's or a Part's), made of ``s``'s own objects.

    ``repeat.Expander.process(deepcopy=False)`` expands the measures themselves (repeated measures are
    still copies: each pass needs its own); the other elements move into the expanded stream uncopied.
    Every part is checked for expandable repeats before any is expanded, so that badly formed repeats
    (the usual failure, then played straight through) fail before anything is changed. The spanners are
    not reconnected to the copies: the MIDI writer reads no spanner.
    """
    from music21 import repeat, stream

    parts = list(s.getElementsByClass(stream.Part)) if isinstance(s, stream.Score) else [s]
    expanders = []
    for part in parts:
        if not part.hasMeasures():
            raise stream.StreamException("cannot process repeats on Stream that does not contain measures")
        expanders.append(repeat.Expander(part))
        if expanders[-1].isExpandable() is False:
            raise repeat.ExpanderException("cannot expand Stream: badly formed repeats or repeat expressions")
    _OWNED.changed = True
    expanded = []
    for part, expander in zip(parts, expanders):
        post = expander.process(deepcopy=False)
        for element in part.getElementsNotOfClass(stream.Measure):
            if "RepeatBracket" not in element.classes:
                post.insert(part.elementOffset(element), element)
        expanded.append(post)
    if not isinstance(s, stream.Score):
        return expanded[0]
    post = s.cloneEmpty(derivationMethod="expandRepeats")
    post.mergeAttributes(s)
    for element in s.iter().getElementsNotOfClass(stream.Part):
        post.insert(s.elementOffset(element), element)
    for part in expanded:
        post.insert(0, part)
    return post


def _opening(score, max_seconds: float):
    """Return the leading measures of ``score`` that can sound within ``max_seconds``, or ``score``.

    Expanded repeats only replay earlier material, so the first ``q`` quarter notes of the performance
    come from the first ``q`` quarter notes of the score: a cut after the quarter note reached at the
    fastest tempo (music21 plays 120 bpm without a tempo mark) keeps everything that can sound in time.
    """
    from music21 import stream, tempo

    marks = score.recurse().getElementsByClass(tempo.MetronomeMark)
    qpm = max([120.0] + [m.getQuarterBPM() or 0.0 for m in marks])
    container = score.parts.first() if isinstance(score, stream.Score) and score.parts else score
    offsets = np.array([m.offset for m in container.getElementsByClass(stream.Measure)])
    # Measures starting at or before the bound (the last one contains it), plus one as a margin.
    n_keep = int(np.searchsorted(offsets, max_seconds * qpm / 60.0, side="right")) + 1
    if n_keep >= len(offsets):
        return score
    return score.measures(0, n_keep, indicesNotNumbers=True)


def track_audio(
    *,
    max_seconds: float | None = 30.0,
    audio: str | pathlib.Path | None = None,
    midi: str | pathlib.Path | bytes | None = None,
    score: str | pathlib.Path | None = None,
    score_text: str | None = None,
    score_format: str | None = None,
    soundfont: str | pathlib.Path | None = None,
    name: str | None = None,
) -> Callable[[int], np.ndarray]:
    """Do the slow, rate-independent work for one track once; return ``sr -> audio``.

    Audio files are decoded (then resampled per call), scores converted to MIDI (then rendered per
    call). Parameters are those of :func:`load_track_audio`.

    Returns
    -------
    callable
        ``get(sr) -> np.ndarray`` of float32, shape (n_samples,).
    """
    if audio is not None:
        y, native_sr = decode_audio(audio, max_seconds=max_seconds)
        return lambda sr: resample(y, orig_sr=native_sr, sr=sr)
    if midi is None:
        if score is None and score_text is None:
            raise InputError(f"{name or 'track'}: no audio, MIDI or score to make audio from")
        name = name or (str(score) if score is not None else "inline score")
        midi = score_to_midi(
            path=score, text=score_text, fmt=score_format, name=name, max_seconds=max_seconds
        )
    return lambda sr: render_midi(midi, sr=sr, max_seconds=max_seconds, soundfont=soundfont, name=name)


def load_track_audio(
    *,
    sr: int,
    max_seconds: float | None = 30.0,
    audio: str | pathlib.Path | None = None,
    midi: str | pathlib.Path | bytes | None = None,
    score: str | pathlib.Path | None = None,
    score_text: str | None = None,
    score_format: str | None = None,
    soundfont: str | pathlib.Path | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Return one track's audio from the best source it has: audio, else MIDI, else a score.

    Parameters
    ----------
    sr : int
        Sample rate in Hz.
    max_seconds : float or None
        Decode or synthesise at most this many seconds.
    audio, midi, score : path, optional
        The track's files (``midi`` may also be MIDI bytes).
    score_text, score_format : str, optional
        An inline score and its format, for scores that are not files of their own.
    soundfont : path, optional
        SoundFont for synthesis (default :func:`default_soundfont`).
    name : str, optional
        How to name the track in error messages (default: the file used).

    Returns
    -------
    y : np.ndarray, float32, shape (n_samples,)

    Raises
    ------
    InputError
        The source is unusable, or the track has none.
    """
    get = track_audio(
        max_seconds=max_seconds,
        audio=audio,
        midi=midi,
        score=score,
        score_text=score_text,
        score_format=score_format,
        soundfont=soundfont,
        name=name,
    )
    return get(sr)
