"""Symbolic scores as text: read kern / MusicXML / ABC, validate them fast, strip label-leaking metadata.

The paper feeds the *raw* score encoding (Humdrum ``**kern`` text) to a language model, so nothing is
converted here: each format stays in its own syntax. What is removed by default is every record that
names a composer, title, editor, encoder, catalogue number or source: in a corpus where the label is
confounded with the composer (kern-eras) or spelled in the title (folk dances: "Acacia -- Reel"), those
records let a text model read the answer instead of learning style.

Validation is deliberately shallow and pure Python (no music21 parse, which takes seconds per file):
it catches files that would give a meaningless embedding (no kern spine, ragged spines, no notes,
XML that does not parse, ABC without a key field) and reports them as one-line :class:`InputError`.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from pathlib import Path

from genrecli.errors import InputError, UsageError
from genrecli.formats import SCORE_FORMATS

_STRIPPED = {
    "humdrum": (
        "kern: all '!' comment and reference records (!!!COM, !!!OTL, !!!YEC, ...); *xywh layout and "
        "*I\"/*I' part-name/abbreviation interpretations (then interpretation lines left all '*'); blank lines"
    ),
    "musicxml": (
        "MusicXML: identification, work, movement-title/number, credit, defaults, rights, encoding, "
        "texts of part-name/-abbreviation, group-name/-abbreviation, instrument-name (and *-display), "
        "XML comments, declaration and DOCTYPE"
    ),
    "abc": (
        "ABC: metadata fields X T C R S N Z B O H D F G A I r (and their +: continuations), % comments and "
        "%% directives, free text outside tunes; keeps M L K Q P V U W w m s and the tune body"
    ),
}

SCORE_TEXT_FORMATS = tuple(_STRIPPED)  # the score formats score_to_text reads: humdrum, musicxml, abc

# Bounds on what one file may cost. Over a bound the track fails with the reason (InputError), so a hostile
# or broken file costs a fraction of a second instead of gigabytes (a 3 MB .mxl expanding to 3 GiB drove
# extract-text to 6 GiB; one 50 MB kern line drove music21 to 7 GiB).
MAX_TEXT_BYTES = 64 << 20  # a file, or the score inside an .mxl: real scores are < 30 MB (orchestral MusicXML)
MAX_MXL_RATIO = 100  # .mxl members expand 10-30x (XML deflates well); zip bombs reach 1000x
MXL_RATIO_FROM_BYTES = 1 << 20  # the ratio is checked above this size (tiny members have odd ratios)
MAX_XML_DEPTH = 256  # MusicXML nests < 15 levels; serialising recurses once per level (Python's limit: 1000)
MAX_LINE_CHARS = 1 << 16  # a kern line is one time slice (a token per spine), an ABC line a few bars
_XML_FEED = 1 << 16  # characters fed to the XML parser at a time, so the depth bound stops it early


def score_format(path) -> str:
    """Return the score format ('humdrum', 'musicxml' or 'abc') named by the suffix of ``path``.

    Raises
    ------
    UsageError
        When the suffix is not one of :data:`SCORE_FORMATS`.
    """
    suffix = Path(path).suffix.lower()
    try:
        return SCORE_FORMATS[suffix]
    except KeyError:
        known = ", ".join(SCORE_FORMATS)
        raise UsageError(f"{path}: unknown score suffix {suffix or '(none)'!r} (expected one of {known})") from None


def strip_metadata_description(fmt) -> str:
    """One line saying what :func:`score_to_text` strips for ``fmt``; stored with the feature's parameters."""
    return _STRIPPED[_check_format(fmt)]


