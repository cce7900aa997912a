"""``genre extract-text``: scores/lyrics -> text (cached as ``/text/source``) -> a text encoder.

The encoder gives one vector per track (``/text/<encoder>``) or, with ``sequence=True``, its token outputs
(``/text/<encoder>-seq``: (T, dim) per track, zero-padded, with ``lengths``).
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from genrecli import store, ui
from genrecli.errors import GenreError, UsageError
from genrecli.layout import DatasetPaths
from genrecli.manifest import read_manifest
from genrecli.pipeline import StageResult, up_to_date
from genrecli.pipeline.executors import Executor
from genrecli.pipeline.features import iter_chunks, write_feature_group

SOURCE_GROUP = "text/source"
PLAIN_TEXT = ("lyrics", "text")
ENCODE_CHUNK = 64  # texts per checkpoint while encoding
STATE = "state"  # subgroup of a fitted encoder's feature group holding its fitted state (tfidf: vocabulary, idf)
# Kept word for word although the reading now honours a BOM and refuses NUL bytes: that changes only files
# that used to abort the stage (NUL bytes cannot be stored) and a leading U+FEFF that the encoders' tokenizers
# drop anyway, while a new string would invalidate every text store and make predict refuse every text run.
PLAIN_TEXT_READING = "lyrics and other plain texts as they are (UTF-8, undecodable bytes replaced); not stripped"


def conversion_params(keep_metadata: bool, text_format: str = "raw") -> dict:
    """How scores and lyrics become text: the settings and, for every score format, what is stripped.

    Stored in the params of ``/text/source`` and of every ``/text/<encoder>`` group; independent of the
    corpus (all formats are described, whichever the corpus holds), so two corpora converted the same way
    carry equal conversion params. A canonical ``text_format`` (kern, musicxml, tokens: see
    :mod:`genrecli.text.symbolic`) adds ``text_format`` and the converters' versions (tokens: also the token
    spec); raw adds nothing, so stores and runs made before text formats existed keep their identity.
    """
    from genrecli.text.convert import SCORE_TEXT_FORMATS, strip_metadata_description
    from genrecli.text.symbolic import TEXT_FORMATS, TOKENS_SPEC, converter_versions

    if text_format not in TEXT_FORMATS:
        raise UsageError(f"text format must be one of {', '.join(TEXT_FORMATS)} (got {text_format!r})")
    params = {
        "keep_metadata": bool(keep_metadata),
        "stripped": {} if keep_metadata else {f: strip_metadata_description(f) for f in SCORE_TEXT_FORMATS},
        "plain_text": PLAIN_TEXT_READING,
    }
    if text_format != "raw":
        params["text_format"] = text_format
        params["converters"] = converter_versions(text_format)
        if text_format == "tokens":
            params["tokens"] = TOKENS_SPEC
            params["stripped"] = {}  # tokens carry no metadata to strip
    return params


def text_format_of(conversion: dict) -> str:
    """The text format recorded in a group's ``conversion`` params (raw when it records none)."""
    return conversion.get("text_format", "raw")


def source_group(text_format: str = "raw", default: str = "raw") -> str:
    """The cached texts of one text format: ``text/source`` for the corpus's ``default`` format (see
    :func:`corpus_default_format`), ``text/source-<format>`` for another."""
    return SOURCE_GROUP if text_format == default else f"{SOURCE_GROUP}-{text_format}"


def corpus_default_format(manifest) -> str:
    """The text format ``auto`` means for a corpus: raw, or tokens when its scores come in several formats."""
    from genrecli.text.symbolic import resolve_text_format

    return resolve_text_format("auto", {t.score_format for t in manifest.tracks if t.score_format})


