"""``genre extract-audio``: decode or synthesise each track's audio once and compute audio features."""

from __future__ import annotations

import contextlib
import functools
import math
import os
from pathlib import Path

import numpy as np

from genrecli import store, ui
from genrecli.errors import UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import read_manifest
from genrecli.pipeline import StageResult
from genrecli.pipeline.features import assemble, parse_shard, run_per_track, shard_rows, write_feature_group
from genrecli.pipeline.executors import Executor
from genrecli.pipeline.workers import track_bounds


PATH_OPTIONS = ("weights", "pca")  # feature options that name files: stored as absolute paths
DEFAULT_SOUNDFONT = "TimGM6mb (pretty_midi)"


def absolute_options(options: dict[str, dict] | None) -> dict[str, dict]:
    """Feature options with None dropped and weight paths made absolute (so params rebuild anywhere)."""
    out = {}
    for name, opts in (options or {}).items():
        out[name] = {
            k: (str(Path(v).expanduser().resolve()) if k in PATH_OPTIONS and isinstance(v, (str, Path)) else v)
            for k, v in (opts or {}).items() if v is not None
        }
    return out


def renderer_params(soundfont: str | Path | None) -> dict:
    """How MIDI and scores become audio: part of every audio feature's identity."""
    from genrecli.audio.base import file_sha256
    from genrecli.audio.synth import RELEASE_SECONDS, default_soundfont

    path = Path(soundfont).expanduser().resolve() if soundfont else default_soundfont()
    return {
        "synth": "tinysoundfont",
        "soundfont": str(path) if soundfont else DEFAULT_SOUNDFONT,
        "soundfont_sha256": file_sha256(path) if path.is_file() else None,
        "score_to_midi": "music21, opening bars that sound within max_seconds",
        "release_seconds": RELEASE_SECONDS,
    }


def soundfont_of(params: dict) -> str | None:
    """The ``soundfont=`` argument that gave a feature group's params (None: the bundled one)."""
    value = params.get("soundfont")
    return None if value in (None, DEFAULT_SOUNDFONT) else value


def feature_params(feat, *, options: dict, max_seconds: float, renderer: dict, device_type: str) -> dict:
    """The params of ``/audio/<name>`` without the corpus parts (``manifest``, ``shard``).

    ``options`` are the user options the feature was configured with (:func:`configure_feature`); with
    ``max_seconds`` and the renderer's soundfont they are all it takes to rebuild the feature.
    """
    params = {
        "feature": feat.name,
        **feat.params,
        "sample_rate": feat.sample_rate,
        "shape": list(feat.shape),
        "options": dict(options),
        "max_seconds": max_seconds,
        **renderer,
    }
    if feat.device_aware:  # torch front ends on a GPU agree with librosa to 1e-4, not bit for bit
        params["device"] = device_type
    return params


def _extract_one(source: dict, *, features: tuple, max_seconds: float, soundfont: str | None, device: str) -> dict:
    from genrecli.audio.features import _source_name, extract_track

    source = dict(source)
    midi_out = source.pop(MIDI_OUT_KEY, None)
    if midi_out is not None:  # a score track whose MIDI is not cached: convert it here and stage it for the cache
        from genrecli.audio.synth import score_to_midi

        midi = score_to_midi(path=source.get("score"), text=source.get("score_text"), fmt=source.get("score_format"),
                             name=_source_name(source), max_seconds=max_seconds)
        tmp = Path(midi_out).with_name("." + Path(midi_out).name + f".{os.getpid()}.tmp")
        tmp.write_bytes(midi)
        os.replace(tmp, midi_out)
        source["midi"] = midi
    return extract_track(source, list(features), max_seconds=max_seconds, soundfont=soundfont, device=device)


# ------------------------------------------------------------------------------------------ MIDI cache
MIDI_GROUP = "synth/midi"
MIDI_OUT_KEY = "_midi_out"  # in a track's source: where its worker stages the MIDI it converted


