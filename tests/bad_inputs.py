"""Issue 16's bad-input corpus, generated in code: a declarative catalogue of bad files and where they fail.

Each :class:`Kind` is one kind of bad input: a small generator writing the bad file(s) into a corpus
directory among good files, the corpus (loader) it belongs to, the stage expected to reject it and
(optionally) a substring expected in the one-line reason. ``stage`` is one of

* ``ingest``: the loader skips or drops it (recorded in the manifest, listed by ``genre info``);
* ``extract-audio`` / ``extract-text`` / ``extract-image``: the stage fails that one track (recorded under
  ``/failed``, listed by ``genre info``) and goes on with the others;
* ``accepted``: a legitimate input (a mono 8 kHz WAV is resampled): the track must come out valid;
* ``ignored``: not a track at all (a folder named like a file): no row, no message needed;
* ``corpus``: a defect of the corpus itself (a root that does not exist): the command stops with exit code 1
  and one line naming the path.

Corpora: ``audio`` and ``text`` are ``genre ingest folder`` trees (``<label>/<stem>.<ext>``; the track id is
``<label>/<stem>``), ``covers`` is a MuMu release (cover images and inline reviews; the id is the album's
amazon_id), ``table`` is a ``genre ingest table`` CSV (the id is the row's id), ``cli`` kinds are whole-command
inputs. :func:`build_corpus` writes a corpus's good files and every bad kind of it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conftest import write_kern, write_wav

LABELS = ("calm", "loud")
SR = 22050


@dataclass(frozen=True)
class Kind:
    name: str
    corpus: str  # audio | text | covers | table | cli
    stage: str  # ingest | extract-audio | extract-text | extract-image | accepted | ignored | corpus
    write: Callable[[Path, "Kind"], None] = field(repr=False)
    file: str = ""  # the bad file, relative to the corpus root (folder corpora: <label>/<name>)
    reason: str | None = None  # a substring of the one-line message
    track: str | None = None  # the track id named in the stores (default: derived from ``file``)
    needs_non_root: bool = False  # permission kinds: root reads every file

    @property
    def track_id(self) -> str:
        if self.track is not None:
            return self.track
        return str(Path(self.file).with_suffix("")) if self.corpus in ("audio", "text") else self.file

    def skip_reason(self) -> str | None:
        if self.needs_non_root and hasattr(os, "geteuid") and os.geteuid() == 0:
            return "running as root: every file is readable"
        if "\n" in self.file and os.name == "nt":  # pragma: no cover
            return "file names cannot hold newlines here"
        return None


# ------------------------------------------------------------------------------------------------ bytes
def rand_bytes(n: int = 4096, seed: int = 0) -> bytes:
    """Random bytes with a NUL in them (not text, not audio, not an image)."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes() + b"\x00"


def wav_bytes(samples: np.ndarray, sr: int = SR, *, subtype: str = "FLOAT") -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def sine(seconds: float = 0.5, sr: int = SR, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    y = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return y if channels == 1 else np.stack([y * (0.5 + 0.1 * c) for c in range(channels)], axis=1)


def _put(data: bytes | str):
    """A writer putting ``data`` (bytes, or UTF-8 text) at the kind's file."""

    def write(root: Path, kind: Kind) -> None:
        path = root / kind.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return write


def _lazy(make: Callable[[], bytes]):
    def write(root: Path, kind: Kind) -> None:
        _put(make())(root, kind)

    return write


# ------------------------------------------------------------------------------------------------ audio
def _truncated_header() -> bytes:
    return wav_bytes(sine())[:20]


def _huge_declared_wav() -> bytes:
    """A WAV whose data chunk claims 4 GiB but holds 0.5 s."""
    b = bytearray(wav_bytes(sine(0.5), subtype="PCM_16"))
    k = b.find(b"data")
    struct.pack_into("<I", b, k + 4, 0xFFFFFFF0)
    return bytes(b)


def _symlink_loop(root: Path, kind: Kind) -> None:
    path = root / kind.file
    path.parent.mkdir(parents=True, exist_ok=True)
    other = path.with_name("loop-b.wav")
    os.symlink(other.name, path)
    os.symlink(path.name, other)


def _dangling_symlink(root: Path, kind: Kind) -> None:
    path = root / kind.file
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("no-such-target.wav", path)


def _directory_like_file(root: Path, kind: Kind) -> None:
    (root / kind.file).mkdir(parents=True)


def _unreadable(root: Path, kind: Kind) -> None:
    path = root / kind.file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(sine()))
    path.chmod(0)


