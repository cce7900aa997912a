"""Audio: decoding, score -> MIDI -> audio synthesis on real music, MFCC features, bad inputs."""

from __future__ import annotations

import io
import pathlib
import re

import mido
import numpy as np
import pytest
import soundfile

from genrecli.audio import (
    AUDIO_FEATURES,
    AUDIO_SUFFIXES,
    default_soundfont,
    extract_track,
    load_audio,
    load_track_audio,
    mfcc_summary,
    midi_events,
    render_midi,
    score_to_midi,
)
from genrecli.audio.synth import RELEASE_SECONDS
from genrecli.errors import InputError, UsageError

SR = 22050
KERN_ERAS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kern-eras"


def corpus_path(relative: str) -> pathlib.Path:
    import music21

    path = pathlib.Path(music21.__file__).parent / "corpus" / relative
    assert path.is_file(), path
    return path


def oneills_tune(number: int) -> str:
    """Tune ``X: number`` of O'Neill's 1850 (music21 corpus), as ABC text."""
    book = corpus_path("oneills1850/0001-0050.abc").read_text(encoding="latin-1")
    tunes = [t for t in re.split(r"\n(?=X:)", book) if t.startswith("X:")]
    return next(t for t in tunes if re.match(rf"X:\s*{number}\s*$", t, flags=re.M)) + "\n"


def midi_bytes(notes, *, program=0, tempo_changes=(), ticks_per_beat=480) -> bytes:
    """A one-track MIDI file: ``notes`` = [(pitch, start_beat, beats)], tempo_changes = [(beat, us/beat)]."""
    events = [(0, 0, mido.Message("program_change", program=program))]
    for pitch, start, beats in notes:
        events.append((start, 2, mido.Message("note_on", note=pitch, velocity=100)))
        events.append((start + beats, 1, mido.Message("note_off", note=pitch, velocity=0)))
    events += [(beat, 0, mido.MetaMessage("set_tempo", tempo=tempo)) for beat, tempo in tempo_changes]
    track, now = mido.MidiTrack(), 0
    for beat, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        tick = int(round(beat * ticks_per_beat))
        track.append(msg.copy(time=tick - now))
        now = tick
    mid = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    mid.tracks.append(track)
    buffer = io.BytesIO()
    mid.save(file=buffer)
    return buffer.getvalue()


def assert_one_line_error(excinfo, filename: str):
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message
    assert filename in message, message


def rms(y):
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


def dominant_frequency(y, sr):
    segment = y[sr // 10 : sr // 10 + 16384]
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment))))
    return float(np.fft.rfftfreq(len(segment), 1 / sr)[spectrum.argmax()])


# ---------------------------------------------------------------- decoding


def sine(sr, seconds, freq=440.0, channels=2):
    t = np.arange(int(sr * seconds)) / sr
    y = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([y, 0.5 * y], axis=1).astype(np.float32) if channels == 2 else y.astype(np.float32)


@pytest.mark.parametrize(
    ("suffix", "subtype"), [(".wav", "PCM_16"), (".flac", "PCM_16"), (".au", "PCM_16"), (".wav", "FLOAT")]
)
def test_decode_round_trip(tmp_path, suffix, subtype):
    assert suffix in AUDIO_SUFFIXES
    data = sine(44100, 1.0)
    path = tmp_path / f"tone{suffix}"
    soundfile.write(path, data, 44100, subtype=subtype)

    y = load_audio(path, sr=44100)
    assert y.dtype == np.float32 and y.shape == (44100,)
    np.testing.assert_allclose(y, data.mean(axis=1), atol=1e-3)

    stereo = load_audio(path, sr=44100, mono=False)
    assert stereo.shape == (2, 44100)

    half = load_audio(path, sr=22050)
    assert half.shape == (22050,)  # length scales by the rate ratio
    assert abs(dominant_frequency(half, 22050) - 440) < 3

    part = load_audio(path, sr=44100, offset=0.25, max_seconds=0.5)
    np.testing.assert_allclose(part, y[11025 : 11025 + 22050], atol=1e-6)


def test_resampling_ratio(tmp_path):
    path = tmp_path / "tone.wav"
    soundfile.write(path, sine(22050, 1.5, channels=1), 22050)
    for sr in (8000, 16000, 44100):
        assert len(load_audio(path, sr=sr)) == pytest.approx(1.5 * sr, abs=1)