def conversion_params() -> dict:
    """What turns a score into MIDI (the cache key's second half; music21's version included)."""
    import music21

    from genrecli.audio.kern_midi import VERSION as NATIVE_KERN_VERSION
    from genrecli.audio.synth import DEFAULT_CONVERTER, DEFAULT_OPENING

    # Another opening or converter gives other MIDI bytes (the same notes within max_seconds).
    return {"converter": "music21", "music21": music21.__version__,
            "score_to_midi": "genrecli.audio.synth.score_to_midi, opening bars that sound within max_seconds",
            "opening": DEFAULT_OPENING, "kern_converter": DEFAULT_CONVERTER, "native_kern": NATIVE_KERN_VERSION}


def _score_key(source: dict, conversion_digest: str) -> str | None:
    """Content key of a score-only track (sha256 of format, score bytes and conversion), None for other tracks."""
    if source.get("audio") is not None or source.get("midi") is not None:
        return None
    fmt = source.get("score_format")
    if fmt in ("lyrics", "text"):
        return None
    import hashlib

    h = hashlib.sha256(f"{fmt}\n{conversion_digest}\n".encode())
    if source.get("score_text") is not None:
        h.update(b"text\n" + source["score_text"].encode("utf-8", "surrogatepass"))
    elif source.get("score") is not None:
        try:
            h.update(b"file\n" + Path(source["score"]).read_bytes())
        except OSError:
            return None  # the worker reports the missing file
    else:
        return None
    return h.hexdigest()


class MidiCache:
    """Per-track MIDI of score tracks, kept in ``features.h5:/synth/midi`` so that music21 runs once per score.

    The group has one row per manifest track: ``key`` (sha256 of the score's format, bytes and
    :func:`conversion_params`; "" where none is cached), ``max_seconds`` (the opening the MIDI covers) and the
    MIDI files back to back in ``midi`` (uint8) cut by ``offsets`` (int64, n + 1). A row is reused for a run
    of the same score content with ``max_seconds`` at most the cached one: the opening cut by
    :func:`~genrecli.audio.synth.score_to_midi` keeps every bar that can sound in time, so rendering the first
    ``max_seconds`` of a longer opening gives the same audio (tested). An edited score, another music21 or
    another conversion changes the key, and the row is converted again.
    """

    def __init__(self, target: Path, staging: Path, manifest):
        self.target, self.staging, self.n = target, staging, len(manifest)
        self.conversion = conversion_params()
        self.digest = store.params_hash(self.conversion)
        self.keys: dict[int, str] = {}
        self.stored: dict[int, tuple[str, float, bytes]] = {}
        self.staged: dict[int, Path] = {}
        self.changed = False
        if target.exists():
            with store.open_read(target) as h5:
                if MIDI_GROUP in h5 and len(h5[MIDI_GROUP]["offsets"]) == self.n + 1:
                    grp = h5[MIDI_GROUP]
                    keys, secs = store.read_strings(grp["key"]), grp["max_seconds"][()]
                    blob, offsets = grp["midi"][()], grp["offsets"][()]
                    self.stored = {r: (k, float(secs[r]), blob[offsets[r]:offsets[r + 1]].tobytes())
                                   for r, k in enumerate(keys) if k}

    def prepare(self, row: int, source: dict, max_seconds: float) -> dict:
        """The source a worker gets: cached MIDI bytes, or a staging path for the MIDI it will convert."""
        key = _score_key(source, self.digest)
        if key is None:
            return source
        self.keys[row] = key
        cached = self.stored.get(row)
        if cached is not None and cached[0] == key and cached[1] >= max_seconds:
            return {**source, "midi": cached[2]}
        staged = self.staging / f"{key}-{max_seconds:g}.mid"
        self.staged[row] = staged
        if staged.is_file():  # converted by an earlier run that was killed or left tracks undone
            return {**source, "midi": staged.read_bytes()}
        self.staging.mkdir(parents=True, exist_ok=True)
        return {**source, MIDI_OUT_KEY: str(staged)}

    def collect(self, max_seconds: float) -> None:
        """Take the MIDI the workers staged into the rows to write."""
        for row, staged in self.staged.items():
            if staged.is_file():
                self.stored[row] = (self.keys[row], float(max_seconds), staged.read_bytes())
                self.changed = True

    def group(self) -> store.GroupData:
        keys, secs, chunks = [""] * self.n, np.zeros(self.n), []
        offsets = np.zeros(self.n + 1, dtype=np.int64)
        for r in range(self.n):
            entry = self.stored.get(r)
            if entry is not None and self.keys.get(r, entry[0]) == entry[0]:
                keys[r], secs[r] = entry[0], entry[1]
                chunks.append(np.frombuffer(entry[2], dtype=np.uint8))
            offsets[r + 1] = offsets[r] + (len(chunks[-1]) if keys[r] else 0)
        blob = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)
        params = {"what": "MIDI of each score track (row), keyed on the score's content and the conversion",
                  "conversion": self.conversion, "tracks_cached": sum(1 for k in keys if k)}
        return store.GroupData(params=params, arrays={"midi": blob, "offsets": offsets, "max_seconds": secs},
                               strings={"key": keys})

    def clear_staging(self) -> None:
        """Delete the MIDI this run staged (now in the store), not the folder: shards of one corpus run at
        the same time stage into the same folder, and each must keep the others' files."""
        for staged in self.staged.values():
            staged.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: another shard's files, or one left by a killed run
            self.staging.rmdir()


