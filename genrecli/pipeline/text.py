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
from genrecli.pipeline.features import iter_chunks, write_feature_group

SOURCE_GROUP = "text/source"
PLAIN_TEXT = ("lyrics", "text")
ENCODE_CHUNK = 64  # texts per checkpoint while encoding
STATE = "state"  # subgroup of a fitted encoder's feature group holding its fitted state (tfidf: vocabulary, idf)
# Kept word for word although the reading now honours a BOM and refuses NUL bytes: that changes only files
# that used to abort the stage (NUL bytes cannot be stored) and a leading U+FEFF that the encoders' tokenizers
# drop anyway, while a new string would invalidate every text store and make predict refuse every text run.
PLAIN_TEXT_READING = "lyrics and other plain texts as they are (UTF-8, undecodable bytes replaced); not stripped"


def conversion_params(keep_metadata: bool) -> dict:
    """How scores and lyrics become text: the settings and, for every score format, what is stripped.

    Stored in the params of ``/text/source`` and of every ``/text/<encoder>`` group; independent of the
    corpus (all formats are described, whichever the corpus holds), so two corpora converted the same way
    carry equal conversion params.
    """
    from genrecli.text.convert import SCORE_TEXT_FORMATS, strip_metadata_description

    return {
        "keep_metadata": bool(keep_metadata),
        "stripped": {} if keep_metadata else {f: strip_metadata_description(f) for f in SCORE_TEXT_FORMATS},
        "plain_text": PLAIN_TEXT_READING,
    }


def track_text(track, *, keep_metadata: bool) -> str:
    """The text of one track (a manifest :class:`~genrecli.manifest.Track`, or one made for a new file).

    Raises
    ------
    GenreError
        One line naming the file: unreadable, empty, or an invalid score.
    """
    from genrecli.text.convert import read_plain_text, score_to_text

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
    if track.score_text is not None:
        return score_to_text(text=track.score_text, fmt=track.score_format, keep_metadata=keep_metadata)
    if track.score is None:
        raise GenreError(f"{track.id}: no score or lyrics file for the text modality")
    return score_to_text(path=track.score, fmt=track.score_format, keep_metadata=keep_metadata)


def convert_sources(paths: DatasetPaths, *, keep_metadata: bool, force: bool) -> tuple[list[str], np.ndarray, str, dict]:
    """Make (or reuse) ``/text/source``; returns (texts, valid, params hash, failures).

    Its params are ``{"conversion": conversion_params(keep_metadata), "formats": [...], "manifest": hash}``.
    """
    manifest = read_manifest(paths.manifest)
    formats = sorted({t.score_format for t in manifest.tracks if t.score_format})
    params = {"conversion": conversion_params(keep_metadata), "formats": formats, "manifest": manifest.content_hash()}
    digest = store.params_hash(params)
    target = paths.features()
    if store.group_status(target, SOURCE_GROUP, digest) == "fresh" and not force:
        with h5py.File(target, "r") as h5:
            grp = h5[SOURCE_GROUP]
            texts = store.read_strings(grp["text"])
            failures = {tid: msg for tid, stage, msg in store.read_failures(h5) if stage == SOURCE_GROUP}
            ui.info(f"{SOURCE_GROUP}: up to date (params {digest})")
            return texts, grp["valid"][()], digest, failures
    texts, valid, failures = [], np.zeros(len(manifest), dtype=bool), {}
    with ui.progress(len(manifest), "score -> text") as advance:
        for i, track in enumerate(manifest.tracks):
            try:
                texts.append(track_text(track, keep_metadata=keep_metadata))
                valid[i] = True
            except GenreError as exc:
                texts.append("")
                failures[track.id] = str(exc)
                ui.warn(str(exc))
            advance(1)
    if not force:  # as extract-audio: a recomputed source with more failures does not replace a better one
        _refuse_worse(target, SOURCE_GROUP, _stored_valid(target, SOURCE_GROUP, manifest.content_hash(), None),
                      valid, failures)
    with store.write_transaction(target) as h5:
        grp = store.replace_group(h5, SOURCE_GROUP)
        store.write_strings(grp, "text", texts)
        grp.create_dataset("valid", data=valid)
        store.set_group_params(grp, params)
        store.record_failures(h5, SOURCE_GROUP, failures)
    ui.info(f"{SOURCE_GROUP}: {int(valid.sum())} texts, {len(failures)} failed")
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
    runtime: str = "bf16",
    data_home: str | Path | None = None,
    force: bool = False,
) -> StageResult:
    """Convert scores to text and encode them into ``features.h5:/text/<encoder>``.

    The group's params are ``{"encoder": <encoder params>, "conversion": conversion_params(keep_metadata),
    "source": <params hash of /text/source>}``. A fitted encoder (tfidf) also stores its fitted state in the
    group: ``state/vocabulary`` (str, the term of each column) and ``state/idf`` (float, per column).

    ``sequence=True`` (transformer encoders only) writes the token-level outputs instead, to
    ``/text/<encoder>-seq`` (see :func:`_extract_sequences`); the pooled group is not touched.

    ``runtime`` is how a transformer computes (:data:`genrecli.text.encoders.RUNTIMES`): the default 'bf16'
    gives up to about 3x the clips/s of the 'fp32' reference on CPUs with bfloat16 matmuls (BENCHMARKS.md),
    within cosine 0.9999 of it; a runtime other than fp32 is recorded in the encoder params (so caches and
    ``genre predict`` use the same one). TF-IDF ignores it.
    """
    from genrecli.text.encoders import TransformerEncoder, label_embeddings, make_encoder

    if not sequence and max_tokens is not None:
        raise UsageError("max_tokens applies to token sequences only (sequence=True / --sequence)")
    paths = DatasetPaths.of(data, data_home)
    result = StageResult()
    texts, valid, source_digest, failures = convert_sources(paths, keep_metadata=keep_metadata, force=force)
    result.failures.update(failures)
    options = {} if encoder == "tfidf" else dict(clip_tokens=clip_tokens, pooling=pooling, max_clips=max_clips,
                                                 batch_size=batch_size, runtime=runtime)
    enc = make_encoder(encoder, device=device, **options)
    if sequence:
        return _extract_sequences(paths, enc, encoder, texts, valid, source_digest, keep_metadata=keep_metadata,
                                  max_tokens=max_tokens, max_clips=max_clips, force=force, result=result)
    group = f"text/{encoder_group_name(encoder)}"
    params = {"encoder": enc.params(), "conversion": conversion_params(keep_metadata), "source": source_digest}
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


def sequence_group_name(encoder: str) -> str:
    """The group of an encoder's token sequences: ``text/<encoder group name>-seq``."""
    return f"text/{encoder_group_name(encoder)}-seq"


def _extract_sequences(paths, enc, encoder, texts, valid, source_digest, *, keep_metadata, max_tokens, max_clips,
                       force, result: StageResult) -> StageResult:
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
    group = sequence_group_name(encoder)
    params = {"encoder": enc.sequence_params(max_tokens), "conversion": conversion_params(keep_metadata),
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
