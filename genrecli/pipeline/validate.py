"""``genre validate --data NAME``: re-check every file of a manifest against its recorded checksum.

The checksum rule (shared by the loaders through :func:`genrecli.store.track_checksum`): the SHA-256 of each of the
track's files in the order ``audio, midi, score, image`` (the score only when it is not an inline
text), plus the SHA-256 of the inline text (``score_text``: lyrics, reviews) when the track also has
files; one digest is the checksum itself, several are joined and hashed again
(:func:`genrecli.store.files_sha256` for files only). A track made of inline text alone (a tune cut
from a book, lyrics read from a parquet table) carries a text checksum computed by its loader; its
source file (``score``) is checked for presence and readability only, since the text is in the
manifest itself.

Failures are ``{track id: "missing: <path>" | "changed: <path> (checksum differs)" |
"unreadable: <path> (<cause>)"}`` (several problems of one track joined by ``"; "``), recorded in the
manifest's ``/failed`` rows under stage ``validate`` (a clean run clears them) and returned in the
:class:`~genrecli.pipeline.StageResult`, so the CLI exits 2 when anything is wrong.
"""

from __future__ import annotations

from pathlib import Path

from genrecli import store, ui
from genrecli.layout import DatasetPaths
from genrecli.manifest import Track, read_manifest, record_manifest_failures
from genrecli.pipeline import StageResult

ROOT_ITEM = "(root)"


def track_files(track: Track) -> list[str]:
    """The files a track's checksum covers, in checksum order."""
    score = track.score if track.score_text is None else None
    return [p for p in (track.audio, track.midi, score, track.image) if p]


def _matches(recorded: str, file_digests: list[str], text: str | None) -> bool:
    tail = [store.text_sha256(text)] if text is not None else []
    return store.combine_digests(file_digests + tail) == recorded


def _readable(path: str, cache: dict[str, str | None]) -> str | None:
    """None when a (shared) source file can be opened and read, else the failure line."""
    if path not in cache:
        p = Path(path)
        if not p.exists():
            cache[path] = f"missing: {path}"
        else:
            try:
                with open(p, "rb") as fh:
                    fh.read(1)
                cache[path] = None
            except OSError as exc:
                cache[path] = f"unreadable: {path} ({_cause(exc)})"
    return cache[path]


def _cause(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_track(track: Track, source_cache: dict[str, str | None] | None = None) -> list[str]:
    """The problems of one track: missing, unreadable or changed files (empty when all is well)."""
    source_cache = {} if source_cache is None else source_cache
    problems, digests = [], []
    files = track_files(track)
    for path in files:
        if not Path(path).exists():
            problems.append(f"missing: {path}")
            continue
        try:
            digests.append(store.file_sha256(path))
        except OSError as exc:
            problems.append(f"unreadable: {path} ({_cause(exc)})")
    if track.score_text is not None and track.score:
        if (msg := _readable(track.score, source_cache)) is not None:
            problems.append(msg)
    if not problems and files and not _matches(track.checksum, digests, track.score_text):
        problems.append(f"changed: {', '.join(files)} (checksum differs)")
    return problems


def validate(data: str, *, data_home: str | Path | None = None) -> StageResult:
    """Re-check every file of ``data``'s manifest; returns the failures (track id -> one line)."""
    paths = DatasetPaths.of(data, data_home)
    manifest = read_manifest(paths.manifest)
    failures: dict[str, str] = {}
    root = manifest.attrs.get("root")
    if root and not Path(root).exists():
        failures[ROOT_ITEM] = f"missing: {root} (the --root given to ingest)"
    cache: dict[str, str | None] = {}
    n_files = 0
    with ui.progress(len(manifest), f"validate {data}") as advance:
        for track in manifest.tracks:
            n_files += len(track_files(track))
            problems = check_track(track, cache)
            if problems:
                failures[track.id] = "; ".join(problems)
            advance(1)
    record_manifest_failures(paths.manifest, "validate", failures)
    kinds = {k: sum(msg.count(f"{k}:") for msg in failures.values()) for k in ("missing", "changed", "unreadable")}
    ui.info(
        f"validate {data}: {len(manifest)} tracks, {n_files} files and {len(cache)} shared source files checked; "
        f"{kinds['missing']} missing, {kinds['changed']} changed, {kinds['unreadable']} unreadable"
    )
    for item, msg in failures.items():
        ui.info(f"  {item}: {msg}")
    return StageResult(failures=failures)