def extract_audio(
    data: str,
    *,
    features: tuple[str, ...] = ("mfcc",),
    options: dict[str, dict] | None = None,
    max_seconds: float = 30.0,
    soundfont: str | None = None,
    jobs: int | None = 1,
    shard: str | None = None,
    device: str = "cpu",
    data_home: str | Path | None = None,
    force: bool = False,
    track_timeout: float | None = None,
    track_memory: int | str | None = None,
    executor: Executor | str | None = None,
) -> StageResult:
    """Compute audio features into ``features.h5:/audio/<feature>`` (or a shard store).

    ``options`` maps a feature name to its options (``{"vggish": {"weights": "vggish.pth"}}``); they are
    part of the feature's parameters, so changing them (or the weights file) recomputes. ``track_timeout``
    (seconds) and ``track_memory`` (bytes or ``"4G"``) bound each track's worker (None: the defaults of
    :func:`genrecli.pipeline.workers.track_bounds`); a track over a bound is a recorded per-track failure.
    They are not part of the parameters: after raising a bound, rerun with ``force`` to retry such tracks.

    ``executor`` (``"local"``, the default, or ``"ray"``, or an :class:`~genrecli.pipeline.executors.Executor`
    naming a cluster's address) says where the tracks are computed: ``jobs`` local worker processes or ``jobs``
    Ray actors (None: one per CPU of the cluster). The features are the same either way (bit for bit on the
    CPU) and are not part of the parameters; the rows come back to this process, which writes the store.
    """
    from genrecli.audio.features import resolve_features
    from genrecli.device import resolve_device

    # Unknown names, options or missing weights stop the stage here, not once per track.
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not (math.isfinite(max_seconds) and max_seconds > 0):
        raise UsageError(f"max_seconds must be a positive, finite number of seconds (got {max_seconds!r})")
    bounds = track_bounds(track_timeout, track_memory)
    options = absolute_options(options)
    configured = {f.name: f for f in resolve_features(list(features), options)}
    device_type = resolve_device(device).type
    paths = DatasetPaths.of(data, data_home)
    manifest = read_manifest(paths.manifest)
    shard_t = parse_shard(shard)
    target = paths.features(shard_t)
    renderer = renderer_params(soundfont)
    result = StageResult()
    wanted, params_of = [], {}
    for name, feat in configured.items():
        params = {
            **feature_params(feat, options=options.get(name, {}), max_seconds=max_seconds, renderer=renderer,
                             device_type=device_type),
            "manifest": manifest.content_hash(),
            "shard": list(shard_t) if shard_t else None,
        }
        params_of[name] = params
        status = store.group_status(target, f"audio/{name}", store.params_hash(params))
        if status == "fresh" and not force:
            ui.info(f"audio/{name}: up to date (params {store.params_hash(params)}); nothing to do")
            result.up_to_date.append(f"audio/{name}")
            continue
        if status == "stale":
            ui.info(f"audio/{name}: parameters or inputs changed; recomputing")
        wanted.append(name)
    if not wanted:
        return result
    rows = shard_rows(len(manifest), shard_t)
    midi_cache = MidiCache(target, paths.partial / "midi", manifest)
    items = {int(r): midi_cache.prepare(int(r), manifest.tracks[r].source(), max_seconds) for r in rows}
    digest = store.params_hash({n: params_of[n] for n in wanted})
    checkpoint = store.RowCheckpoint(paths.partial / "audio", digest)
    func = functools.partial(_extract_one, features=tuple(configured[n] for n in wanted), max_seconds=max_seconds,
                             soundfont=soundfont, device=device)
    done, failed = run_per_track(
        func, items, checkpoint=checkpoint, jobs=jobs, description=f"audio {','.join(wanted)}", ids=manifest.ids,
        track_timeout=bounds.timeout, track_memory=bounds.memory, executor=executor,
    )
    failures = {manifest.ids[r]: msg for r, msg in failed.items()}
    assembled = {name: assemble(len(manifest), done, name, configured[name].shape) for name in wanted}
    stored = {name: _stored_ok(target, f"audio/{name}", manifest) for name in wanted}
    kept = [] if force else [n for n in wanted if stored[n] is not None and stored[n] > int(assembled[n][1].sum())]
    written = [name for name in wanted if name not in kept]
    midi_cache.collect(max_seconds)
    if written or midi_cache.changed:
        with store.write_transaction(target) as h5:
            for name in written:
                data_arr, valid = assembled[name]
                write_feature_group(h5, f"audio/{name}", data_arr, valid, params_of[name], failures)
                result.written.append(f"audio/{name}")
            if midi_cache.changed:
                store.write_group_data(store.replace_group(h5, MIDI_GROUP), midi_cache.group())
        if written:
            ui.info(f"{target}: wrote {', '.join('audio/' + n for n in written)} ({len(done)} tracks ok, {len(failed)} failed)")
    midi_cache.clear_staging()
    checkpoint.clear()  # also when kept: a rerun must retry the failed tracks, not replay their failures
    if kept:
        groups = ", ".join(f"audio/{n} ({stored[n]} tracks ok, now {int(assembled[n][1].sum())})" for n in kept)
        example = next(iter(failures.items()), None)
        raise UsageError(
            f"{target}: kept the stored {groups}: the recomputed group has more failed tracks ({len(failures)}"
            + (f", e.g. {example[0]}: {example[1]}" if example else "")
            + "); fix the cause, or rerun with --force to replace it"
        )
    result.failures.update(failures)
    return result


def _stored_ok(target: Path, group: str, manifest) -> int | None:
    """Tracks with features in the stored ``group`` when it was computed for this manifest, else None.

    A recomputed group with fewer (new parameters that fail tracks: a too-short --max-seconds, broken
    weights) does not replace it without --force.
    """
    if not target.exists():
        return None
    with store.open_read(target) as h5:
        if group not in h5 or "valid" not in h5[group]:
            return None
        grp = h5[group]
        if store.group_params(grp).get("manifest") != manifest.content_hash() or len(grp["valid"]) != len(manifest):
            return None
        return int(np.count_nonzero(grp["valid"][()]))