def track_text(track, *, keep_metadata: bool, text_format: str = "raw") -> str:
    """The text of one track (a manifest :class:`~genrecli.manifest.Track`, or one made for a new file).

    ``text_format`` other than raw re-writes a score from its music21 parse
    (:func:`genrecli.text.symbolic.canonical_text`); lyrics and other plain texts are never converted.

    Raises
    ------
    GenreError
        One line naming the file: unreadable, empty, or an invalid score.
    """
    from genrecli.text.convert import read_plain_text, score_to_text
    from genrecli.text.symbolic import canonical_text

    if track.score_format in PLAIN_TEXT:  # lyrics, reviews: inline, or a text file
        where = track.score or track.id
        if track.score_text is not None:
            text = track.score_text
        elif track.score:
            text = read_plain_text(track.score)
        else:
            text = ""
        if not text.strip():
            raise GenreError(f"{where}: empty {track.score_format}")
        return text
    if track.score_text is None and track.score is None:
        raise GenreError(f"{track.id}: no score or lyrics file for the text modality")
    if text_format != "raw":
        if track.score_text is not None:
            return canonical_text(text=track.score_text, fmt=track.score_format, text_format=text_format,
                                  keep_metadata=keep_metadata, name=track.id)
        return canonical_text(path=track.score, fmt=track.score_format, text_format=text_format,
                              keep_metadata=keep_metadata)
    if track.score_text is not None:
        return score_to_text(text=track.score_text, fmt=track.score_format, keep_metadata=keep_metadata)
    return score_to_text(path=track.score, fmt=track.score_format, keep_metadata=keep_metadata)


def convert_track(item: dict) -> dict:
    """One track's text, for the worker pool: ``item`` holds the track's source fields and the settings
    (``keep_metadata``, ``text_format``); returns ``{"text": 0-d str array}``."""
    from genrecli.manifest import Track

    track = Track(id=item["id"], score=item["score"], score_text=item["score_text"], score_format=item["score_format"])
    return {"text": np.array(track_text(track, keep_metadata=item["keep_metadata"], text_format=item["text_format"]))}


def convert_sources(paths: DatasetPaths, *, keep_metadata: bool, force: bool, text_format: str = "raw",
                    jobs: int | None = 1, track_timeout: float | None = None,
                    track_memory: int | float | str | None = None,
                    executor: Executor | str | None = None) -> tuple[list[str], np.ndarray, str, dict]:
    """Make (or reuse) the cached texts of one text format (:func:`source_group`); returns (texts, valid,
    params hash, failures).

    Its params are ``{"conversion": conversion_params(keep_metadata, text_format), "formats": [...],
    "manifest": hash}``. Raw texts are read in this process (milliseconds per file); a canonical format parses
    every score with music21 (seconds per piece), so those run in ``jobs`` supervised worker processes with
    the per-track bounds and a checkpoint (a killed run resumes), as the audio stage does, and ``executor``
    (:mod:`genrecli.pipeline.executors`: ``"local"`` or ``"ray"``) says where those workers run. Raw texts
    never leave this process, whatever the executor: shipping a file's bytes to a worker costs more than
    reading it.
    """
    manifest = read_manifest(paths.manifest)
    formats = sorted({t.score_format for t in manifest.tracks if t.score_format})
    conversion = conversion_params(keep_metadata, text_format)
    params = {"conversion": conversion, "formats": formats, "manifest": manifest.content_hash()}
    digest = store.params_hash(params)
    group = source_group(text_format, corpus_default_format(manifest))
    target = paths.features()
    if store.group_status(target, group, digest) == "fresh" and not force:
        with h5py.File(target, "r") as h5:
            grp = h5[group]
            texts = store.read_strings(grp["text"])
            failures = {tid: msg for tid, stage, msg in store.read_failures(h5) if stage == group}
            ui.info(f"{group}: up to date (params {digest})")
            return texts, grp["valid"][()], digest, failures
    ids = [t.id for t in manifest.tracks]
    checkpoint = store.RowCheckpoint(paths.partial / group.replace("/", "-"), digest)  # canonical formats only
    texts, valid, failures = [""] * len(manifest), np.zeros(len(manifest), dtype=bool), {}
    if text_format == "raw":
        with ui.progress(len(manifest), "score -> text") as advance:
            for i, track in enumerate(manifest.tracks):
                try:
                    texts[i] = track_text(track, keep_metadata=keep_metadata)
                    valid[i] = True
                except GenreError as exc:
                    failures[track.id] = str(exc)
                    ui.warn(str(exc))
                advance(1)
    else:
        from genrecli.pipeline.features import run_per_track

        items = {i: {"id": t.id, "score": t.score, "score_text": t.score_text, "score_format": t.score_format,
                     "keep_metadata": keep_metadata, "text_format": text_format}
                 for i, t in enumerate(manifest.tracks)}
        done, failed = run_per_track(convert_track, items, checkpoint=checkpoint, jobs=jobs,
                                     description=f"score -> {text_format}", ids=ids, track_timeout=track_timeout,
                                     track_memory=track_memory, executor=executor)
        for i, values in done.items():
            texts[i], valid[i] = str(values["text"]), True
        failures = {ids[i]: msg for i, msg in failed.items()}
    if not force:  # as extract-audio: a recomputed source with more failures does not replace a better one
        _refuse_worse(target, group, _stored_valid(target, group, manifest.content_hash(), None), valid, failures)
    with store.write_transaction(target) as h5:
        grp = store.replace_group(h5, group)
        store.write_strings(grp, "text", texts)
        grp.create_dataset("valid", data=valid)
        store.set_group_params(grp, params)
        store.record_failures(h5, group, failures)
    checkpoint.clear()
    ui.info(f"{group}: {int(valid.sum())} texts, {len(failures)} failed")
    return texts, valid, digest, failures


