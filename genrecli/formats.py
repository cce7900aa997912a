"""File kinds the toolkit reads, by suffix: one table for loaders, decoders and converters."""

AUDIO_SUFFIXES = (".wav", ".au", ".mp3", ".flac", ".ogg", ".aif", ".aiff")
MIDI_SUFFIXES = (".mid", ".midi")
SCORE_FORMATS = {
    ".krn": "humdrum",
    ".kern": "humdrum",
    ".musicxml": "musicxml",
    ".xml": "musicxml",
    ".mxl": "musicxml",
    ".abc": "abc",
}
LYRICS_SUFFIXES = (".txt",)