def _good_wav(seconds=0.5, sr=SR, channels=1, subtype="PCM_16", freq=330.0):
    return _lazy(lambda: wav_bytes(sine(seconds, sr, freq, channels), sr, subtype=subtype))


def _nan_wav() -> bytes:
    y = sine()
    y[100:200] = np.nan
    return wav_bytes(y)


def _inf_wav() -> bytes:
    y = sine()
    y[100] = np.inf
    return wav_bytes(y)


def _deleted_after_ingest(root: Path, kind: Kind) -> None:
    """A good file that is deleted between ingest and extract-audio (see :data:`AFTER_INGEST`)."""
    _good_wav()(root, kind)


AUDIO_KINDS = [
    Kind("audio: empty file", "audio", "ingest", _put(b""), "calm/empty.wav", "empty file"),
    Kind("audio: zero-length WAV", "audio", "extract-audio", _lazy(lambda: wav_bytes(np.zeros(0, np.float32))), "loud/zero-frames.wav", "no audio samples"),
    Kind("audio: truncated WAV header", "audio", "extract-audio", _lazy(_truncated_header), "calm/truncated-header.wav", "cannot decode audio"),
    Kind("audio: WAV declaring 4 GiB of data", "audio", "accepted", _lazy(_huge_declared_wav), "loud/huge-declared.wav"),
    Kind("audio: random bytes .wav", "audio", "extract-audio", _lazy(lambda: rand_bytes(seed=1)), "calm/random.wav", "cannot decode audio"),
    Kind("audio: random bytes .mp3", "audio", "extract-audio", _lazy(lambda: rand_bytes(seed=2)), "loud/random.mp3", "cannot decode audio"),
    Kind("audio: random bytes .flac", "audio", "extract-audio", _lazy(lambda: rand_bytes(seed=3)), "calm/random-flac.flac", "cannot decode audio"),
    Kind("audio: random bytes .ogg", "audio", "extract-audio", _lazy(lambda: rand_bytes(seed=4)), "loud/random-ogg.ogg", "cannot decode audio"),
    Kind("audio: kern score named .wav", "audio", "extract-audio", _put("**kern\n4c\n*-\n" * 50), "calm/kern-named.wav", "cannot decode audio"),
    Kind("audio: NaN float samples", "audio", "extract-audio", _lazy(_nan_wav), "loud/nan.wav", "NaN or infinite"),
    Kind("audio: inf float sample", "audio", "extract-audio", _lazy(_inf_wav), "calm/inf.wav", "NaN or infinite"),
    Kind("audio: all silent", "audio", "extract-audio", _lazy(lambda: wav_bytes(np.zeros(SR // 2, np.float32))), "loud/silent.wav", "silent"),
    Kind("audio: one sample", "audio", "extract-audio", _lazy(lambda: wav_bytes(np.full(1, 0.3, np.float32))), "calm/one-sample.wav", "too short"),
    Kind("audio: 8 kHz mono (resampled)", "audio", "accepted", _good_wav(sr=8000), "loud/sr8k.wav"),
    Kind("audio: 192 kHz (resampled)", "audio", "accepted", _good_wav(sr=192000), "calm/sr192k.wav"),
    Kind("audio: stereo", "audio", "accepted", _good_wav(channels=2), "loud/stereo.wav"),
    Kind("audio: 6 channels", "audio", "accepted", _good_wav(channels=6), "calm/six-channels.wav"),
    Kind("audio: 24-bit PCM", "audio", "accepted", _good_wav(subtype="PCM_24"), "loud/pcm24.wav"),
    Kind("audio: WAV named .flac (wrong extension)", "audio", "accepted", _good_wav(), "calm/wav-named.flac"),
    Kind("audio: folder named like a file", "audio", "ignored", _directory_like_file, "loud/folder.wav"),
    Kind("audio: unreadable (no permission)", "audio", "ingest", _unreadable, "calm/unreadable.wav", "cannot read", needs_non_root=True),
    Kind("audio: symbolic link loop", "audio", "ingest", _symlink_loop, "loud/loop-a.wav", "symbolic link"),
    Kind("audio: dangling symbolic link", "audio", "ingest", _dangling_symlink, "calm/dangling.wav", "symbolic link"),
    Kind("audio: deleted after ingest", "audio", "extract-audio", _deleted_after_ingest, "loud/deleted.wav", "not found"),
    Kind("name: spaces", "audio", "accepted", _good_wav(freq=350), "calm/a name with  spaces .wav"),
    Kind("name: unicode", "audio", "accepted", _good_wav(freq=360), "loud/Dvořák – Humoreska №7 🎻.wav"),
    Kind("name: newline", "audio", "ingest", _good_wav(freq=370), "calm/new\nline.wav", "control character"),
    Kind("name: leading dash", "audio", "accepted", _good_wav(freq=380), "loud/--force -rf.wav"),
    Kind("name: 240 characters", "audio", "accepted", _good_wav(freq=390), "calm/" + "long" * 60 + ".wav"),
    Kind("name: shell metacharacters", "audio", "accepted", _good_wav(freq=400), "loud/$(touch pwned);`id`|&>x'\"*?.wav"),
]
AFTER_INGEST = {"audio: deleted after ingest": lambda root, kind: (root / kind.file).unlink()}


# ------------------------------------------------------------------------------------------------- text
NOTE = "<note><pitch><step>C</step><octave>4</octave></pitch><duration>1</duration></note>"
MUSICXML = ('<?xml version="1.0" encoding="UTF-8"?>\n{doctype}<score-partwise><identification><creator type="composer">'
            '{composer}</creator></identification><part-list><score-part id="P1"><part-name>P</part-name></score-part>'
            '</part-list><part id="P1"><measure number="1">{body}</measure></part></score-partwise>\n')


def musicxml(body: str = NOTE * 4, composer: str = "X", doctype: str = "") -> str:
    return MUSICXML.format(body=body, composer=composer, doctype=doctype)


def mxl(members: dict[str, bytes], *, container: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if container:
            first = next(iter(members))
            zf.writestr("META-INF/container.xml", f'<container><rootfiles><rootfile full-path="{first}"/></rootfiles></container>')
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _corrupt_deflate() -> bytes:
    b = bytearray(mxl({"score.xml": musicxml().encode() * 20}, container=False))
    start = b.find(b"score.xml") + len("score.xml")
    b[start + 10:start + 40] = b"\xff" * 30
    return bytes(b)


def with_encrypted_flag(data: bytes) -> bytes:
    """A zip ``data`` with the "encrypted" flag set on every member (zipfile then asks for a password)."""
    b = bytearray(data)
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        k = b.find(sig)
        while k >= 0:
            b[k + offset] |= 1
            k = b.find(sig, k + 4)
    return bytes(b)


def with_declared_size(data: bytes, size: int) -> bytes:
    """A one-member zip ``data`` whose central directory gives the member's uncompressed size as ``size``."""
    b = bytearray(data)
    struct.pack_into("<I", b, b.rfind(b"PK\x01\x02") + 24, size)
    return bytes(b)


def _encrypted() -> bytes:
    return with_encrypted_flag(mxl({"score.xml": musicxml().encode()}))


def _zip_bomb() -> bytes:
    """A one-member .mxl whose central directory says the score expands to 3 GiB."""
    return with_declared_size(mxl({"score.xml": b"<score-partwise/>" * 10}, container=False), 3 << 30)


BILLION_LAUGHS = ('<!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
                  + "]>\n")
XXE = '<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'


def _unbalanced() -> str:
    return "**kern\t**kern\n*M4/4\n4c\t4e\t4g\n4d\n*-\t*-\n"


TEXT_KINDS = [
    Kind("kern: empty", "text", "ingest", _put(b""), "calm/empty.krn", "empty file"),
    Kind("kern: binary", "text", "extract-text", _lazy(lambda: rand_bytes(seed=5)), "loud/binary.krn", "NUL bytes"),
    Kind("kern: no **kern spine", "text", "extract-text", _put("!!!COM: X\n**text\nla\nla\n*-\n"), "calm/no-spine.krn"),
    Kind("kern: unbalanced spines", "text", "extract-text", _put(_unbalanced()), "loud/unbalanced.krn"),
    Kind("kern: 1 MB single line", "text", "extract-text", _put("**kern\n*M4/4\n" + "4c" * 500_000 + "\n*-\n"), "calm/megaline.krn", "limit for a score line"),
    Kind("kern: NUL bytes", "text", "extract-text", _put("**kern\n4c\x00\n*-\n"), "loud/nul.krn", "NUL bytes"),
    Kind("kern: Latin-1 (accepted)", "text", "accepted", _put("!!!COM: Dvo\xf8\xe1k\n**kern\n4c\n4e\n*-\n".encode("latin-1")), "calm/latin1.krn"),
    Kind("musicxml: truncated", "text", "extract-text", _lazy(lambda: musicxml().encode()[:150]), "loud/truncated.musicxml"),
    Kind("musicxml: wrong root element", "text", "extract-text", _put('<?xml version="1.0"?>\n<html><body>hi</body></html>\n'), "calm/html.musicxml"),
    Kind("musicxml: deep nesting", "text", "extract-text", _put(musicxml(NOTE + "<a>" * 20000 + "</a>" * 20000)), "loud/deep.musicxml", "nested deeper"),
    Kind("musicxml: billion laughs", "text", "extract-text", _put(musicxml(NOTE + "<lyric><text>&lol9;</text></lyric>", doctype=BILLION_LAUGHS)), "calm/laughs.musicxml"),
    Kind("musicxml: XXE to /etc/passwd", "text", "extract-text", _put(musicxml(NOTE, composer="&xxe;", doctype=XXE)), "loud/xxe.musicxml"),
    Kind("musicxml: encoding=undefined", "text", "extract-text", _put(musicxml(composer="Dvo\xe1k").replace("UTF-8", "undefined").encode("latin-1")), "calm/undefined.musicxml", "declared encoding 'undefined'"),
    Kind("musicxml: UTF-16 with BOM", "text", "accepted", _put(musicxml().replace("UTF-8", "UTF-16").encode("utf-16")), "loud/utf16.musicxml"),
    Kind("musicxml: random bytes .xml", "text", "extract-text", _lazy(lambda: rand_bytes(seed=6)), "calm/random.xml", "NUL bytes"),
    Kind("mxl: corrupt deflate", "text", "extract-text", _lazy(_corrupt_deflate), "loud/corrupt.mxl", "broken .mxl"),
    Kind("mxl: encrypted", "text", "extract-text", _lazy(_encrypted), "calm/encrypted.mxl", "encrypted"),
    Kind("mxl: zip bomb (3 GiB declared)", "text", "extract-text", _lazy(_zip_bomb), "loud/bomb.mxl", "over the 64 MiB limit"),
    Kind("mxl: no container.xml", "text", "accepted", _lazy(lambda: mxl({"score.xml": musicxml().encode()}, container=False)), "calm/nocontainer.mxl"),
    Kind("mxl: path traversal member", "text", "accepted", _lazy(lambda: mxl({"../../../evil.xml": musicxml().encode()})), "loud/traversal.mxl"),
    Kind("mxl: not a zip", "text", "extract-text", _put("PK this is not a zip archive at all"), "calm/notzip.mxl", "broken .mxl archive"),
    Kind("mxl: empty zip", "text", "extract-text", _lazy(lambda: mxl({}, container=False)), "loud/emptyzip.mxl", ".mxl archive names no root score file"),
    Kind("abc: no X:", "text", "accepted", _put("T:tune\nM:4/4\nK:C\nCDEF|GABc|\n"), "calm/nox.abc"),
    Kind("abc: no K:", "text", "extract-text", _put("X:1\nT:tune\nM:4/4\nCDEF|GABc|\n"), "loud/nok.abc", "no K: (key) field"),
    Kind("abc: garbage body", "text", "extract-text", _put("X:1\nK:C\n}}}{{{ ~~~ @@@ ### !!!\n"), "calm/garbage.abc"),
    Kind("abc: binary", "text", "extract-text", _lazy(lambda: rand_bytes(seed=7)), "loud/binary-abc.abc", "NUL bytes"),
    Kind("lyrics: UTF-16 with BOM (accepted)", "text", "accepted", _put("these are lyrics\n".encode("utf-16")), "calm/utf16bom.txt"),
    Kind("lyrics: UTF-16 without BOM", "text", "extract-text", _put("these are lyrics\n".encode("utf-16-le")), "loud/utf16-nobom.txt", "NUL bytes"),
    Kind("lyrics: random bytes", "text", "extract-text", _lazy(lambda: rand_bytes(seed=8)), "calm/random-lyrics.txt", "NUL bytes"),
    Kind("lyrics: NUL byte", "text", "extract-text", _put("la la\x00 la\n"), "loud/nul-lyrics.txt", "NUL bytes"),
    Kind("lyrics: empty file", "text", "ingest", _put(b""), "calm/empty-lyrics.txt", "empty file"),
    Kind("lyrics: blanks only", "text", "extract-text", _put(" \n\t\n"), "loud/blank.txt", "empty"),
    Kind("lyrics: Latin-1 (accepted)", "text", "accepted", _put("caf\xe9 cr\xe8me\n".encode("latin-1")), "calm/latin1-lyrics.txt"),
    Kind("lyrics: unsupported suffix", "text", "ingest", _put("lyrics\n"), "loud/lyrics.docx", "unsupported file type"),
]


# ----------------------------------------------------------------------------------------------- covers
def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (32, 32), (10, 200, 30, 0) if mode == "CMYK" else (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _png_bomb() -> bytes:
    """A valid PNG declaring 100000 x 100000 pixels (30 GB decoded) in a few hundred bytes."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _cover(suffix: str, make: Callable[[], bytes]):
    """Replace the album's cover by ``make()`` saved as ``images/<amazon_id><suffix>``."""

    def write(root: Path, kind: Kind) -> None:
        images = root / "images"
        for old in images.glob(f"{kind.track}.*"):
            old.unlink()
        (images / f"{kind.track}{suffix}").write_bytes(make())

    return write


def _review(text: str):
    """Add a review with ``text`` (JSON-escaped, so NULs and lone surrogates survive) to the album."""

    def write(root: Path, kind: Kind) -> None:
        path = root / "amazon_reviews_MuMu.json.gz"
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.readlines()
        review = {"reviewerID": "RBAD", "asin": kind.track, "reviewText": text, "overall": 1.0, "summary": "x",
                  "unixReviewTime": 1, "reviewTime": "01 1, 2010"}
        lines.append(json.dumps(review) + "\n")  # ensure_ascii: "\u0000" and "\ud800" as escapes
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.writelines(lines)
        # the album's good reviews go: the bad one is its only text
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            kept = [ln for ln in fh if json.loads(ln)["asin"] != kind.track or json.loads(ln)["reviewerID"] == "RBAD"]
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.writelines(kept)

    return write


def album(k: int) -> str:
    return f"B00{k:07d}"


# albums 0, 1, 2, 4, 5, 6, ... have covers in make_mumu (k % 4 != 3)
COVER_KINDS = [
    Kind("cover: truncated JPEG", "covers", "extract-image", _cover(".jpg", lambda: _jpeg_bytes()[:200]), track=album(0), reason="images/"),
    Kind("cover: truncated PNG", "covers", "extract-image", _cover(".png", lambda: _png_bytes(_rgb(1))[:100]), track=album(1), reason="images/"),
    Kind("cover: zero bytes", "covers", "extract-image", _cover(".jpg", lambda: b""), track=album(2), reason="images/"),
    Kind("cover: random bytes", "covers", "extract-image", _cover(".png", lambda: rand_bytes(seed=9)), track=album(4), reason="images/"),
    Kind("cover: decompression bomb (100000 x 100000 PNG)", "covers", "extract-image", _cover(".png", _png_bomb), track=album(5), reason="images/"),
    Kind("cover: greyscale PNG (accepted)", "covers", "accepted", _cover(".png", lambda: _png_bytes(_rgb(2)[..., 0])), track=album(6)),
    Kind("cover: CMYK JPEG (accepted)", "covers", "accepted", _cover(".jpg", lambda: _jpeg_bytes("CMYK")), track=album(8)),
    Kind("cover: RGBA PNG (accepted)", "covers", "accepted", _cover(".png", lambda: _png_bytes(np.dstack([_rgb(3), _rgb(4)[..., :1]]))), track=album(9)),
    Kind("cover: 1 x 1 pixel (accepted)", "covers", "accepted", _cover(".png", lambda: _png_bytes(_rgb(5)[:1, :1])), track=album(10)),
    Kind("review: NUL characters (inline text)", "covers", "ingest", _review("great\u0000album\u0000"), track=album(12), reason="NUL"),
    Kind("review: lone surrogate (undecodable inline text)", "covers", "ingest", _review("bad \ud800 text"), track=album(13), reason="not valid Unicode"),
]


# ------------------------------------------------------------------------------------------------ table
TABLE_FILE = "features.csv"


def _row(line: str):
    """Append ``line`` to the table (a row of id,artist,label,f0..f3)."""

    def write(root: Path, kind: Kind) -> None:
        with open(root / TABLE_FILE, "ab") as fh:
            fh.write(line.encode("latin-1") + b"\n")

    return write


TABLE_KINDS = [
    Kind("table: NaN feature", "table", "ingest", _row("bad-nan,artistX,calm,nan,1,2,3"), track="bad-nan", reason="NaN/inf"),
    Kind("table: inf feature", "table", "ingest", _row("bad-inf,artistX,loud,1,inf,2,3"), track="bad-inf", reason="NaN/inf"),
    Kind("table: empty label", "table", "ingest", _row("bad-nolabel,artistX,,1,2,3,4"), track="bad-nolabel", reason="empty label"),
    Kind("table: blank label", "table", "ingest", _row("bad-blank,artistX,   ,1,2,3,4"), track="bad-blank", reason="empty label"),
    Kind("table: duplicate id", "table", "ingest", _row("good000,artistX,loud,9,9,9,9"), track="row 41", reason="repeated id 'good000'"),
    Kind("table: empty id", "table", "ingest", _row(",artistX,loud,1,2,3,4"), track="row 42", reason="empty id"),
    Kind("table: Latin-1 label (accepted)", "table", "accepted", _row("latin,artistX,caf\xe9,1,2,3,4"), track="latin"),
]


# -------------------------------------------------------------------------------------- whole commands
CLI_KINDS = [
    Kind("root: a path that does not exist", "cli", "corpus", lambda root, kind: None, "no-such-dir", "no such"),
    Kind("root: a file where a folder is expected", "cli", "corpus", _put("x"), "a-file", "not a directory"),
    Kind("root: folder corpus without label folders", "cli", "corpus", lambda root, kind: (root / kind.file).mkdir(), "no-labels", "expected one folder per label"),
    Kind("table: NUL bytes in the table file", "cli", "corpus", _put(b"id,label,f0\x00\nr0,x,1\n"), "nul/t.csv", "NUL bytes"),
    Kind("gtzan: unknown genre folder", "cli", "corpus", lambda root, kind: None, "gtzan", "unexpected: polka"),
    Kind("mumu: Latin-1 labels CSV (accepted)", "cli", "accepted", lambda root, kind: None, "mumu-latin1"),
]

KINDS: list[Kind] = AUDIO_KINDS + TEXT_KINDS + COVER_KINDS + TABLE_KINDS + CLI_KINDS


def kinds(corpus: str) -> list[Kind]:
    return [k for k in KINDS if k.corpus == corpus and k.skip_reason() is None]


# ---------------------------------------------------------------------------------------------- corpora
N_GOOD = 4  # good tracks per label


def good_audio(root: Path) -> list[str]:
    ids = []
    for j, label in enumerate(LABELS):
        for i in range(N_GOOD):
            write_wav(root / label / f"good{i}.wav", freq=220 * (j + 1) + 30 * i, seconds=0.5)
            ids.append(f"{label}/good{i}")
    return ids


def good_text(root: Path) -> list[str]:
    ids = []
    for j, label in enumerate(LABELS):
        for i in range(N_GOOD):
            write_kern(root / label / f"good{i}.krn", composer=label, n=i)
            (root / label / f"song{i}.txt").write_text(f"{label} words {label} song number {i}\n")
            ids += [f"{label}/good{i}", f"{label}/song{i}"]
    return ids


def good_table(root: Path) -> list[str]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    ids = []
    with open(root / TABLE_FILE, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["id", "artist", "label", "f0", "f1", "f2", "f3"])
        for i in range(36):
            label = LABELS[i % 2]
            x = rng.normal(size=4) + (3.0 if label == "loud" else 0.0)
            w.writerow([f"good{i:03d}", f"artist{i % 6}", label, *[f"{v:.5f}" for v in x]])
            ids.append(f"good{i:03d}")
    return ids


def good_covers(root: Path) -> list[str]:
    from corpus_fixtures import make_mumu

    make_mumu(root)
    return []  # the good albums: every listed one that no kind names (see the test)


GOOD = {"audio": good_audio, "text": good_text, "table": good_table, "covers": good_covers}


def build_corpus(corpus: str, root: Path) -> tuple[list[str], list[Kind]]:
    """Write the good files of ``corpus`` and every bad kind of it under ``root``: (good ids, kinds)."""
    good = GOOD[corpus](root)
    todo = kinds(corpus)
    for kind in todo:
        kind.write(root, kind)
    return good, todo
