"""A fast reader of regular Standard MIDI Files: mido's reading and track merge, without its per-message checks.

mido builds every message through its value checks (about 10 ms of CPU for the 1500 messages of a 30 s
kern-eras piece, a fifth of rendering it). :func:`read_merged` reads the files the toolkit writes and most
others in one pass over the bytes and returns what ``mido.merge_tracks(mido.MidiFile(..., clip=True).tracks)``
returns: the merged messages' delta times, the tempo of each set_tempo, and the channel messages as real
``mido.Message`` objects with mido's attributes. Whatever it does not read exactly as mido does (SMPTE
division, an unknown meta event or one whose data mido would reject, a track that overruns its chunk, system
common messages, truncated data) raises :class:`Irregular`, and the caller reads the file with mido, which then
gives its own result or error.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Irregular", "read_merged", "CHANNEL_TYPES"]

# Channel messages the reader hands out (what the renderer plays); the others it reads and drops.
CHANNEL_TYPES = ("note_off", "note_on", "control_change", "program_change", "pitchwheel")
_KIND = {0x8: "note_off", 0x9: "note_on", 0xA: "polytouch", 0xB: "control_change", 0xC: "program_change",
         0xD: "aftertouch", 0xE: "pitchwheel"}
_DATA_BYTES = {0x8: 2, 0x9: 2, 0xA: 2, 0xB: 2, 0xC: 1, 0xD: 1, 0xE: 2}
# Meta events by type whose mido decoding cannot fail, with the data lengths it reads them at (None: any).
_TEXT_METAS = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x7F}
_FIXED_METAS = {0x00: {0, 2}, 0x20: {1}, 0x21: {1}, 0x2F: {0}, 0x51: {3}, 0x58: {4}}
_END_OF_TRACK, _SET_TEMPO, _SMPTE_OFFSET, _KEY_SIGNATURE = 0x2F, 0x51, 0x54, 0x59


class Irregular(Exception):
    """A file this reader does not read exactly as mido does; read it with mido."""


def _message(kind: str, channel: int, data: list[int], delta: int):
    import mido

    msg = mido.Message.__new__(mido.Message)
    if kind == "note_on" or kind == "note_off":
        values = {"type": kind, "time": delta, "channel": channel, "note": data[0], "velocity": data[1]}
    elif kind == "control_change":
        values = {"type": kind, "time": delta, "channel": channel, "control": data[0], "value": data[1]}
    elif kind == "program_change":
        values = {"type": kind, "time": delta, "channel": channel, "program": data[0]}
    else:  # pitchwheel: mido's signed pitch, -8192..8191
        values = {"type": kind, "time": delta, "channel": channel, "pitch": (data[0] | data[1] << 7) - 8192}
    vars(msg).update(values)  # the data bytes are in range (clipped as mido clips them): no checks needed
    return msg


def _variable(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    while True:
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos


def read_merged(data: bytes):
    """The merged tracks of a Standard MIDI File as mido reads them with ``clip=True``.

    Parameters
    ----------
    data : bytes
        The file's bytes.

    Returns
    -------
    midi_type : int
        The file's format, 0, 1 or 2.
    ticks_per_beat : int
    delta : np.ndarray, int64, shape (n_merged,)
        Delta ticks of every message of ``mido.merge_tracks`` (meta and sysex messages included, one
        end_of_track last).
    tempo : np.ndarray, int64, shape (n_merged,)
        The tempo of each set_tempo message, -1 for every other message.
    keep : np.ndarray, int64, shape (n_kept,)
        Indices into the merged messages of the channel messages of :data:`CHANNEL_TYPES`.
    messages : list of mido.Message, length n_kept
        Those messages, each with its merged delta time, equal to mido's.

    Raises
    ------
    Irregular
        Anything it does not read as mido does (see the module docstring).
    """
    try:
        return _read(data)
    except (IndexError, ValueError) as exc:  # truncated data, a chunk that ends inside a message
        raise Irregular(str(exc)) from None


def _read(data: bytes):
    if data[:4] != b"MThd" or int.from_bytes(data[4:8], "big") != 6:
        raise Irregular("not a plain MThd header")
    midi_type, n_tracks, division = (int.from_bytes(data[i : i + 2], "big") for i in (8, 10, 12))
    if division & 0x8000:
        raise Irregular("SMPTE division")
    pos = 14
    # Per message of every track, in track order: absolute tick, kind code (0 channel kept, 1 tempo, 2 end of
    # track, 3 other), tempo or message index.
    ticks, codes, values, kept = [], [], [], []
    for _ in range(n_tracks):
        if data[pos : pos + 4] != b"MTrk":
            raise Irregular("a chunk that is not MTrk")
        size = int.from_bytes(data[pos + 4 : pos + 8], "big")
        pos += 8
        end = pos + size
        if end > len(data):
            raise Irregular("a track chunk beyond the end of the file")
        tick, status = 0, None
        while pos < end:
            delta, pos = _variable(data, pos)
            tick += delta
            byte = data[pos]
            pos += 1
            if byte < 0x80:
                if status is None:
                    raise Irregular("running status without a status")
                head, first = status, [byte]
            else:
                head, first = byte, []
                if byte != 0xFF:
                    status = byte  # meta events do not set the running status (nor, in mido, clear it)
            if head == 0xFF:
                kind = data[pos]
                length, pos = _variable(data, pos + 1)
                payload = data[pos : pos + length]
                if len(payload) != length:
                    raise Irregular("a truncated meta event")
                pos += length
                if kind == _KEY_SIGNATURE:
                    if length != 2 or not (-7 <= (payload[0] ^ 0x80) - 0x80 <= 7) or payload[1] > 1:
                        raise Irregular("a key signature mido may not decode")
                elif kind == _SMPTE_OFFSET:
                    if length != 5 or payload[0] >> 5 > 3:  # mido knows frame-rate codes 0-3
                        raise Irregular("an SMPTE offset mido may not decode")
                elif kind not in _TEXT_METAS and length not in _FIXED_METAS.get(kind, ()):
                    raise Irregular(f"meta event 0x{kind:02x} of {length} bytes")
                ticks.append(tick)
                if kind == _SET_TEMPO:
                    codes.append(1)
                    values.append(int.from_bytes(payload, "big"))
                else:
                    codes.append(2 if kind == _END_OF_TRACK else 3)
                    values.append(-1)
            elif head in (0xF0, 0xF7):
                length, pos = _variable(data, pos)
                if pos + length > len(data):
                    raise Irregular("a truncated sysex")
                pos += length
                ticks.append(tick)
                codes.append(3)
                values.append(-1)
            elif head >= 0xF0:
                raise Irregular(f"system message 0x{head:02x}")
            else:
                high = head >> 4
                count = _DATA_BYTES[high] - len(first)
                body = first + [b if b < 127 else 127 for b in data[pos : pos + count]]  # mido's clip
                if len(body) != _DATA_BYTES[high]:
                    raise Irregular("a truncated channel message")
                pos += count
                kind = _KIND[high]
                ticks.append(tick)
                if kind in CHANNEL_TYPES:
                    codes.append(0)
                    values.append(len(kept))
                    kept.append((kind, head & 0x0F, body))
                else:
                    codes.append(3)
                    values.append(-1)
        if pos != end:
            raise Irregular("a message that overruns its track chunk")
    ticks_a = np.asarray(ticks, dtype=np.int64)
    codes_a = np.asarray(codes, dtype=np.int8)
    values_a = np.asarray(values, dtype=np.int64)
    # merge_tracks: a stable sort by absolute time (ties in track order), every end_of_track removed (its delta
    # carried to the next message) and one appended at the time of the last message.
    order = np.argsort(ticks_a, kind="stable")
    last = int(ticks_a[order[-1]]) if len(order) else 0
    order = order[codes_a[order] != 2]
    merged_ticks = np.append(ticks_a[order], last)
    delta = np.diff(merged_ticks, prepend=0)
    codes_m = np.append(codes_a[order], 2)
    values_m = np.append(values_a[order], -1)
    tempo = np.where(codes_m == 1, values_m, -1)
    keep = np.flatnonzero(codes_m == 0)
    messages = [_message(*kept[i], int(d)) for i, d in zip(values_m[keep].tolist(), delta[keep].tolist())]
    return midi_type, division, delta, tempo, keep, messages
