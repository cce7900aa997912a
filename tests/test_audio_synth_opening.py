"""The Humdrum opening cut as text (genrecli.audio.humdrum) against music21's reading of the whole score."""

from __future__ import annotations

import contextlib
import io
import pathlib
from fractions import Fraction

import mido
import numpy as np
import pytest

from genrecli.audio import humdrum, synth
from genrecli.errors import UsageError

KERN_ERAS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kern-eras"
SECONDS = 30.0


def kern(*rows: str, records: tuple[str, ...] = ()) -> str:
    """A Humdrum file from tab-separated rows written with spaces between the spines."""
    return "\n".join(["!!!OTL: test"] + [row.replace(" ", "\t") for row in rows] + list(records)) + "\n"


# Two spines, the second split into two voices that end at different times: a line's duration is the time
# to the earliest end among all sounding notes, not the shortest token on the line (that would give 4 for
# line "4e" below, where the 8th of the other voice ends after 0.5).
SPLIT = kern(
    "**kern **kern", "*M4/4 *M4/4", "*MM60 *MM60", "=1 =1",
    "*^ *", "4c 8d 2C", ". 4e .", "8f . .", "8g 8a .", "2c 2e 2G", "*v *v *",
    "=2 =2", "1c 1C", "=3 =3", "4.c 4.C", "8d 8D", "2e 2E", "=4 =4", "1f 1F", "*- *-",
    records=("!!!RDF**kern: > = above",),
)


@pytest.mark.parametrize(("token", "quarters"), [
    ("4c", 1), ("4.c", Fraction(3, 2)), ("8..d#", Fraction(7, 8)), ("2r", 2), ("1CC", 4), ("0e", 8), ("00e", 16),
    ("12g", Fraction(1, 3)), ("3%2c", Fraction(8, 3)), ("4c 4e 4g", 1), ("8qd", 0), ("(16Qc", 0), ("[4.A/", Fraction(3, 2)),
])
def test_kern_token_durations(token, quarters):
    assert humdrum._duration(token) == quarters


def test_barline_timeline_follows_split_and_joined_spines_and_agrees_with_music21():
    from music21.humdrum.spineParser import HumdrumDataCollection

    bars = humdrum.barline_quarters(SPLIT.split("\n"))
    assert [q for _, q, _ in bars] == [0, 4, 8, 12]
    collection = HumdrumDataCollection(io.StringIO(SPLIT).readlines())
    collection.parse()
    measures = collection.stream.parts[0].getElementsByClass("Measure")
    assert [m.offset for m in measures][1:] == [4.0, 8.0, 12.0]


def test_kern_opening_cuts_after_the_bound_plus_a_margin_and_closes_the_spines():
    cut = humdrum.kern_opening(SPLIT, quarters=5)  # bar 3 starts at 8 >= 5: cut after the next barline (=4)
    lines = cut.split("\n")
    assert lines[-4:] == ["=4\t=4", "*-\t*-", "!!!RDF**kern: > = above", ""]
    assert humdrum.kern_opening(SPLIT, quarters=5, margin_bars=0).split("\n")[-4] == "=3\t=3"
    assert humdrum.kern_opening(SPLIT, quarters=9) is None  # the margin bar is the last one: nothing to cut
    assert humdrum.kern_opening(SPLIT, quarters=100) is None


def test_kern_opening_drops_the_start_of_a_repeat_the_cut_splits_and_keeps_closed_ones():
    text = kern("**kern", "=1", "1c", "=2:|!|:", "1d", "=3", "1e", "=4", "1f", "=5", "1g", "==:|!", "*-")
    cut = humdrum.kern_opening(text, quarters=4)  # cut after =3, inside the repeat opened at =2
    assert "=2:|!\n" in cut and "|:" not in cut
    assert cut.endswith("=3\n*-\n")


@pytest.mark.parametrize("text", [
    kern("**kern", "=1", "1c", "=2", "1d", "=3", "1e", "=4", "1f", "*-", "**kern", "=1", "1c", "*-"),  # two pieces
    kern("**kern", "=1", "c", "=2", "1d", "=3", "1e", "=4", "1f", "*-"),  # a note without a rhythm
    kern("**kern", "=1", "1c", "*+", "=2", "1d", "=3", "1e", "=4", "1f", "*-"),  # an added spine
])
def test_kern_opening_leaves_what_it_does_not_model_to_music21(text):
    assert humdrum.kern_opening(text, quarters=2) is None


def two_note_midi(second_onset_beats: float, *, velocity: int = 90) -> bytes:
    track = mido.MidiTrack([
        mido.Message("note_on", note=60, velocity=velocity, time=0),
        mido.Message("note_off", note=60, velocity=0, time=480),
        mido.Message("note_on", note=64, velocity=velocity, time=int(round((second_onset_beats - 1) * 480))),
        mido.Message("note_on", note=64, velocity=0, time=960),  # running-status style note end
    ])
    mid = mido.MidiFile(ticks_per_beat=480)
    mid.tracks.append(track)
    buffer = io.BytesIO()
    mid.save(file=buffer)
    return buffer.getvalue()