MANIFEST_ATTR = "manifest"  # attribute (not a param: the params hash stays) of a text group: its manifest's hash


def _stored_valid(target: Path, group: str, manifest_hash: str, source_digest: str | None) -> int | None:
    """Tracks with a valid row in the stored ``group`` when it was made for this manifest, else None.

    ``text/source`` records its manifest in its params; an encoder group in the :data:`MANIFEST_ATTR` attribute
    (groups written before it existed count as this manifest's when made from the current source).
    """
    if not Path(target).exists():
        return None
    with store.open_read(target) as h5:
        if group not in h5 or "valid" not in h5[group]:
            return None
        grp = h5[group]
        params = store.group_params(grp)
        made_for = params.get("manifest") or grp.attrs.get(MANIFEST_ATTR)
        if made_for is None and source_digest is not None and params.get("source") == source_digest:
            made_for = manifest_hash
        if made_for != manifest_hash:
            return None
        return int(np.count_nonzero(grp["valid"][()]))


def _refuse_worse(target: Path, group: str, stored: int | None, valid: np.ndarray, failures: dict) -> None:
    """Issue 16: extract-text replaced a good stored group by one with fewer valid rows (a decoder that now
    fails, a conversion option that empties texts) without a word; like extract-audio it now keeps the stored
    group, writes nothing and says so, unless ``--force``."""
    now = int(np.count_nonzero(valid))
    if stored is None or stored <= now:
        return
    example = next(iter(failures.items()), None)
    raise UsageError(
        f"{target}: kept the stored {group} ({stored} tracks ok, now {now}): the recomputed group has more failed "
        f"tracks ({len(failures)}" + (f", e.g. {example[0]}: {example[1]}" if example else "")
        + "); fix the cause, or rerun with --force to replace it"
    )


def encoder_group_name(encoder: str) -> str:
    """``minilm`` / ``tfidf`` stay; a model directory becomes its sanitised folder name."""
    if encoder in ("minilm", "tfidf"):
        return encoder
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(encoder).expanduser().resolve().name).lower() or "encoder"


