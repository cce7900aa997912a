"""Score -> MIDI without music21's copies (genrecli.audio.synth._IN_PLACE) gives the bytes of the stock conversion."""

from __future__ import annotations

import contextlib
import io
import pathlib
from fractions import Fraction

import music21
import pytest

from genrecli.audio import humdrum, synth

KERN_ERAS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kern-eras"
SECONDS = 30.0


def kern_eras(relative: str) -> pathlib.Path:
    path = KERN_ERAS / relative
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


def convert(path, *, in_place: bool, max_seconds: float | None = SECONDS, monkeypatch) -> bytes:
    monkeypatch.setattr(synth, "_IN_PLACE", in_place)
    with contextlib.redirect_stderr(io.StringIO()):
        return synth.score_to_midi(path=path, max_seconds=max_seconds, converter="music21")


@pytest.fixture
def in_place_calls(monkeypatch):
    """The streams converted in place, recorded while the conversion runs as usual."""
    calls = []
    prepare = synth._prepare_in_place

    def spy(s):
        calls.append(s)
        return prepare(s)

    monkeypatch.setattr(synth, "_prepare_in_place", spy)
    return calls


@pytest.mark.parametrize(("relative", "max_seconds"), [
    ("Baroque/bach-wtc__wtc2f23.krn", SECONDS),  # the text cut, spine splits
    ("Classical/beethoven__sonata12-2.krn", SECONDS),  # cut inside a repeated section whose end is far later
    ("Classical/mozart__sonata11-1f.krn", SECONDS),  # repeats music21 expands (20 bars play as 38)
    pytest.param("Classical/mozart__sonata11-1f.krn", None, marks=pytest.mark.slow),
    ("Classical/mozart__sonata06-3a.krn", SECONDS),  # badly formed repeats: both attempts fail, then straight through
    ("Classical/mozart__sonata06-3a.krn", None),
    ("Classical/haydn__sonata45-3a.krn", None),  # not cut (shorter than 30 s at its tempo), badly formed repeats
    pytest.param("Modern/joplin__combination.krn", None, marks=pytest.mark.slow),  # 85 bars play as 149
    pytest.param("Baroque/bach-wtc__wtc2f23.krn", None, marks=pytest.mark.slow),
])
def test_in_place_midi_is_the_stock_midi(relative, max_seconds, monkeypatch, in_place_calls):
    path = kern_eras(relative)
    stock = convert(path, in_place=False, max_seconds=max_seconds, monkeypatch=monkeypatch)
    assert not in_place_calls
    assert convert(path, in_place=True, max_seconds=max_seconds, monkeypatch=monkeypatch) == stock
    assert in_place_calls


def test_the_flag_and_other_music21_releases_take_the_stock_path(monkeypatch, in_place_calls):
    path = kern_eras("Classical/haydn__sonata45-3a.krn")
    stock = convert(path, in_place=False, monkeypatch=monkeypatch)
    monkeypatch.setattr(music21, "__version__", "10.6.0")  # steps repeated from 10.5 only
    assert convert(path, in_place=True, monkeypatch=monkeypatch) == stock
    assert not in_place_calls
    monkeypatch.setattr(music21, "__version__", "10.5.1")
    assert convert(path, in_place=True, monkeypatch=monkeypatch) == stock
    assert in_place_calls


def test_other_formats_take_the_stock_path(monkeypatch, in_place_calls):
    tune = pathlib.Path(music21.__file__).parent / "corpus" / "ryansMammoth" / "AcrobatsHornpipe.abc"
    convert(tune, in_place=True, monkeypatch=monkeypatch)
    assert not in_place_calls


def test_a_failure_after_the_score_changed_starts_again_the_stock_way(monkeypatch):
    """An in-place attempt that fails after changing the score must not hand that score to the fall-backs."""
    from music21.midi import translate

    path = kern_eras("Classical/haydn__sonata45-3a.krn")
    stock = convert(path, in_place=False, monkeypatch=monkeypatch)
    conductor_stream = translate.conductorStream
    failed = []

    def fail_once(s):
        if not failed:
            failed.append(s)
            raise ValueError("failure after the repeats were expanded")
        return conductor_stream(s)

    monkeypatch.setattr(translate, "conductorStream", fail_once)
    assert convert(path, in_place=True, monkeypatch=monkeypatch) == stock
    assert failed


def test_other_callers_of_music21s_midi_writer_keep_their_stream(monkeypatch):
    from music21 import meter, note, stream
    from music21.midi import translate

    convert(kern_eras("Classical/haydn__sonata45-3a.krn"), in_place=True, monkeypatch=monkeypatch)
    assert translate.prepareStreamForMidi is synth._prepare_dispatch  # installed by the conversion
    measure = stream.Measure([meter.TimeSignature("3/4"), note.Note("C4", quarterLength=3)])
    score = stream.Score([stream.Part([measure])])
    translate.streamToMidiFile(score).writestr()
    assert measure.getElementsByClass(meter.TimeSignature)  # the stock path moved a copy's into its conductor


@pytest.mark.parametrize("relative", [
    "Baroque/bach-wtc__wtc2f23.krn", "Classical/beethoven__sonata12-2.krn", "Classical/mozart__sonata11-1f.krn",
    "Romantic/chopin-mazurkas__mazurka06-4.krn", "Modern/joplin__combination.krn",
])
def test_the_timeline_stopped_at_the_bound_gives_the_same_openings(relative):
    text = kern_eras(relative).read_text(encoding="latin-1")
    lines = text.split("\n")
    whole = humdrum.barline_quarters(lines)
    for quarters in (4.0, 60.0, 1000.0):
        stopped = humdrum.barline_quarters(lines, until=quarters)
        assert [(i, r) for i, _, r in stopped] == [(i, r) for i, _, r in whole]
        timed = [q for _, q, _ in stopped if q is not None]
        assert timed == [q for _, q, _ in whole][: len(timed)]
        assert timed[-1] >= quarters or len(timed) == len(whole)
        assert humdrum.kern_opening(text, quarters=quarters) == reference_opening(text, quarters)


def reference_opening(text: str, quarters: float) -> str | None:
    """kern_opening as it was before its timeline stopped at the bound: the whole file timed."""
    lines = text.split("\n")
    barlines = humdrum.barline_quarters(lines)
    past = [i for i, (_, q, _) in enumerate(barlines) if q >= quarters]
    if not past or past[0] + 1 >= len(barlines):
        return None
    cut, _, open_repeat = barlines[past[0] + 1]
    rest = lines[cut + 1 :]
    if not any(line and not line.startswith(("!", "*", "=")) for line in rest):
        return None
    kept = lines[: cut + 1]
    if open_repeat is not None:
        kept[open_repeat] = kept[open_repeat].replace("|:", "")
    records = [line for line in rest if line.startswith("!!")]
    return "\n".join(kept + ["\t".join(["*-"] * len(lines[cut].split("\t")))] + records) + "\n"


def test_a_note_without_a_rhythm_after_the_bound_still_leaves_the_file_uncut():
    text = "\n".join(["**kern", "*M4/4", "=1", "1c", "=2", "1d", "=3", "1e", "=4", "f", "=5", "1g", "*-"]) + "\n"
    assert humdrum.kern_opening(text, quarters=Fraction(4)) is None
    assert humdrum.kern_opening(text.replace("\nf\n", "\n1f\n"), quarters=Fraction(4)) is not None