# ---------------------------------------------------------------- synthesis


def test_soundfont_is_bundled():
    path = default_soundfont()
    assert path.name == "TimGM6mb.sf2" and path.stat().st_size > 1_000_000


@pytest.mark.parametrize(("program", "pitch"), [(73, 69), (73, 76), (0, 69)])
def test_rendered_note_has_its_pitch(program, pitch):
    y = render_midi(midi_bytes([(pitch, 0, 2)], program=program), sr=SR)
    assert y.dtype == np.float32 and y.ndim == 1
    expected = 440.0 * 2 ** ((pitch - 69) / 12)
    assert dominant_frequency(y, SR) == pytest.approx(expected, rel=0.02)


def test_tempo_changes_set_event_times_and_length():
    # two beats at 120 bpm, then 60 bpm: the third note starts at 1 s, the file ends at 4 s
    data = midi_bytes([(60, 0, 1), (62, 1, 1), (64, 2, 2)], tempo_changes=[(0, 500_000), (2, 1_000_000)])
    times, messages, length = midi_events(data)
    onsets = [t for t, m in zip(times, messages) if m.type == "note_on"]
    np.testing.assert_allclose(onsets, [0.0, 0.5, 1.0])
    assert length == pytest.approx(3.0)
    assert len(render_midi(data, sr=SR)) == round((3.0 + RELEASE_SECONDS) * SR)
    assert len(render_midi(data, sr=SR, max_seconds=2.0)) == 2 * SR


def test_program_changes_change_the_sound():
    piano = render_midi(midi_bytes([(60, 0, 2)], program=0), sr=SR)
    organ = render_midi(midi_bytes([(60, 0, 2)], program=19), sr=SR)
    assert piano.shape == organ.shape and not np.allclose(piano, organ, atol=1e-3)


def check_rendered(y, midi, *, max_seconds=30.0, sr=SR):
    _, _, length = midi_events(midi)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == round(min(max_seconds, length + RELEASE_SECONDS) * sr)
    assert rms(y) > 1e-3 and np.isfinite(y).all()


def test_musicxml_chorale_to_audio():
    path = corpus_path("bach/bwv66.6.mxl")
    midi = score_to_midi(path=path)
    assert midi[:4] == b"MThd" and midi == score_to_midi(path=path)
    y = render_midi(midi, sr=SR)
    check_rendered(y, midi)
    assert np.array_equal(y, render_midi(midi, sr=SR))  # deterministic
    y16 = render_midi(midi, sr=16000, max_seconds=5.0)
    assert len(y16) == 5 * 16000


def test_kern_from_music21_corpus_to_audio():
    path = corpus_path("palestrina/Credo_67_c.krn")
    y = load_track_audio(sr=SR, score=path, max_seconds=10.0)
    check_rendered(y, score_to_midi(path=path), max_seconds=10.0)


def test_abc_tunes_to_audio():
    # Ryan's Mammoth: one tune per file; O'Neill's 1850: one tune cut from a book, format sniffed
    hornpipe = corpus_path("ryansMammoth/AcrobatsHornpipe.abc")
    check_rendered(load_track_audio(sr=SR, score=hornpipe), score_to_midi(path=hornpipe))
    tune = oneills_tune(3)
    midi = score_to_midi(text=tune)
    assert midi == score_to_midi(text=tune, fmt="abc")
    y = load_track_audio(sr=SR, score_text=tune)
    check_rendered(y, midi)
    assert np.array_equal(y, render_midi(midi, sr=SR))


def kern_eras_file(relative):
    path = KERN_ERAS / relative
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


def test_kern_eras_prelude_to_audio():
    path = kern_eras_file("Classical/hummel__prelude67-14.krn")
    midi = score_to_midi(path=path, max_seconds=30.0)
    check_rendered(render_midi(midi, sr=SR), midi)


def test_kern_eras_badly_formed_repeats_play_straight():
    # music21 raises ExpanderException on this sonata's repeats; the whole piece must still convert
    path = kern_eras_file("Baroque/scarlatti__L013K060.krn")
    whole = score_to_midi(path=path)
    _, _, length = midi_events(whole)
    assert length > 30.0
    opening = score_to_midi(path=path, max_seconds=30.0)
    assert len(opening) < len(whole)
    np.testing.assert_array_equal(render_midi(opening, sr=SR), render_midi(whole, sr=SR))