def extract_text(
    data: str,
    *,
    encoder: str = "minilm",
    keep_metadata: bool = False,
    device: str = "cpu",
    clip_tokens: int = 512,
    pooling: str = "cls",
    max_clips: int | None = None,
    batch_size: int = 16,
    sequence: bool = False,
    max_tokens: int | None = None,
    runtime: str = "auto",
    cpu_ops: str = "auto",
    text_format: str = "auto",
    jobs: int | None = 1,
    data_home: str | Path | None = None,
    force: bool = False,
    executor: Executor | str | None = None,
) -> StageResult:
    """Convert scores to text and encode them into ``features.h5:/text/<encoder>``.

    The group's params are ``{"encoder": <encoder params>, "conversion": conversion_params(keep_metadata),
    "source": <params hash of /text/source>}``. A fitted encoder (tfidf) also stores its fitted state in the
    group: ``state/vocabulary`` (str, the term of each column) and ``state/idf`` (float, per column).

    ``sequence=True`` (transformer encoders only) writes the token-level outputs instead, to
    ``/text/<encoder>-seq`` (see :func:`_extract_sequences`); the pooled group is not touched.

    ``runtime`` is how a transformer computes (:data:`genrecli.text.encoders.RUNTIMES`): 'bf16' gives up to
    about 3x the clips/s of the 'fp32' reference on CPUs with AMX bfloat16 matmuls and 2.5x on a Zen 4
    EPYC's AVX512-BF16 (BENCHMARKS.md), within cosine 0.9999 of it, and is far slower than fp32 on CPUs
    without fast bfloat16 matmuls; the default 'auto' picks bf16
    where it is fast and fp32 elsewhere (:func:`genrecli.text.encoders.resolve_runtime`); 'int8' (CPU only,
    never 'auto''s choice) computes every linear layer in int8, 3.1x fp32 on a VNNI EPYC at cosine >= 0.995
    (:mod:`genrecli.text.int8`). A runtime other
    than fp32 is recorded in the encoder params (so caches and ``genre predict`` use the same one). TF-IDF
    ignores it. ``cpu_ops`` is how the transformer's layers compute on the CPU
    (:data:`genrecli.text.encoders.CPU_OPS`; 'auto': genrecli's fused layers for bf16 on CPUs without AMX,
    15-19 % faster there, transformers' own elsewhere); it changes values by bf16 rounding only and is not
    recorded.

    ``text_format`` (:data:`genrecli.text.symbolic.TEXT_FORMAT_CHOICES`) is the encoding scores are read in:
    'raw' (each file in its own syntax, the paper's choice), or one canonical encoding for every format,
    'kern', 'musicxml' or 'tokens' (:mod:`genrecli.text.symbolic`); 'auto' (the default) is raw when the
    corpus's scores share one format and tokens when they come in several. The format is recorded in the
    conversion params; the corpus's default format writes ``/text/<encoder>``, any other
    ``/text/<encoder>-<format>``; a canonical format's texts are cached in ``/text/source-<format>``;
    converting runs in ``jobs`` worker processes.

    ``executor`` (``"local"`` or ``"ray"``, see :mod:`genrecli.pipeline.executors`) is where that per-track
    conversion runs: ``jobs`` local processes or ``jobs`` Ray actors (None: one per CPU of the cluster). The
    encoding always runs here, in batches on one model (``device``): it is not per track (a batch of texts
    is one forward pass, and TF-IDF is fitted on the whole corpus), and splitting the batches over actors
    would load the model once per actor for minutes of work at most.
    """
    from genrecli.text.symbolic import resolve_text_format

    from genrecli.text.encoders import TransformerEncoder, label_embeddings, make_encoder, resolve_runtime

    if not sequence and max_tokens is not None:
        raise UsageError("max_tokens applies to token sequences only (sequence=True / --sequence)")
    if encoder != "tfidf" and (cpu_ops == "fused" or runtime == "int8"):
        from genrecli.device import resolve_device

        if resolve_device(device).type != "cpu":  # refused before the scores are converted, not after
            what = "--cpu-ops fused" if cpu_ops == "fused" else "--runtime int8"
            raise UsageError(f"{what}: runs on the CPU only, not on --device {device}")
    paths = DatasetPaths.of(data, data_home)
    result = StageResult()
    corpus = read_manifest(paths.manifest)
    score_formats = {t.score_format for t in corpus.tracks if t.score_format}
    fmt, default = resolve_text_format(text_format, score_formats), corpus_default_format(corpus)
    if fmt != "raw" and not score_formats - set(PLAIN_TEXT):
        raise UsageError(f"--text-format {fmt}: '{data}' has no scores (its texts are {', '.join(sorted(score_formats))}); "
                         "text formats apply to kern/MusicXML/ABC scores")
    if text_format == "auto" and fmt != "raw":
        ui.info(f"text format: {fmt} (the scores of '{data}' come in {len(score_formats)} formats: "
                f"{', '.join(sorted(score_formats))}; --text-format raw keeps each file's own syntax)")
    # The corpus's default format keeps the plain group name (text/<encoder>), so `--inputs text/minilm` means
    # the same thing whatever the corpus's formats; another format is named by its suffix. The params say which.
    texts, valid, source_digest, failures = convert_sources(paths, keep_metadata=keep_metadata, force=force,
                                                            text_format=fmt, jobs=jobs, executor=executor)
    result.failures.update(failures)
    if encoder != "tfidf" and runtime == "auto":
        runtime = resolve_runtime(runtime, device)
        ui.info(f"text runtime: {runtime} ({'bfloat16 matmuls are fast here' if runtime == 'bf16' else 'no fast bfloat16 matmuls here'}; --runtime fp32|bf16|int8 to choose)")
    options = {} if encoder == "tfidf" else dict(clip_tokens=clip_tokens, pooling=pooling, max_clips=max_clips,
                                                 batch_size=batch_size, runtime=runtime, cpu_ops=cpu_ops)
    enc = make_encoder(encoder, device=device, **options)
    if sequence:
        return _extract_sequences(paths, enc, encoder, texts, valid, source_digest, keep_metadata=keep_metadata,
                                  text_format=fmt, group=sequence_group_name(encoder, fmt, default), max_tokens=max_tokens,
                                  max_clips=max_clips, force=force, result=result)
    group = text_group_name(encoder, fmt, default)
    params = {"encoder": enc.params(), "conversion": conversion_params(keep_metadata, fmt), "source": source_digest}
    digest = store.params_hash(params)
    target = paths.features()
    if up_to_date(target, group, digest, force=force, result=result):
        return result
    manifest = read_manifest(paths.manifest)
    if not force:
        _refuse_worse(target, group, _stored_valid(target, group, manifest.content_hash(), source_digest), valid, failures)
    rows = _usable_rows(paths, valid)
    if encoder == "tfidf":
        vectors = enc.fit(texts_at(texts, rows)).transform(texts_at(texts, rows))
    else:
        vectors = _encode_resumable(enc, texts, rows, paths.partial / "text", digest)
    out = np.full((len(texts), vectors.shape[1]), np.nan, dtype=np.float32)
    out[rows] = vectors
    labels = label_embeddings(enc, manifest.label_names) if isinstance(enc, TransformerEncoder) else None
    with store.write_transaction(target) as h5:
        write_feature_group(h5, group, out, valid.copy(), params, {})
        h5[group].attrs[MANIFEST_ATTR] = manifest.content_hash()
        if encoder == "tfidf":  # what predict needs to transform new texts exactly as these were
            fitted = enc.state()
            state = h5[group].create_group(STATE)
            store.write_strings(state, "vocabulary", fitted["vocabulary"])
            state.create_dataset("idf", data=fitted["idf"])
        if labels is not None:  # genre-name embeddings, in /labels order (for label-graph models)
            h5[group].create_dataset("label_embeddings", data=labels.astype(np.float32))
    ui.info(f"{target}: wrote {group} ({len(rows)} tracks, dim {vectors.shape[1]})")
    result.written.append(group)
    return result