def test_midi_notes_and_their_differences():
    notes = synth.midi_notes(two_note_midi(2.0))  # 120 bpm: a beat is 0.5 s
    assert notes["pitch"].tolist() == [60, 64]
    np.testing.assert_allclose(notes["onset"], [0.0, 1.0])
    np.testing.assert_allclose(notes["duration"], [0.5, 1.0])
    same = synth.midi_notes(two_note_midi(2.0))
    assert synth.notes_difference(notes, same, max_seconds=30) is None
    assert "onset" in synth.notes_difference(notes, synth.midi_notes(two_note_midi(2.5)), max_seconds=30)
    assert "velocity" in synth.notes_difference(notes, synth.midi_notes(two_note_midi(2.0, velocity=80)), max_seconds=30)
    # what starts after the bound is left out, what sounds across it is cut there
    assert synth.notes_difference(notes, synth.midi_notes(two_note_midi(5.0)), max_seconds=0.9) is None
    assert "2 notes against 1" == synth.notes_difference(notes, notes[:1], max_seconds=30)


def test_unknown_opening_is_a_usage_error():
    with pytest.raises(UsageError, match="opening"):
        synth.score_to_midi(text=SPLIT, fmt="humdrum", max_seconds=5, opening="middle")


def test_abc_conversion_is_the_same_either_way():
    import music21

    tune = pathlib.Path(music21.__file__).parent / "corpus" / "ryansMammoth" / "AcrobatsHornpipe.abc"
    assert synth.score_to_midi(path=tune, max_seconds=SECONDS) == synth.score_to_midi(
        path=tune, max_seconds=SECONDS, opening="score")


def kern_eras(relative: str) -> pathlib.Path:
    path = KERN_ERAS / relative
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


def both_openings(path):
    with contextlib.redirect_stderr(io.StringIO()):
        return (synth.score_to_midi(path=path, max_seconds=SECONDS, opening="score"),
                synth.score_to_midi(path=path, max_seconds=SECONDS, opening="text", converter="music21"))


@pytest.mark.parametrize("relative", [
    "Baroque/bach-wtc__wtc2f23.krn",  # cut, spine splits
    pytest.param("Classical/haydn__sonata49-1.krn", marks=pytest.mark.slow),  # grace notes, a **dynam spine
    # cut inside a repeated section whose end is far later
    pytest.param("Classical/beethoven__sonata12-2.krn", marks=pytest.mark.slow),
])
def test_text_opening_plays_the_notes_of_the_whole_score_reading(relative):
    path = kern_eras(relative)
    whole, opening = both_openings(path)
    assert synth._parse_kern_opening(path, None, SECONDS) is not None  # the text was cut
    assert synth.notes_difference(synth.midi_notes(whole), synth.midi_notes(opening), max_seconds=SECONDS) is None
    # the same notes give the same 30 s of audio
    np.testing.assert_array_equal(synth.render_midi(whole, sr=22050), synth.render_midi(opening, sr=22050))


def test_text_opening_is_deterministic():
    path = kern_eras("Classical/haydn__sonata49-1.krn")
    first, again = (synth.score_to_midi(path=path, max_seconds=SECONDS) for _ in range(2))
    assert first == again
    np.testing.assert_array_equal(synth.render_midi(first, sr=22050), synth.render_midi(again, sr=22050))


def test_a_cut_music21_reads_with_other_bars_falls_back_to_the_whole_score():
    # music21 reads the ten bars of this prelude's opening as one measure: its reading of the whole differs
    path = kern_eras("Baroque/bach-wtc__wtc1p09.krn")
    assert synth._parse_kern_opening(path, None, SECONDS) is None
    whole, opening = both_openings(path)
    assert whole == opening


def test_midi_cache_key_names_the_opening():
    from genrecli.pipeline.audio import conversion_params

    assert conversion_params()["opening"] == synth.DEFAULT_OPENING == "text"


def test_midi_staging_cleanup_keeps_another_shards_files(tmp_path):
    """Shards of one corpus stage MIDI into one folder at the same time: a shard clears only what it staged."""
    from genrecli.pipeline.audio import MidiCache

    staging = tmp_path / ".partial" / "midi"
    cache = MidiCache(tmp_path / "features.h5", staging, manifest=[None] * 3)
    staging.mkdir(parents=True)
    mine, other = staging / "mine-30.mid", staging / "other-30.mid"
    mine.write_bytes(b"MThd"), other.write_bytes(b"MThd")
    cache.staged = {0: mine}
    cache.clear_staging()
    assert not mine.exists() and other.exists()
    other.unlink()
    cache.clear_staging()  # nothing of its own left; the folder, now empty, goes
    assert not staging.exists()