# ---------------------------------------------------------------- features


def test_mfcc_feature_declares_its_parameters():
    feature = AUDIO_FEATURES["mfcc"]
    assert feature.shape == (80,) and feature.sample_rate == SR
    params = feature.params
    assert params["sample_rate"] == SR and params["shape"] == [80]
    assert params["window_seconds"] == 0.03 and params["n_fft"] == round(0.03 * SR)
    assert params["hop_seconds"] == 0.015 and params["hop_length"] == round(0.015 * SR)
    assert feature.description


def test_mfcc_summary_of_real_music():
    y = render_midi(score_to_midi(text=oneills_tune(2)), sr=SR, max_seconds=10.0)
    v = AUDIO_FEATURES["mfcc"].compute(y)
    assert v.dtype == np.float32 and v.shape == (80,) and np.isfinite(v).all()
    assert (v[20:40] > 0).all()  # stds of a changing signal
    np.testing.assert_array_equal(v, mfcc_summary(y, sr=SR))
    assert mfcc_summary(y, sr=SR, n_mfcc=13).shape == (52,)
    louder = AUDIO_FEATURES["mfcc"].compute(2 * y)
    assert not np.allclose(louder[:1], v[:1])  # c0 follows loudness
    np.testing.assert_allclose(louder[1:20], v[1:20], atol=0.05)  # the others barely


def test_mfcc_rejects_silent_and_too_short_audio():
    with pytest.raises(InputError, match="silent"):
        mfcc_summary(np.zeros(SR, dtype=np.float32), sr=SR)
    with pytest.raises(InputError, match="too short"):
        mfcc_summary(np.ones(1000, dtype=np.float32), sr=SR)


def test_extract_track_from_each_kind_of_source(tmp_path):
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, sine(44100, 2.0), 44100)
    midi = tmp_path / "tune.mid"
    midi.write_bytes(score_to_midi(text=oneills_tune(4)))
    sources = [
        {"audio": wav},
        {"midi": midi},
        {"score": corpus_path("ryansMammoth/AcrobatsHornpipe.abc")},
        {"score_text": oneills_tune(4), "score_format": "abc"},
    ]
    results = []
    for source in sources:
        full = {"audio": None, "midi": None, "score": None, "score_text": None, "score_format": None} | source
        out = extract_track(full, ["mfcc"], max_seconds=10.0)
        assert set(out) == {"mfcc"} and out["mfcc"].shape == (80,) and out["mfcc"].dtype == np.float32
        results.append(out["mfcc"])
    np.testing.assert_array_equal(results[1], results[3])  # same tune from a MIDI file and from text
    with pytest.raises(UsageError, match="nope"):
        extract_track({"audio": wav}, ["nope"])


# ---------------------------------------------------------------- bad inputs


def test_bad_audio_inputs(tmp_path):
    with pytest.raises(InputError) as excinfo:
        load_audio(tmp_path / "missing.wav", sr=SR)
    assert_one_line_error(excinfo, "missing.wav")

    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros((0, 1), dtype=np.float32), SR)
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 8)
    nan = tmp_path / "nan.wav"
    soundfile.write(nan, np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    for path in (empty, zero_bytes, corrupt, nan):
        with pytest.raises(InputError) as excinfo:
            load_audio(path, sr=SR)
        assert_one_line_error(excinfo, path.name)

    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(SR, dtype=np.float32), SR)
    with pytest.raises(InputError) as excinfo:
        extract_track({"audio": silent}, ["mfcc"])
    assert_one_line_error(excinfo, "silent.wav")
    assert "silent" in str(excinfo.value).replace("silent.wav", "")


def test_bad_midi_inputs(tmp_path):
    text = tmp_path / "notes.mid"
    text.write_text("these are not MIDI notes\n")
    truncated = tmp_path / "truncated.mid"
    truncated.write_bytes(midi_bytes([(60, 0, 1)])[:30])
    no_notes = tmp_path / "no_notes.mid"
    no_notes.write_bytes(midi_bytes([]))
    late = tmp_path / "late.mid"
    late.write_bytes(midi_bytes([(60, 100, 1)]))  # first note at 50 s
    for path in (tmp_path / "missing.mid", text, truncated, no_notes, late):
        with pytest.raises(InputError) as excinfo:
            render_midi(path, sr=SR, max_seconds=30.0)
        assert_one_line_error(excinfo, path.name)
    with pytest.raises(InputError) as excinfo:
        load_track_audio(sr=SR, midi=b"not midi at all", name="track-17")
    assert_one_line_error(excinfo, "track-17")