def _usable_rows(paths, valid: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(valid)
    if len(rows) == 0:
        raise UsageError(f"{paths.name}: no track has a usable score or lyrics text")
    return rows


def text_group_name(encoder: str, text_format: str = "raw", default: str = "raw") -> str:
    """The feature group of an encoder's vectors: ``text/<encoder group name>`` for the corpus's ``default``
    text format, ``text/<encoder group name>-<format>`` for another (so formats sit side by side)."""
    suffix = "" if text_format == default else f"-{text_format}"
    return f"text/{encoder_group_name(encoder)}{suffix}"


def sequence_group_name(encoder: str, text_format: str = "raw", default: str = "raw") -> str:
    """The group of an encoder's token sequences: ``text/<encoder group name>[-<format>]-seq``."""
    return f"{text_group_name(encoder, text_format, default)}-seq"


def _extract_sequences(paths, enc, encoder, texts, valid, source_digest, *, keep_metadata, text_format, group,
                       max_tokens, max_clips, force, result: StageResult) -> StageResult:
    """``/text/<encoder>-seq``: per track the encoder's token outputs, (T, dim) float32, zero-padded.

    The group holds ``data`` (n, T, dim): the rows past a track's length are exactly zero, failed tracks are
    NaN; ``valid`` (n,); ``lengths`` (n,) int64, the real tokens of each track (0 for failed ones); and
    ``label_embeddings`` (n_labels, dim), the pooled encodings of the genre names as in ``/text/<encoder>``.
    Its params are ``{"encoder": enc.sequence_params(max_tokens), "conversion": ..., "source": ...}``; T
    is ``max_tokens`` (default: ``clip_tokens``), fixed, so stores of different corpora are comparable. The
    whole (n, T, dim) block is assembled in memory before the write (n x T x dim x 4 bytes).
    """
    from genrecli.text.encoders import TransformerEncoder, label_embeddings

    if not isinstance(enc, TransformerEncoder):
        raise UsageError(f"--sequence needs a transformer encoder (token outputs); '{encoder}' gives one vector per text")
    if max_clips is not None:
        raise UsageError("--max-clips does not apply to --sequence (the leading clips fill --max-tokens tokens)")
    params = {"encoder": enc.sequence_params(max_tokens), "conversion": conversion_params(keep_metadata, text_format),
              "source": source_digest}
    limit = params["encoder"]["max_tokens"]
    digest = store.params_hash(params)
    target = paths.features()
    if up_to_date(target, group, digest, force=force, result=result):
        return result
    manifest = read_manifest(paths.manifest)
    if not force:
        _refuse_worse(target, group, _stored_valid(target, group, manifest.content_hash(), source_digest), valid,
                      result.failures)
    rows = _usable_rows(paths, valid)
    tokens, lengths = _encode_tokens_resumable(enc, texts, rows, limit, paths.partial / "text", digest)
    out = np.full((len(texts), limit, tokens.shape[2]), np.nan, dtype=np.float32)
    out[rows] = tokens
    all_lengths = np.zeros(len(texts), dtype=np.int64)
    all_lengths[rows] = lengths
    labels = label_embeddings(enc, manifest.label_names)
    with store.write_transaction(target) as h5:
        write_feature_group(h5, group, out, valid.copy(), params, {})
        h5[group].attrs[MANIFEST_ATTR] = manifest.content_hash()
        h5[group].create_dataset("lengths", data=all_lengths)
        h5[group].create_dataset("label_embeddings", data=labels.astype(np.float32))
    ui.info(f"{target}: wrote {group} ({len(rows)} tracks, {limit} tokens x dim {tokens.shape[2]})")
    result.written.append(group)
    return result


def _encode_tokens_resumable(enc, texts, rows, limit: int, partial_dir: Path, digest: str):
    """:func:`_encode_resumable` for token sequences: ((len(rows), T, dim), (len(rows),)) in ``rows`` order."""
    checkpoint = store.RowCheckpoint(partial_dir, digest)
    done, _ = checkpoint.load()
    todo = [int(r) for r in rows if int(r) not in done]
    if done:
        ui.info(f"text encoder: resuming, {len(done)} texts already encoded")
    with ui.progress(len(todo), f"encode {enc.name} tokens") as advance:
        for chunk in iter_chunks(todo, ENCODE_CHUNK):
            seqs, lengths = enc.encode_tokens(texts_at(texts, np.array(chunk)), max_tokens=limit)
            values = {r: {"tokens": s, "length": np.asarray(n)} for r, s, n in zip(chunk, seqs, lengths)}
            checkpoint.save(values, {})
            done.update(values)
            advance(len(chunk))
    checkpoint.clear()
    tokens = np.stack([done[int(r)]["tokens"] for r in rows]).astype(np.float32)
    return tokens, np.array([int(done[int(r)]["length"]) for r in rows], dtype=np.int64)


def texts_at(texts: list[str], rows: np.ndarray) -> list[str]:
    return [texts[i] for i in rows]


def _encode_resumable(enc, texts, rows, partial_dir: Path, digest: str) -> np.ndarray:
    """Encode in chunks, checkpointing each, so a killed run resumes where it stopped."""
    checkpoint = store.RowCheckpoint(partial_dir, digest)
    done, _ = checkpoint.load()
    todo = [int(r) for r in rows if int(r) not in done]
    if done:
        ui.info(f"text encoder: resuming, {len(done)} texts already encoded")
    with ui.progress(len(todo), f"encode {enc.name}") as advance:
        for chunk in iter_chunks(todo, ENCODE_CHUNK):
            vecs = enc.encode(texts_at(texts, np.array(chunk)))
            values = {r: {"vector": v} for r, v in zip(chunk, vecs)}
            checkpoint.save(values, {})
            done.update(values)
            advance(len(chunk))
    checkpoint.clear()
    return np.stack([done[int(r)]["vector"] for r in rows]).astype(np.float32)
