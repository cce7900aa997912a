"""The native kern -> MIDI converter (genrecli.audio.kern_midi) against music21's conversion."""

from __future__ import annotations

import collections
import contextlib
import io
import pathlib
import re

import mido
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


def compare_with_music21(files, *, audio: bool, reasons: collections.Counter | None = None) -> tuple[int, list]:
    """How many of ``files`` the converter accepts, and (name, difference) for each accepted one whose notes, MIDI
    bytes (and, with ``audio``, rendered samples) are not music21's. ``reasons`` counts the declines."""
    accepted, wrong = 0, []
    for path in files:
        try:
            ours = native(path)
        except kern_midi.Declined as why:
            if reasons is not None:
                reasons[re.sub(r"'[^']*'|\"[^\"]*\"|\b\d+\b", "_", str(why))] += 1
            continue
        accepted += 1
        theirs = music21_midi(path=path)
        difference = synth.notes_difference(synth.midi_notes(theirs), synth.midi_notes(ours), max_seconds=SECONDS)
        if difference is None and ours != theirs:
            difference = "same notes, other MIDI bytes"
        if difference is None and audio and not np.array_equal(synth.render_midi(ours), synth.render_midi(theirs)):
            difference = "rendered audio differs"
        if difference is not None:
            wrong.append((path.name, difference))
    return accepted, wrong


def assert_music21s(text: str) -> bytes:
    """The converter accepts the inline score and writes music21's bytes; returns them."""
    ours = kern_midi.kern_midi(text, max_seconds=SECONDS)
    assert ours == music21_midi(text=text)
    return ours


def channel_messages(midi: bytes) -> list[list[str]]:
    """Each track's channel messages and track names, in order, without times."""
    return [[str(m.copy(time=0)) for m in track if not m.is_meta or m.type == "track_name"]
            for track in mido.MidiFile(file=io.BytesIO(midi)).tracks]


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
    (["**kern **kern", "*M4/4 *M4/4", "=1:|! =1:|!", "1c 1C", "=:|! =:|!", "2c 2C", "*M2/4 *M2/4", "2d 2D",
      *[r for x in LONG for r in x.split("\n")], "*- *-"], "moves to another time"),
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


def repeated_score(third: str = "=3") -> str:
    """Two staves and a **dynam spine: measure 1 repeated from the start (an end without a start), measures 2-3
    repeated with a tempo mark, a split and a dynamic inside, and a tie from the end of the section into the first
    note of its second pass (``third`` the barline that opens measure 3)."""
    rows = ["**kern **kern **dynam", "*staff2 *staff1 *staff1/2", "*Ipiano *Ipiano *", "*MM100 *MM100 *", "*M4/4 *M4/4 *",
            "=1 =1 =", "2c 2C p", "[2e 2G .", "=2:|!|: =2:|!|: =", "4e] 4C .", "*MM120 *MM120 *", "4d 4D f", "*^ * *",
            "4e 4g 4E .", "4f 4a 4F .", "*v *v * *", f"{third} {third} =", "2g 2G .", "[2a 2A .", "=4:|! =4:|! =",
            "4a] 4A ff", "2.b 2.B ."]
    for i in range(5, 40):
        rows += [f"={i} ={i} =", "4b 4B .", "2.c 2.C ."]
    rows += ["*- *- *-"]
    return kern(*rows)


def test_repeats_are_expanded_as_music21_expands_them():
    """Each pass of a repeated section has its own notes, velocities (the dynamics realised over the expanded
    part), program changes and tempo marks; a tie into the section's start joins the repeat's first note."""
    midi = assert_music21s(repeated_score())
    straight = kern_midi.kern_midi(repeated_score().replace(":|!|:", "|").replace(":|!", "|"), max_seconds=SECONDS)
    # measure 1 again (4 notes), measures 2-3 again (14 notes, the second pass's tied-in e joining the a before it)
    assert len(synth.midi_notes(midi)) == len(synth.midi_notes(straight)) + 4 + 13
    tempos = [m.tempo for m in mido.MidiFile(file=io.BytesIO(midi)).tracks[0] if m.type == "set_tempo"]
    assert tempos == [600000, 600000, 600000, 500000, 500000, 500000, 500000]  # *MM100 in each pass of measure 1
    piano = channel_messages(midi)[1]
    assert piano.count("program_change channel=0 program=0 time=0") == 3  # the start, the element and its repeat