def score_to_text(*, path=None, text=None, fmt=None, keep_metadata=False) -> str:
    """Read, validate and (by default) de-identify a score, returning its text encoding.

    Parameters
    ----------
    path : str or Path, optional
        Score file; the format comes from its suffix unless ``fmt`` is given. ``.mxl`` archives are
        unzipped to the root file named by ``META-INF/container.xml``.
    text : str, optional
        Inline score text instead of ``path``; ``fmt`` is then sniffed when not given.
    fmt : {'humdrum', 'musicxml', 'abc'}, optional
    keep_metadata : bool
        True returns the text unchanged apart from newlines normalised to ``\\n``.

    Returns
    -------
    str
        The score in its own syntax (stripped text ends with a newline).

    Raises
    ------
    InputError
        One line naming the file (or ``<inline text>``) and why it is unusable.
    UsageError
        Neither or both of ``path`` and ``text``; unknown ``fmt`` or suffix.
    """
    if (path is None) == (text is None):
        raise UsageError("score_to_text: give exactly one of path= or text=")
    if path is not None:
        where = str(path)
        fmt = _check_format(fmt) if fmt is not None else score_format(path)
        raw = _read_score(Path(path), fmt)
    else:
        where = "<inline text>"
        raw = _normalise_newlines(text)
        if not raw.strip():
            raise InputError(f"{where}: empty score")
        fmt = _check_format(fmt) if fmt is not None else _sniff_format(raw, where)
    clean = {"humdrum": _kern_text, "musicxml": _musicxml_text, "abc": _abc_text}[fmt](raw, where)
    return raw if keep_metadata else clean


# ---------------------------------------------------------------------------------------------- reading


def _check_format(fmt) -> str:
    if fmt not in _STRIPPED:
        raise UsageError(f"unknown score format {fmt!r} (expected one of {', '.join(_STRIPPED)})")
    return fmt


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _sniff_format(text: str, where: str) -> str:
    head = text.lstrip()
    if head.startswith("<"):
        return "musicxml"
    if re.search(r"^\*\*", text, re.M):
        return "humdrum"
    if re.search(r"^K:", text, re.M):
        return "abc"
    raise InputError(f"{where}: cannot tell the score format (no XML, **kern or ABC K: field); pass fmt=")


def check_score_bounds(path, fmt=None) -> None:
    """Raise :class:`InputError` when a score file is over a bound: file size, .mxl expansion (size and
    ratio), XML nesting depth or line length (kern, ABC).

    For readers that parse the file themselves (music21 in the audio stage): run this first, so that a
    score over a bound fails as one track instead of exhausting memory or time.
    """
    path = Path(path)
    fmt = _check_format(fmt) if fmt is not None else score_format(path)
    raw = _read_score(path, fmt)
    if fmt == "musicxml":
        _parse_xml(raw, str(path))
    else:
        _check_line_lengths(raw, str(path))


def check_text_bounds(text: str, where: str) -> None:
    """:func:`check_score_bounds` for a score held in memory (an inline ABC tune): size and line length."""
    if len(text) > MAX_TEXT_BYTES:
        raise InputError(f"{where}: {len(text)} characters, over the {MAX_TEXT_BYTES}-byte limit for a score")
    _check_line_lengths(_normalise_newlines(text), where)


def read_plain_text(path) -> str:
    """A lyrics or other plain-text file: BOM honoured, else UTF-8 with undecodable bytes replaced.

    Raises
    ------
    InputError
        Missing, unreadable, over :data:`MAX_TEXT_BYTES`, or holding NUL bytes (binary data, UTF-16
        without a byte-order mark).
    """
    path = Path(path)
    text, _ = decode_text(_read_bytes(path), path, legacy=False)
    return text


def decode_text(data: bytes, where, *, legacy: bool = True) -> tuple[str, str]:
    """Decode text bytes; returns (text, the encoding used).

    Order: a BOM (UTF-8, UTF-16), then UTF-8, then (``legacy``) the XML-declared encoding or Latin-1, the
    legacy encoding of old Humdrum, ABC and CSV files; without ``legacy``, UTF-8 with undecodable bytes
    replaced. Text never contains NUL bytes, so data with one (MIDI, audio, random bytes, UTF-16 without
    a BOM) is reported instead of decoded into garbage (which HDF5 strings cannot even hold).

    Raises
    ------
    InputError
        One line naming ``where``: NUL bytes, a bad BOM-marked text or an unusable declared encoding.
    """
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError as exc:
                raise InputError(f"{where}: not decodable as {codec} ({exc.reason})") from None
            if "\x00" in text:  # binary data that happens to start like a BOM
                raise InputError(f"{where}: binary data, not text (NUL characters after a {codec} byte-order mark)")
            return text, codec
    if b"\x00" in data:
        raise InputError(f"{where}: binary data, not text (NUL bytes; UTF-16 without a byte-order mark looks so too: "
                         "save text as UTF-8)")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if not legacy:
        return data.decode("utf-8", errors="replace"), "utf-8 (undecodable bytes replaced)"
    declared = re.match(rb"<\?xml[^>]*encoding=[\"']([A-Za-z0-9._-]+)", data)
    codec = declared.group(1).decode() if declared else "latin-1"
    try:
        return data.decode(codec), codec
    except (LookupError, UnicodeError) as exc:  # unknown names, and codecs that refuse to decode ("undefined")
        raise InputError(f"{where}: not UTF-8 and not decodable as the declared encoding {codec!r} ({exc})") from None


