"""The native kern -> MIDI converter (genrecli.audio.kern_midi) against music21's conversion."""

from __future__ import annotations

import contextlib
import io
import pathlib

import numpy as np
import pytest

from genrecli.audio import kern_midi, synth
from genrecli.errors import InputError

KERN_ERAS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kern-eras"
SECONDS = 30.0


def kern(*rows: str) -> str:
    return "\n".join(["!!!OTL: test"] + [row.replace(" ", "\t") for row in rows]) + "\n"


def music21_midi(path=None, text=None):
    with contextlib.redirect_stderr(io.StringIO()):
        return synth.score_to_midi(path=path, text=text, fmt="humdrum", max_seconds=SECONDS, converter="music21")


def native(path):
    with open(path, encoding="latin-1") as handle:
        return kern_midi.kern_midi(handle.read(), max_seconds=SECONDS)


def compare_with_music21(files, *, audio: bool) -> tuple[int, list]:
    """How many of ``files`` the converter accepts, and (name, difference) for each accepted one whose notes (and,
    with ``audio``, rendered samples) are not music21's."""
    accepted, wrong = 0, []
    for path in files:
        try:
            ours = native(path)
        except kern_midi.Declined:
            continue
        accepted += 1
        theirs = music21_midi(path=path)
        difference = synth.notes_difference(synth.midi_notes(theirs), synth.midi_notes(ours), max_seconds=SECONDS)
        if difference is None and audio and not np.array_equal(synth.render_midi(ours), synth.render_midi(theirs)):
            difference = "rendered audio differs"
        if difference is not None:
            wrong.append((path.name, difference))
    return accepted, wrong


# Files the converter accepts (spine splits and joins, dynamics, grace notes, ties), from each era.
ACCEPTED = ["Baroque/bach-wtc__wtc2f23.krn", "Classical/haydn__sonata49-1.krn", "Romantic/chopin-first-editions__001-1-BRZ.krn"]


@pytest.mark.parametrize("relative", ACCEPTED)
def test_native_notes_and_audio_are_music21s(relative):
    path = KERN_ERAS / relative
    if not path.is_file():
        pytest.skip(f"{path} not available")
    ours, theirs = native(path), music21_midi(path=path)
    assert synth.notes_difference(synth.midi_notes(theirs), synth.midi_notes(ours), max_seconds=SECONDS) is None
    np.testing.assert_array_equal(synth.render_midi(ours, sr=22050), synth.render_midi(theirs, sr=22050))
    # the auto path takes the native bytes
    assert synth.score_to_midi(path=path, max_seconds=SECONDS, converter="auto") == ours


LONG = ["=%d =%d" % (i, i) + "\n1c 1C" for i in range(1, 40)]


@pytest.mark.parametrize("rows, reason", [
    (["**kern **kern", "*M4/4 *M4/4", "=1 =1", "1c 1C", "=2:|! =2:|!", *[r for x in LONG for r in x.split("\n")], "*- *-"], "repeat"),
    (["**kern **text", "*M4/4 *", *[r.replace("1C", "la") for x in LONG for r in x.split("\n")], "*- *-"], "spines"),
    (["**kern **kern", "*MM[Allegro] *MM[Allegro]", *[r for x in LONG for r in x.split("\n")], "*- *-"], "tempo word"),
    (["**kern **kern", "*M4/4 *M4/4", "=0 =0", "4Pc 4C", *[r for x in LONG for r in x.split("\n")], "*- *-"], "appoggiatura"),
])
def test_declines_what_it_does_not_reproduce(rows, reason):
    text = kern(*rows)
    with pytest.raises(kern_midi.Declined, match=reason):
        kern_midi.kern_midi(text, max_seconds=SECONDS)
    # the auto path falls back to music21 and gives its bytes
    with contextlib.redirect_stderr(io.StringIO()):
        assert synth.score_to_midi(text=text, fmt="humdrum", max_seconds=SECONDS, converter="auto") == music21_midi(text=text)


def test_a_small_accepted_score_matches_music21():
    rows = ["**kern **kern **dynam", "*staff2 *staff1 *staff1/2", "*Ipiano *Ipiano *", "*MM90 *MM90 *", "*M4/4 *M4/4 *"]
    for i in range(1, 30):
        rows += [f"={i} ={i} ={i}", "*^ * *", "4C 4E [4d f", "*v *v * *", "4G 4d] .", "8qB . .", "4A 4f' mf", "4D 4cc^ ."]
    rows += ["*- *- *-"]
    text = kern(*rows)
    ours = kern_midi.kern_midi(text, max_seconds=SECONDS)
    theirs = music21_midi(text=text)
    assert synth.notes_difference(synth.midi_notes(theirs), synth.midi_notes(ours), max_seconds=SECONDS) is None
    np.testing.assert_array_equal(synth.render_midi(ours, sr=22050), synth.render_midi(theirs, sr=22050))


def test_hostile_kern_is_an_input_error_through_the_fall_back():
    with pytest.raises(InputError):
        synth.score_to_midi(text="**kern\n*M4/4\n=1\n4x\n*-\n", fmt="humdrum", max_seconds=SECONDS, converter="auto")


def test_unknown_converter_is_a_usage_error():
    from genrecli.errors import UsageError

    with pytest.raises(UsageError, match="converter"):
        synth.score_to_midi(text=kern("**kern", "4c", "*-"), fmt="humdrum", max_seconds=5, converter="fast")


@pytest.mark.slow
def test_every_accepted_kern_eras_file_is_music21s():
    files = sorted(KERN_ERAS.rglob("*.krn"))
    if not files:
        pytest.skip("kern-eras not available")
    accepted, wrong = compare_with_music21(files, audio=False)
    print(f"native kern conversion accepted {accepted}/{len(files)}")
    assert not wrong, wrong


def test_a_sample_of_kern_eras_files_it_accepts_gives_music21s_notes_and_audio():
    """Every 40th kern-eras file (all eras): the converter accepts a share of them, each with music21's notes and
    rendered samples (the slow test checks the notes of all 777)."""
    files = sorted(KERN_ERAS.rglob("*.krn"))[::40]
    if not files:
        pytest.skip("kern-eras not available")
    accepted, wrong = compare_with_music21(files, audio=True)
    assert accepted >= len(files) // 4, accepted
    assert not wrong, wrong


def test_auto_is_the_default_converter_and_the_midi_cache_key_records_it():
    from genrecli.audio.kern_midi import VERSION
    from genrecli.pipeline.audio import conversion_params

    path = KERN_ERAS / ACCEPTED[0]
    if not path.is_file():
        pytest.skip(f"{path} not available")
    assert synth.score_to_midi(path=path, max_seconds=SECONDS) == native(path)
    params = conversion_params()
    assert params["kern_converter"] == synth.DEFAULT_CONVERTER == "auto" and params["native_kern"] == VERSION
