"""The fast Standard MIDI File reader (genrecli.audio.smf) against mido's reading and merge."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from genrecli.audio import smf, synth
from genrecli.errors import InputError


def music21_test_files() -> list[pathlib.Path]:
    import music21

    root = pathlib.Path(music21.__file__).parent
    return sorted(root.rglob("*.mid"))


def assert_same(data: bytes) -> None:
    ours, theirs = smf.read_merged(data), synth._mido_merged(data, "test")
    assert ours[:2] == theirs[:2]
    for a, b in zip(ours[2:5], theirs[2:5]):
        np.testing.assert_array_equal(a, b)
    assert ours[5] == theirs[5]


def header(tracks: int, division: int = 480, midi_type: int = 1) -> bytes:
    return b"MThd" + (6).to_bytes(4, "big") + b"".join(v.to_bytes(2, "big") for v in (midi_type, tracks, division))


def track(body: bytes) -> bytes:
    return b"MTrk" + len(body).to_bytes(4, "big") + body


def test_the_channel_types_are_the_ones_the_renderer_plays():
    assert set(smf.CHANNEL_TYPES) == set(synth._HANDLERS)


def test_real_files_read_as_mido_reads_them():
    files = music21_test_files()
    assert len(files) >= 10
    for path in files:
        assert_same(path.read_bytes())
    # and the files the toolkit's converters write
    kern = "**kern\t**kern\n*MM80\t*MM100\n=1\t=1\n4c\t4C\n8d\t4D\n8e\t.\n=2\t=2\n2f\t2F\n*-\t*-\n"
    for converter in ("music21", "auto"):
        assert_same(synth.score_to_midi(text=kern, fmt="humdrum", max_seconds=30.0, converter=converter))


def test_running_status_clipping_sysex_and_ties_in_time_across_tracks():
    conductor = track(b"\x00\xff\x51\x03\x07\xa1\x20" b"\x60\xff\x51\x03\x0f\x42\x40" b"\x00\xff\x2f\x00")
    notes = track(
        b"\x00\x90\x3c\x64"  # note_on
        b"\x30\x3e\x50"  # running status
        b"\x00\xf0\x03\x7e\x00\xf7"  # sysex (sets mido's running status too)
        b"\x00\xc1\x05"  # program change
        b"\x10\x91\x40\xff"  # a data byte above 127, clipped
        b"\x00\xe1\x00\x40"  # pitch wheel centre
        b"\x00\xa1\x40\x10"  # polytouch: read, not handed out
        b"\x20\x80\x3c\x00\x00\xff\x2f\x00"
    )
    data = header(2) + conductor + notes
    assert_same(data)
    times, messages, length = synth.midi_events(data)
    assert [m.type for m in messages] == ["note_on", "note_on", "program_change", "note_on", "pitchwheel", "note_off"]
    assert messages[3].velocity == 127 and messages[4].pitch == 0
    assert np.all(np.diff(times) >= 0) and length == pytest.approx(times[-1])


@pytest.mark.parametrize("body, why", [
    (b"\x00\xff\x54\x05\xe1\x00\x00\x00\x00\x00\xff\x2f\x00", "SMPTE"),  # frame-rate code mido cannot decode
    (b"\x00\xff\x59\x02\x09\x00\x00\xff\x2f\x00", "key signature"),  # 9 sharps
    (b"\x00\xff\x30\x01\x00\x00\xff\x2f\x00", "meta event"),  # unknown meta type
    (b"\x00\xf2\x00\x00", "system"),
    (b"\x00\x3c\x64", "running status"),
    (b"\x00\x90\x3c", "truncated"),
])
def test_irregular_files_go_to_mido(body, why):
    data = header(1) + track(body)
    with pytest.raises(smf.Irregular, match=why):
        smf.read_merged(data)


@pytest.mark.parametrize("data", [
    b"",
    b"MThd",
    header(1) + b"MTrk\x00\x00\x00\x10\x00\x90",
    header(1) + track(b"\x00\xff\x59\x02\x09\x00\x00\xff\x2f\x00"),
    header(1, division=0x8000 | 25) + track(b"\x00\x90\x3c\x64\x00\xff\x2f\x00"),
    header(1) + track(b"\x00\xff\x2f\x00"),
])
def test_bad_midi_is_a_one_line_input_error(data):
    with pytest.raises(InputError) as info:
        synth.midi_events(data, name="bad.mid")
    assert "bad.mid" in str(info.value) and "\n" not in str(info.value)


def test_the_mono_render_is_the_mean_of_the_two_channels():
    out = np.random.default_rng(0).standard_normal((10001, 2)).astype(np.float32)
    mono = np.add(out[:, 0], out[:, 1])
    mono *= np.float32(0.5)
    np.testing.assert_array_equal(mono, out.mean(axis=1))