@pytest.mark.parametrize("text", [repeated_score("=3!|:"), repeated_score().replace("=4:|!", "=:|!")],
                         ids=["two starts, one end", "an unnumbered end"])
def test_badly_formed_repeats_play_straight_through_as_in_music21(text):
    """Two start repeats and one end (the text cut keeps them: an end follows), or an unnumbered ``=:|!``, which
    music21 reads as an end and a start that nothing closes: music21 cannot expand the opening and plays it
    without the repeats."""
    midi = assert_music21s(text)
    assert midi == kern_midi.kern_midi(text.replace(":|!|:", "|").replace("!|:", "|").replace(":|!", "|"),
                                       max_seconds=SECONDS)


def test_a_keyboard_instrument_class_is_music21s():
    """*ICklav: a KeyboardInstrument without a program, so no program change at the start of its track, its
    channel keyed by the program None, and a program change 0 for the element (before *Ipiano's own 0)."""
    rows = ["**kern **kern **kern", "*staff3 *staff2 *staff1", "*ICklav *ICklav *", "*Ipiano * *Iorgan", "*M4/4 *M4/4 *M4/4"]
    for i in range(1, 30):
        rows += [f"={i} ={i} ={i}", "2c 2e 2g", "2C 2g 2a"]
    rows += ["*- *- *-"]
    tracks = channel_messages(assert_music21s(kern(*rows)))
    # parts right to left: organ (program 19, MIDI channel 1), keyboard (channel 2), keyboard then piano (its channel
    # is the keyboard's, keyed by None, not a new one for program 0)
    assert tracks[1][:4] == ["MetaMessage('track_name', name='Pipe Organ', time=0)", "program_change channel=0 program=19 time=0",
                             "pitchwheel channel=0 pitch=0 time=0", "program_change channel=0 program=19 time=0"]
    keyboard = ["MetaMessage('track_name', name='Keyboard', time=0)", "pitchwheel channel=1 pitch=0 time=0",
                "program_change channel=1 program=0 time=0"]
    assert tracks[2][:4] == keyboard + ["note_on channel=1 note=64 velocity=90 time=0"]
    assert tracks[3][:4] == keyboard + ["program_change channel=1 program=0 time=0"]


def test_dynamic_spans_use_music21s_float_and_fraction_arithmetic():
    """A dynamic's span ends at start + length: 2.0 + Fraction(1, 3) is the float 2.3333333333333335, past the
    triplet offset 7/3 of the next mark, so the note there keeps f (126) instead of ff (127), as in music21."""
    rows = ["**kern **dynam", "*staff1 *staff1", "*M4/4 *"]
    for i in range(1, 30):
        rows += [f"={i} =", "2c p", "12d f", "12e ff", "12f .", "4g ."]
    rows += ["*- *-"]
    notes = synth.midi_notes(assert_music21s(kern(*rows)))
    # c (p), d (f), e (ff read as f), f and g (ff)
    assert notes["velocity"][:5].tolist() == [63, 126, 126, 127, 127]


def test_a_part_without_notes_has_no_pitch_wheel_reset():
    rows = ["**kern **kern", "*M4/4 *M4/4"]
    for i in range(1, 30):
        rows += [f"={i} ={i}", "1r 2c", ". 2d"]
    rows += ["*- *-"]
    tracks = channel_messages(assert_music21s(kern(*rows)))
    assert tracks[2] == ["MetaMessage('track_name', name='', time=0)"]
    assert "pitchwheel channel=0 pitch=0 time=0" in tracks[1]


def test_declines_what_music21_cuts_again():
    """A faster *MM past the opening lengthens the text cut; music21's second cut (at the tempos it read) then
    drops measures, so the converter declines and the auto path gives music21's bytes."""
    rows = ["**kern **kern", "*M4/4 *M4/4", "*MM60 *MM60", *[f"={i} ={i}\n1c 1e" for i in range(1, 80)], "*MM200 *MM200",
            *[f"={i} ={i}\n1c 1e" for i in range(80, 150)], "*- *-"]
    text = kern(*"\n".join(rows).split("\n"))
    with pytest.raises(kern_midi.Declined, match="cuts the parsed opening again"):
        kern_midi.kern_midi(text, max_seconds=SECONDS)
    with contextlib.redirect_stderr(io.StringIO()):
        assert synth.score_to_midi(text=text, fmt="humdrum", max_seconds=SECONDS, converter="auto") == music21_midi(text=text)