def _read_bytes(path: Path) -> bytes:
    """The bytes of a text file, refusing one over :data:`MAX_TEXT_BYTES` before reading it."""
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise InputError(f"{path}: {size / 2**20:.0f} MiB, over the {MAX_TEXT_BYTES >> 20} MiB limit for a text file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data.strip():
        raise InputError(f"{path}: empty file")
    return data


def _read_score(path: Path, fmt: str) -> str:
    data = _read_bytes(path)
    # Any "PK" start, not only a local file header: an empty zip (PK\x05\x06) or a broken one was decoded as
    # XML text and reported as "binary data" / "not well-formed XML"; as an archive it is "broken .mxl archive".
    if fmt == "musicxml" and data[:2] == b"PK":
        data = _mxl_root(data, path)
    text, _ = decode_text(data, path)
    return _normalise_newlines(text)


def _mxl_root(data: bytes, path: Path) -> bytes:
    """Bytes of the score inside a compressed MusicXML (.mxl) archive."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            root = None
            if "META-INF/container.xml" in names:
                container = ET.fromstring(_read_member(zf, "META-INF/container.xml", path))
                rootfile = next((e for e in container.iter() if _local(e.tag) == "rootfile"), None)
                root = rootfile.get("full-path") if rootfile is not None else None
            if root is None:  # container missing: the spec allows one score file at the archive root
                candidates = [n for n in names if not n.startswith("META-INF/") and n.endswith((".xml", ".musicxml"))]
                root = candidates[0] if len(candidates) == 1 else None
            if root is None:
                raise InputError(f"{path}: .mxl archive names no root score file")
            return _read_member(zf, root, path)
    except (zipfile.BadZipFile, ET.ParseError, KeyError, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        # corrupt deflate streams (zlib.error, EOFError), unsupported compression (NotImplementedError) and
        # encrypted members (RuntimeError) are properties of the file, not bugs
        raise InputError(f"{path}: broken .mxl archive ({type(exc).__name__}: {exc})") from None


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """One archive member, refused before decompressing when its declared size or expansion ratio is over
    the bounds. A header that understates the size cannot get past them: zipfile never returns more than
    the declared size (it stops there, and the CRC check fails)."""
    info = zf.getinfo(name)
    if info.file_size > MAX_TEXT_BYTES:
        raise InputError(f"{path}: {name} expands to {info.file_size / 2**20:.0f} MiB, over the "
                         f"{MAX_TEXT_BYTES >> 20} MiB limit for a score")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > MXL_RATIO_FROM_BYTES and ratio > MAX_MXL_RATIO:
        raise InputError(f"{path}: {name} expands {ratio:.0f}x, over the {MAX_MXL_RATIO}x limit (a zip bomb?)")
    return zf.read(info)


def _check_line_lengths(raw: str, where: str) -> None:
    longest = max(map(len, raw.split("\n")))
    if longest > MAX_LINE_CHARS:
        lineno = next(k for k, line in enumerate(raw.split("\n"), 1) if len(line) == longest)
        raise InputError(f"{where}: line {lineno}: {longest} characters, over the {MAX_LINE_CHARS} limit for a score line")


# ---------------------------------------------------------------------------------------------- kern

# Interpretations that are layout or naming, not music: *xywh (scan coordinates, one source only),
# *I"name / *I'abbr part names and their *mI variants (some hold titles and catalogue numbers such as
# *I"L.9 (K.303) or *I"BALLADE.).
_KERN_DROP = re.compile(r"^\*(?:xywh|m?I[\"'])")
_KERN_PITCH = re.compile(r"[A-Ga-g]")


def _kern_text(raw: str, where: str) -> str:
    """Validate a Humdrum file (spine bookkeeping, kern notes) and return it without metadata."""
    _check_line_lengths(raw, where)
    spines: list[str] = []  # exclusive interpretation of each open spine, left to right
    seen: set[str] = set()  # every exclusive interpretation met (a file may hold only **text or **dynam)
    has_notes = False
    out: list[str] = []
    for lineno, line in enumerate(raw.split("\n"), 1):
        if not line.strip() or line.startswith("!!"):  # blank and global comment / reference records
            continue
        tokens = line.split("\t")
        if not spines:  # before the first exclusive interpretation or after all spines ended (*-)
            if not all(t.startswith("**") for t in tokens):
                if seen:
                    raise InputError(f"{where}: line {lineno}: data after all spines were terminated")
                raise InputError(f"{where}: no **kern spine: line {lineno} precedes any ** exclusive interpretation")
            spines = [t[2:] for t in tokens]
            seen.update(spines)
            out.append(line)
            continue
        if len(tokens) != len(spines):
            raise InputError(f"{where}: line {lineno}: {len(tokens)} spines where {len(spines)} are open (ragged spines)")
        if line.startswith("!"):  # local comments (one per spine): layout, editorial notes
            continue
        if line.startswith("*"):
            if not all(t.startswith("*") for t in tokens):
                raise InputError(f"{where}: line {lineno}: interpretation line mixes data tokens")
            spines = _next_spines(spines, tokens, where, lineno)
            seen.update(t[2:] for t in tokens if t.startswith("**"))
            kept = ["*" if _KERN_DROP.match(t) else t for t in tokens]
            if kept != tokens and all(t == "*" for t in kept):
                continue
            out.append("\t".join(kept))
            continue
        if not has_notes:
            has_notes = any(
                kind == "kern" and t != "." and not t.startswith("=") and _KERN_PITCH.search(t)
                for kind, t in zip(spines, tokens)
            )
        out.append(line)
    if "kern" not in seen:
        raise InputError(f"{where}: no **kern spine")
    if not has_notes:
        raise InputError(f"{where}: no note tokens in the **kern spines")
    return "\n".join(out) + "\n"


def _next_spines(spines: list[str], tokens: list[str], where: str, lineno: int) -> list[str]:
    """Apply spine manipulators (*^ split, *v join, *- end, *+ add, *x exchange, **X new) to ``spines``."""
    nxt: list[str] = []
    i = 0
    exchange = [k for k, t in enumerate(tokens) if t == "*x"]
    if len(exchange) not in (0, 2):
        raise InputError(f"{where}: line {lineno}: *x must exchange exactly two spines")
    kinds = list(spines)
    if exchange:
        a, b = exchange
        kinds[a], kinds[b] = kinds[b], kinds[a]
    while i < len(tokens):
        tok, kind = tokens[i], kinds[i]
        if tok == "*v":  # adjacent *v tokens merge into one spine
            j = i
            while j < len(tokens) and tokens[j] == "*v":
                j += 1
            if j - i < 2:
                raise InputError(f"{where}: line {lineno}: a lone *v has no neighbour to join")
            nxt.append(kind)
            i = j
            continue
        if tok == "*^":
            nxt += [kind, kind]
        elif tok == "*+":
            nxt += [kind, ""]  # the new spine receives its exclusive interpretation on the next line
        elif tok.startswith("**"):
            nxt.append(tok[2:])
        elif tok != "*-":
            nxt.append(kind)
        i += 1
    return nxt


# ---------------------------------------------------------------------------------------------- MusicXML

# Elements removed with their whole subtree (tags compared without namespace).
_XML_DROP = {
    "identification", "work", "movement-title", "movement-number", "credit", "defaults", "rights",
    "encoding", "part-name-display", "part-abbreviation-display", "group-name-display",
}
# Elements kept (other elements may point at them) but emptied of text.
_XML_BLANK = {"part-name", "part-abbreviation", "group-name", "group-abbreviation", "instrument-name"}


def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _musicxml_text(raw: str, where: str) -> str:
    """Validate MusicXML (well-formed, has pitched notes) and return it re-serialised without metadata.

    Re-serialisation drops the XML declaration, DOCTYPE, comments and processing instructions (the
    default ElementTree parser does not keep them); element order, attributes and whitespace stay.
    """
    root = _parse_xml(raw, where)
    if not any(_local(n.tag) == "note" and any(_local(c.tag) in ("pitch", "unpitched") for c in n) for n in root.iter()):
        raise InputError(f"{where}: no pitched <note> in the MusicXML")
    for parent in list(root.iter()):
        for child in list(parent):
            name = _local(child.tag)
            if name in _XML_DROP:
                _remove_keep_tail(parent, child)
            elif name in _XML_BLANK:
                child.text = None
    return ET.tostring(root, encoding="unicode") + "\n"


def _parse_xml(raw: str, where: str):
    """Parse decoded XML text, refusing nesting deeper than :data:`MAX_XML_DEPTH` as soon as it is met."""
    # the text is already decoded: drop the declaration so its encoding= does not apply twice
    raw = re.sub(r"^\s*<\?xml[^>]*\?>", "", raw)
    parser = ET.XMLPullParser(events=("start", "end"))
    root, depth = None, 0
    try:
        for k in range(0, len(raw), _XML_FEED):
            parser.feed(raw[k:k + _XML_FEED])
            for event, elem in parser.read_events():
                if event == "end":
                    depth -= 1
                    continue
                root = elem if root is None else root
                depth += 1
                if depth > MAX_XML_DEPTH:
                    raise InputError(f"{where}: XML nested deeper than {MAX_XML_DEPTH} levels (MusicXML needs < 20)")
        parser.close()
    except ET.ParseError as exc:
        raise InputError(f"{where}: not well-formed XML ({exc})") from None
    if root is None:
        raise InputError(f"{where}: not well-formed XML (no element)")
    return root


def _remove_keep_tail(parent, child) -> None:
    """Remove ``child``; its tail (the whitespace before the next element) moves to the previous sibling."""
    siblings = list(parent)
    k = siblings.index(child)
    if k > 0:
        siblings[k - 1].tail = child.tail
    parent.remove(child)


# ---------------------------------------------------------------------------------------------- ABC

_ABC_FIELD = re.compile(r"^([A-Za-z+]):")
# Metadata fields: identifiers, titles, people, sources, notes, history, rhythm (the folk-dance label)
# and I: instructions (software/layout directives), r: remarks. Lyrics (W:, w:) are content and stay.
_ABC_DROP = set("XTCRSNZBOHDFGAIr")
# Body of a music line without the parts that can contain letters but are not notes.
_ABC_NON_NOTES = re.compile(r'"[^"]*"|![^!\n]*!|\[[A-Za-z]:[^\]]*\]|%.*')


def _abc_text(raw: str, where: str) -> str:
    """Validate ABC (a K: field and notes after it) and return it without metadata fields and comments."""
    _check_line_lengths(raw, where)
    out: list[str] = []
    in_body = has_key = has_notes = False
    dropping = False  # the previous field was dropped, so its +: continuation lines go too
    for line in raw.split("\n"):
        if not line.strip():
            if in_body:
                out.append("")  # a blank line ends a tune; keep it as the separator
            in_body = dropping = False
            continue
        if line.startswith("%"):
            continue
        field = _ABC_FIELD.match(line)
        if field:
            name = field.group(1)
            dropping = (name in _ABC_DROP) or (name == "+" and dropping)
            if dropping:
                continue
            if name == "K":
                has_key = in_body = True
            out.append(line)
            continue
        dropping = False
        if not in_body:  # free text between tunes (book titles, prefaces) is not music
            continue
        if not has_notes:
            has_notes = bool(re.search(r"[A-Ga-g]", _ABC_NON_NOTES.sub("", line)))
        out.append(line)
    if not has_key:
        raise InputError(f"{where}: no K: (key) field, not an ABC tune")
    if not has_notes:
        raise InputError(f"{where}: no notes after the K: field")
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"