def test_bad_score_inputs(tmp_path):
    malformed = tmp_path / "malformed.krn"
    malformed.write_text("this is not a kern file\tat all\n")
    rests = tmp_path / "rests.krn"
    rests.write_text("**kern\n*M4/4\n=1\n1r\n=2\n1r\n*-\n")
    empty_abc = tmp_path / "empty.abc"
    empty_abc.write_text("X:1\nT:Nothing\nM:4/4\nL:1/8\nK:C\n")
    broken_xml = tmp_path / "broken.musicxml"
    broken_xml.write_text("<?xml version='1.0'?><score-partwise><part-list>")
    unknown = tmp_path / "tune.txt"
    unknown.write_text("hello")
    for path in (tmp_path / "missing.krn", malformed, rests, empty_abc, broken_xml, unknown):
        with pytest.raises(InputError) as excinfo:
            load_track_audio(sr=SR, score=path)
        assert_one_line_error(excinfo, path.name)
    with pytest.raises(InputError) as excinfo:
        extract_track({"score": rests}, ["mfcc"])
    assert_one_line_error(excinfo, "rests.krn")

    book = corpus_path("oneills1850/0001-0050.abc")
    with pytest.raises(InputError, match="50 pieces") as excinfo:
        score_to_midi(path=book)
    assert_one_line_error(excinfo, book.name)
    with pytest.raises(InputError) as excinfo:
        score_to_midi(text="no notes here", name="inline-7")
    assert_one_line_error(excinfo, "inline-7")
    with pytest.raises(InputError) as excinfo:
        load_track_audio(sr=SR, name="track-3")
    assert_one_line_error(excinfo, "track-3")


def test_music21_token_warnings_stay_out_of_the_output(capfd):
    """music21 writes one stderr line per skipped kern token (naming no file): captured, one line with --verbose."""
    from genrecli import ui

    kern = "**kern\n*clefG6\n*M4/4\n=1\n4c\n4d\n4e\n4f\n==\n*-\n"
    midi = score_to_midi(text=kern, fmt="humdrum", name="odd-clef.krn")
    assert midi[:4] == b"MThd"
    assert "WARNING" not in capfd.readouterr().err
    ui.configure(verbose=True)
    try:
        score_to_midi(text=kern, fmt="humdrum", name="odd-clef.krn")
    finally:
        ui.configure()
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and "odd-clef.krn" in lines[0] and "WARNING" not in lines[0] and "music21 skipped 1 unreadable token" in lines[0] and "clefG6" in lines[0]


def test_the_loaded_synth_renders_exactly_as_a_fresh_one():
    """The SoundFont is parsed once per process; a reset synth must give the bytes a fresh one gives."""
    from genrecli.audio import synth as synth_module

    first = midi_bytes([(60, 0, 2), (64, 1, 3)], program=0)
    second = midi_bytes([(48, 0, 4), (67, 0.5, 1)], program=19)
    synth_module._synth_for.cache_clear()
    fresh = render_midi(first, sr=SR)
    render_midi(second, sr=SR, max_seconds=1.0)  # cut mid-note: voices still sounding when the next render starts
    again = render_midi(first, sr=SR)
    assert fresh.tobytes() == again.tobytes()


def test_an_abc_tune_sharing_one_time_signature_object_between_measures_converts():
    """music21's ABC reader puts one TimeSignature into two measures of this reel-book strathspey; its MIDI writer
    then failed ("already found in this Stream"): the retry with distinct objects converts it."""
    path = corpus_path("ryansMammoth/StrathearnStrathspey.abc")
    midi = score_to_midi(path=path, max_seconds=30.0)
    assert midi[:4] == b"MThd" and midi == score_to_midi(path=path, max_seconds=30.0)
    y = render_midi(midi, sr=SR, max_seconds=30.0)
    assert rms(y) > 1e-3