def test_declines_what_music21_cuts_again_before_it_expands_the_repeats():
    """A cut ending at an unnumbered =:|!: music21 reads an end repeat and an empty last measure with a start repeat
    (badly formed: the opening would be played straight through), but its second cut (at *MM196, 98 quarter notes)
    drops that measure, and what is left is expanded: the converter declines and the auto path gives music21's
    bytes, every bar played twice."""
    rows = ["**kern **kern", "*M4/4 *M4/4", "*MM196 *MM196", *[f"={i} ={i}\n1c 1e" for i in range(1, 27)],
            "=:|! =:|!", *[f"={i} ={i}\n1d 1f" for i in range(27, 60)], "*- *-"]
    text = kern(*"\n".join(rows).split("\n"))
    with pytest.raises(kern_midi.Declined, match="cuts the parsed opening again"):
        kern_midi.kern_midi(text, max_seconds=SECONDS)
    with contextlib.redirect_stderr(io.StringIO()):
        midi = synth.score_to_midi(text=text, fmt="humdrum", max_seconds=SECONDS, converter="auto")
    assert midi == music21_midi(text=text)
    assert len(synth.midi_notes(midi)) == 2 * 2 * 26


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
    reasons: collections.Counter = collections.Counter()
    accepted, wrong = compare_with_music21(files, audio=False, reasons=reasons)
    print(f"native kern conversion accepted {accepted}/{len(files)}; declined:")
    for reason, count in reasons.most_common():
        print(f"  {count:4d} {reason}")
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


def test_measure_offsets_are_music21s():
    """_measure_offsets (the second-cut check) against the measures music21 makes of the score's first part."""
    from music21 import stream

    files = sorted(KERN_ERAS.rglob("*.krn"))[::40]
    if not files:
        pytest.skip("kern-eras not available")
    seen = {}
    original = kern_midi._check_score_cut

    def spy(first, parts, max_seconds):
        seen["offsets"] = [float(o) for o in kern_midi._measure_offsets(first)]
        return original(first, parts, max_seconds)

    checked = 0
    for path in files:
        seen.clear()
        text = path.read_text(encoding="latin-1")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(kern_midi, "_check_score_cut", spy)
            with contextlib.suppress(kern_midi.Declined):
                kern_midi.kern_midi(text, max_seconds=SECONDS)
        if "offsets" not in seen:
            continue
        with contextlib.redirect_stderr(io.StringIO()):
            score = synth._parse_kern_opening(None, text, SECONDS)
            if score is None:  # a short score, or a cut music21 reads otherwise: the whole score is parsed
                from genrecli.text.symbolic import read_with_music21

                score = read_with_music21(None, text, "humdrum")
        measures = score.parts.first().getElementsByClass(stream.Measure)
        assert seen["offsets"] == [float(m.offset) for m in measures], path.name
        checked += 1
    assert checked >= len(files) // 4, checked


def test_auto_is_the_default_converter_and_the_midi_cache_key_records_it():
    from genrecli.audio.kern_midi import VERSION
    from genrecli.pipeline.audio import conversion_params

    path = KERN_ERAS / ACCEPTED[0]
    if not path.is_file():
        pytest.skip(f"{path} not available")
    assert synth.score_to_midi(path=path, max_seconds=SECONDS) == native(path)
    params = conversion_params()
    assert params["kern_converter"] == synth.DEFAULT_CONVERTER == "auto" and params["native_kern"] == VERSION


def test_a_note_without_a_rhythm_is_a_quarter_note_as_in_music21():
    """hdStringToNote sets no duration for a token without a number: the Note's default quarter note. In a chord
    only the first note's rhythm counts; a single note without one makes the text uncuttable (the whole score,
    here short enough for music21 not to cut it again)."""
    rows = ["**kern **kern", "*M4/4 *M4/4"]
    for i in range(1, 30):
        rows += [f"={i} ={i}", "2c 4C@G", ". 4FF@AA", "2d 2G"]
    rows += ["*- *-"]
    assert kern_midi._opening_text(kern(*rows), SECONDS) is not None
    assert len(synth.midi_notes(assert_music21s(kern(*rows).replace("@", " ")))) > 100
    rows = ["**kern **kern", "*M4/4 *M4/4"]
    for i in range(1, 10):
        rows += [f"={i} ={i}", "c 4C", "4e 4E", "2f 2F"]
    rows += ["*- *-"]
    assert len(synth.midi_notes(assert_music21s(kern(*rows)))) == 9 * 6


