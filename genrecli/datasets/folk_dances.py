"""``folk-dances``: ABC dance tunes bundled with music21 (O'Neill's 1850 and Ryan's Mammoth Collection).

Each ``X:`` tune of the two books is a track labelled by its rhythm field ``R:`` (reel, jig, hornpipe,
...). The ``R:`` field is the label, so it is removed from the stored tune text; titles (which often
end in "-- Reel") are metadata that the text stage strips by default. Label spellings are normalised
(``double jig`` -> ``jig``, ``slipjig`` -> ``slip jig``) and labels with fewer than ``min_count`` tunes are
dropped. The same tune may appear in both books, so tracks carry a ``title`` group and the standard
split keeps each title on one side.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from genrecli import store
from genrecli.datasets import DatasetSpec, Listing, register
from genrecli.errors import UsageError
from genrecli.manifest import Track

BOOKS = ("oneills1850", "ryansMammoth")
LABEL_ALIASES = {"double jig": "jig", "slipjig": "slip jig", "highland fling": "fling", "single jig": "jig"}
MIN_COUNT = 40
_FIELD = re.compile(r"^([A-Za-z]):\s*(.*)$")


def corpus_root() -> Path:
    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("dataset 'folk-dances' needs the music21 package (pip install music21)")
    return Path(list(spec.submodule_search_locations)[0]) / "corpus"


def normalise_label(raw: str) -> str:
    label = " ".join(raw.lower().replace("-", " ").split())
    return LABEL_ALIASES.get(label, label)


def normalise_title(raw: str) -> str:
    title = raw.lower().split("--")[0]
    title = re.sub(r"^the\s+", "", title.strip())
    return re.sub(r"[^a-z0-9]+", "", title)


def split_tunes(text: str) -> list[str]:
    """Cut an ABC book into tunes at each ``X:`` line."""
    tunes, current = [], []
    for line in text.splitlines():
        if line.startswith("X:") and current:
            tunes.append("\n".join(current).strip())
            current = []
        if line.startswith("X:") or current:
            current.append(line)
    if current:
        tunes.append("\n".join(current).strip())
    return tunes


def parse_tune(tune: str) -> tuple[str, str | None, str]:
    """Return (tune without its R: field, the R: value or None, the first title)."""
    rhythm, title, kept = None, "", []
    for line in tune.splitlines():
        m = _FIELD.match(line)
        if m and m.group(1) == "R":
            rhythm = rhythm or m.group(2).strip() or None
            continue
        if m and m.group(1) == "T" and not title:
            title = m.group(2).strip()
        kept.append(line)
    return "\n".join(kept) + "\n", rhythm, title


def list_tracks(root: Path | None = None, *, min_count: int = MIN_COUNT) -> Listing:
    base = Path(root) if root is not None else corpus_root()
    tracks, skipped, notes = [], {}, []
    for book in BOOKS:
        folder = base / book
        files = sorted(folder.glob("*.abc")) if folder.is_dir() else []
        if not files:
            raise UsageError(f"{folder}: expected the ABC files of '{book}' (music21's corpus), found none")
        for path in files:
            for tune in split_tunes(path.read_text(encoding="latin-1")):
                text, rhythm, title = parse_tune(tune)
                number = _FIELD.match(tune.splitlines()[0]).group(2).strip()
                tid = f"{book}/{path.stem}/{number}"
                if not rhythm:
                    skipped[tid] = "no R: (rhythm) field, so no label"
                    continue
                tracks.append(
                    Track(
                        id=tid,
                        label=normalise_label(rhythm),
                        groups={"title": normalise_title(title) or tid, "book": book},
                        score=str(path),
                        score_format="abc",
                        score_text=text,
                        checksum=store.text_sha256(tune),
                    )
                )
    counts: dict[str, int] = {}
    for t in tracks:
        counts[t.label] = counts.get(t.label, 0) + 1
    rare = {label for label, c in counts.items() if c < min_count}
    for t in tracks:
        if t.label in rare:
            skipped[t.id] = f"label '{t.label}' has {counts[t.label]} tunes (< {min_count})"
    if rare:
        notes.append(f"dropped labels with fewer than {min_count} tunes: {', '.join(sorted(rare))}")
    return Listing([t for t in tracks if t.label not in rare], skipped, notes=notes)


register(
    DatasetSpec(
        name="folk-dances",
        description="O'Neill's 1850 + Ryan's Mammoth ABC tunes bundled with music21, labelled by dance type",
        layout="none (bundled with music21); --root may point at a copy of music21's corpus folder",
        standard_split="group:title:0.7",
        needs_root=False,
        list_tracks=list_tracks,
    )
)