def test_a_short_score_is_converted_whole_as_music21_does():
    """A score no longer than the opening has no text cut: music21 parses all of it, as the converter does."""
    rows = ["**kern **kern **dynam", "*staff2 *staff1 *staff1/2", "*M3/4 *M3/4 *", "*MM100 *MM100 *"]
    for i in range(1, 6):
        rows += [f"={i} ={i} ={i}", "4c 2C p", "8d . .", "8e . .", "4f 4G f"]
    rows += ["== == ==", "*- *- *-"]
    assert kern_midi._opening_text(kern(*rows), SECONDS) is None
    assert len(synth.midi_notes(assert_music21s(kern(*rows)))) == 5 * 6


def test_a_split_dynam_spine_is_music21s():
    """A **dynam spine split by *^: its own dynamics after the first barline count, the first sub-spine's all, the
    second's only before its first barline, and the second's wins where both mark a line (as music21 inserts them)."""
    rows = ["**kern **dynam", "*staff1 *staff1", "*M4/4 *", "4c pp", "=1 =", "* *^", "4c p p", "4d . mf", "4e f .",
            "4f ff ff", "=2 = =", "4c pp f", "4d . .", "2e . ."]
    for i in range(3, 30):
        rows += [f"={i} = =", "2c p f", "2d . ff"]
    rows += ["* *v *v", "=30 =", "1c mp", "*- *-"]
    text = kern(*rows)
    ours = assert_music21s(text)
    velocities = synth.midi_notes(ours)["velocity"].tolist()
    assert len(set(velocities)) > 2, velocities


def test_a_grace_note_late_in_a_pickup_sounds_at_its_start_as_in_music21():
    """moveElementsIntoMeasures moves the zero-duration elements of a pickup bar to its start."""
    rows = ["**kern **kern", "*M4/4 *M4/4", "8r 2r", "8g .", "8qb .", "4.a ."]
    for i in range(1, 30):
        rows += [f"={i} ={i}", "2c 2C", "2d 2D"]
    rows += ["*- *-"]
    notes = synth.midi_notes(assert_music21s(kern(*rows)))
    assert notes["onset"][0] == 0.0


def test_barlines_music21_shifts_with_a_spine_it_inserts_late():
    """The second of two splits of a spine: music21's insertion loop skips it and inserts its sub-spines at the
    spine's end. Its measures then hold what it reads, each one appended where the one before it ends."""
    rows = ["**kern **kern", "*M4/4 *M4/4", "=1 =1", "*^ *", "4c 4e 1C", "2d 2f .", "4e 4g .", "*v *v *", "=2 =2",
            "1c 1C", "=3 =3", "*^ *", "2c 2e 1C", "2d 2f .", "*v *v *"]
    for i in range(4, 30):
        rows += [f"={i} ={i}", "2c 2C", "2d 2D"]
    rows += ["*- *-"]
    text = kern(*rows)
    notes = synth.midi_notes(assert_music21s(text))
    assert notes["onset"][notes["pitch"] == 48].tolist()[:3] == [0.0, 2.0, 4.0]  # the unsplit spine's whole notes


def test_a_split_of_a_split_spine_loses_its_notes_as_in_music21():
    """performInsertions only inserts the sub-spines of root spines: the notes of a sub-spine's own sub-spines are
    lost, and the sub-spine's later notes follow its earlier ones at once."""
    rows = ["**kern **kern", "*M4/4 *M4/4", "=1 =1", "*^ *", "1c 2e 1C", "* *^ *", ". 4g 4b .", ". 4a 4cc .", "* *v *v *",
            "*v *v *", "=2 =2", "1c 1C"]
    for i in range(3, 30):
        rows += [f"={i} ={i}", "2c 2C", "2d 2D"]
    rows += ["*- *-"]
    notes = synth.midi_notes(assert_music21s(kern(*rows)))
    assert not set(notes["pitch"].tolist()) & {67, 69, 71, 72}  # g a b cc


def test_a_three_way_join_is_music21s():
    """``*v *v *v`` after a spine split in three: music21 joins the first two (into the second's parent, a sub-spine
    that goes on) and ends the third's spine (a short score: music21 reads the cut otherwise and parses it whole)."""
    rows = ["**kern **kern", "*M4/4 *M4/4", "=1 =1", "*^ *", "* *^ *", "2c 2e 2g 1C", "2d 2f 2a .", "*v *v *v *", "=2 =2",
            "1c 1C"]
    for i in range(3, 12):
        rows += [f"={i} ={i}", "2c 2C", "2d 2D"]
    rows += ["*- *-"]
    assert_music21s(kern(*rows))
