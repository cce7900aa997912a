"""New files -> exactly a run's features: what ``genre predict`` feeds a trained model.

A training run records, for each of its inputs (``audio/mfcc``, ``text/minilm``, ...), the params of the
feature group it was trained on (the ``params`` attribute of ``features.h5:/audio/mfcc`` ...). Those params
are enough to rebuild each extractor exactly:

* ``/audio/<feature>``: ``feature`` (the registry name), ``options`` (the user options given to
  :func:`~genrecli.audio.features.configure_feature`, weight paths absolute), ``max_seconds``, ``soundfont``
  (with its ``soundfont_sha256``), plus the feature's own description; rebuilding the feature and comparing
  its params with the stored ones catches changed weights, SoundFonts or toolkit defaults.
* ``/text/<encoder>``: ``encoder`` (the encoder's params: model and its hashes, clip length, pooling ...),
  ``conversion`` (``keep_metadata``, what is stripped per score format, how plain text is read) and
  ``source`` (the params hash of the corpus's ``/text/source``: data, not identity).
* ``/image/<backbone>``: :func:`genrecli.image.embed.image_feature_params` (the input image, the backbone and
  the sha256 of its weights, ``source``: ``efficientnet-lite0`` or the ResNet directory), plus the corpus
  parts ``manifest``, ``images`` (the covers' digest) and ``device``, which are not part of its identity. A new
  image file (.jpg/.jpeg/.png/.bmp/.gif/.webp) is embedded by the same backbone, after checking its weights
  are the run's.

A fitted encoder (``tfidf``: vocabulary and IDF learnt on the corpus) cannot be rebuilt from params; its
fitted state is stored next to its features (``/text/tfidf/state/vocabulary``, ``state/idf``),
:func:`feature_state` reads it as numeric arrays (safetensors-ready) and :func:`featurize_files` takes it
back through ``state``.

State encoding (``feature_state`` / ``state=``): ``{"vocabulary": uint8 array, "idf": float array}`` where
the vocabulary array is the UTF-8 bytes of a JSON list of the terms in column order
(:func:`encode_strings`; :func:`decode_strings` undoes it) and ``idf`` is the IDF of each column in the
dtype it was fitted in (float32 by default).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import h5py
import numpy as np

from genrecli import store, ui
from genrecli.errors import GenreError, InputError, UsageError
from genrecli.formats import AUDIO_SUFFIXES, LYRICS_SUFFIXES, MIDI_SUFFIXES, SCORE_FORMATS
from genrecli.layout import DatasetPaths

__all__ = [
    "FITTED_ENCODERS", "Featurized", "decode_strings", "encode_corpus", "encode_strings", "encode_texts", "feature_identity",
    "feature_state", "featurize_files", "file_kind", "identity_digest", "needs_state",
]

FITTED_ENCODERS = ("tfidf",)  # text encoders fitted on the corpus: their features need the fitted state
_DATA_KEYS = ("manifest", "shard")  # params that say which corpus (part) a group holds, not what it computes
# How a GPU-computed torch front end differs from the CPU one (1e-4): not a different feature.
_AUDIO_RUNTIME_KEYS = ("device",)
_TEXT_SUFFIXES = "/".join(sorted({*SCORE_FORMATS, *LYRICS_SUFFIXES}))
_AUDIO_SOURCE_SUFFIXES = "/".join([*AUDIO_SUFFIXES, *MIDI_SUFFIXES, *SCORE_FORMATS])
_WHAT = {"audio": "an audio file", "midi": "a MIDI file", "lyrics": "a lyrics file", "image": "an image file",
         "score": "a score"}
# Params of an /image/<backbone> group that say which corpus / device it was computed on, not what it computes.
_IMAGE_RUNTIME_KEYS = ("manifest", "images", "device", "shard")


# ---------------------------------------------------------------------------------------------- identity


def feature_identity(group: str, params: dict) -> dict:
    """The part of a feature group's params that defines the feature itself.

    Two corpora whose groups have equal identities hold comparable features (same extractor, options,
    weights, audio length, renderer; same text conversion and encoder).

    Parameters
    ----------
    group : str
        The group, e.g. ``audio/mfcc``, ``text/minilm``, ``text/source``.
    params : dict
        Its stored params (:func:`genrecli.store.group_params`, or what a run recorded).

    Returns
    -------
    dict
        * ``audio/*`` (and precomputed groups): the params without ``manifest``, ``shard`` and ``device``
          (the device a torch front end ran on changes values by ~1e-4 only).
        * ``text/<encoder>``: ``{"encoder": ..., "conversion": ...}``; a fitted encoder (tfidf) adds
          ``"fitted_on": <source hash>``: its columns are the vocabulary of the corpus it was fitted on, so
          tfidf features of two different corpora are never comparable (use :func:`encode_texts` with the
          run's state on the other corpus's ``/text/source`` texts instead).
        * ``text/source``: ``{"conversion": ...}``.
        * ``image/*``: the params without ``manifest``, ``images``, ``device`` and ``shard``.

    Raises
    ------
    UsageError
        A text group stored by an older genre, without its conversion settings.
    """
    params = dict(params)
    if group.startswith("image/") and not params.get("precomputed"):
        return {k: v for k, v in params.items() if k not in _IMAGE_RUNTIME_KEYS}
    if group.startswith("text/") and not params.get("precomputed"):
        if "conversion" not in params:
            raise UsageError(
                f"{group}: stored without its text-conversion settings (extracted by an older genre); "
                "rerun `genre extract-text` on that corpus"
            )
        if group == "text/source" or group.startswith("text/source-"):
            return {"conversion": params["conversion"]}
        identity = {"encoder": params.get("encoder"), "conversion": params["conversion"]}
        if needs_state(group, params):
            identity["fitted_on"] = params.get("source")
        return identity
    drop = _DATA_KEYS + (() if params.get("precomputed") else _AUDIO_RUNTIME_KEYS)
    return {k: v for k, v in params.items() if k not in drop}


def identity_digest(group: str, params: dict) -> str:
    """Short hash of :func:`feature_identity` (16 hex digits)."""
    return store.params_hash(feature_identity(group, params))


def needs_state(group: str, params: dict) -> bool:
    """True when the group's features come from an encoder fitted on its corpus (tfidf)."""
    encoder = params.get("encoder")
    return group.startswith("text/") and isinstance(encoder, dict) and encoder.get("encoder") in FITTED_ENCODERS


# ---------------------------------------------------------------------------------------------- fitted state


def encode_strings(values) -> np.ndarray:
    """Strings -> a 1-D uint8 array (UTF-8 of their JSON list), storable where only numbers are (safetensors)."""
    text = json.dumps([str(v) for v in values], ensure_ascii=False, separators=(",", ":"))
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def decode_strings(array) -> list[str]:
    """Undo :func:`encode_strings`; a list or array of strings is returned as a list."""
    arr = np.asarray(array)
    if arr.dtype == np.uint8:
        values = json.loads(arr.tobytes().decode("utf-8"))
        if not isinstance(values, list):
            raise UsageError("encoded strings: expected the UTF-8 JSON of a list")
        return [str(v) for v in values]
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1).tolist()]


def feature_state(paths: DatasetPaths | str | os.PathLike, group: str) -> dict[str, np.ndarray]:
    """The fitted state of a feature group, as numeric arrays; ``{}`` for groups that need none.

    Parameters
    ----------
    paths : DatasetPaths, or the path of a features store
    group : str
        e.g. ``text/tfidf``.

    Returns
    -------
    dict
        tfidf: ``{"vocabulary": uint8 (UTF-8 JSON list of the terms in column order, see
        :func:`decode_strings`), "idf": (n_terms,) float}``. Other groups: ``{}``.

    Raises
    ------
    UsageError
        No such store or group, or a tfidf group stored without its state (an older genre).
    """
    from genrecli.pipeline.text import STATE

    target = paths.features() if isinstance(paths, DatasetPaths) else Path(paths)
    with store.open_read(target, what="features", hint="run `genre extract-text` first") as h5:
        if group not in h5 or not isinstance(h5[group], h5py.Group):
            raise UsageError(f"{target}: no feature group '{group}'")
        grp = h5[group]
        if not needs_state(group, store.group_params(grp)):
            return {}
        if STATE not in grp or "vocabulary" not in grp[STATE] or "idf" not in grp[STATE]:
            raise UsageError(
                f"{target}: '{group}' has no stored fitted state (vocabulary, idf); it was extracted by an "
                "older genre: rerun `genre extract-text --encoder tfidf --force`"
            )
        state = grp[STATE]
        return {"vocabulary": encode_strings(store.read_strings(state["vocabulary"])), "idf": state["idf"][()]}


# ---------------------------------------------------------------------------------------------- rebuilding


@dataclasses.dataclass
class _AudioInput:
    name: str  # input name, e.g. audio/mfcc
    feature: object  # AudioFeature
    max_seconds: float | None
    soundfont: str | None


@dataclasses.dataclass
class _TextInput:
    name: str
    keep_metadata: bool
    encoder: object  # TransformerEncoder or fitted TfidfEncoder
    text_format: str = "raw"  # how scores are read (genrecli.text.symbolic): raw, kern, musicxml or tokens

    @property
    def conversion(self) -> tuple[bool, str]:
        return self.keep_metadata, self.text_format

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.encoder.dim),)


@dataclasses.dataclass
class _ImageInput:
    name: str  # input name, e.g. image/efficientnet-lite0
    backbone: str  # 'efficientnet-lite0' or a ResNet directory
    dim: int  # the width the params declare (the stored one wins when files are embedded)


def _require_same(group: str, stored: dict, rebuilt: dict, what: str) -> None:
    differ = sorted(k for k in {*stored, *rebuilt} if stored.get(k, "<absent>") != rebuilt.get(k, "<absent>"))
    if differ:
        raise UsageError(
            f"{group}: cannot reproduce the run's {what} here: {', '.join(differ)} differ from the stored "
            "parameters (changed weights, SoundFont or genre version; re-extract the features and retrain)"
        )


def _audio_input(group: str, params: dict, device: str) -> _AudioInput:
    from genrecli.audio.features import configure_feature
    from genrecli.device import resolve_device
    from genrecli.pipeline.audio import feature_params, renderer_params, soundfont_of

    if "options" not in params or "feature" not in params:
        raise UsageError(
            f"{group}: stored without the options that rebuild it (extracted by an older genre); "
            "rerun `genre extract-audio` and retrain"
        )
    options = dict(params["options"])
    soundfont = soundfont_of(params)
    if soundfont is not None and not Path(soundfont).is_file():
        raise UsageError(f"{group}: the SoundFont the run synthesised MIDI and scores with is missing: {soundfont}")
    try:
        feature = configure_feature(params["feature"], **options)
        feature.check()
    except UsageError as exc:
        raise UsageError(f"{group}: {exc}") from None
    rebuilt = feature_params(feature, options=options, max_seconds=params.get("max_seconds"),
                             renderer=renderer_params(soundfont), device_type=resolve_device(device).type)
    _require_same(group, feature_identity(group, params), feature_identity(group, rebuilt), "audio feature")
    return _AudioInput(group, feature, params.get("max_seconds"), soundfont)


def _image_input(group: str, params: dict) -> _ImageInput:
    from genrecli.image.embed import image_feature_params

    source = params.get("source")
    if not isinstance(source, str) or "backbone" not in params:
        raise UsageError(f"{group}: stored without the backbone that rebuilds it (extracted by an older genre); "
                         "rerun `genre extract-image` and retrain")
    if source != "efficientnet-lite0" and not Path(source).is_dir():
        raise UsageError(f"{group}: the run's image backbone directory is missing: {source}")
    try:
        rebuilt = image_feature_params(source)
    except UsageError as exc:
        raise UsageError(f"{group}: {exc}") from None
    _require_same(group, feature_identity(group, params), feature_identity(group, rebuilt), "image backbone")
    shape = (params.get("backbone") or {}).get("shape") or [0]
    return _ImageInput(group, source, int(shape[0]))


def _encoder(group: str, encoder_params: dict, state: dict | None, device: str):
    """The encoder that produced ``encoder_params``, fitted from ``state`` when it is a fitted one."""
    from genrecli.text.encoders import _MINILM_ID, TfidfEncoder, make_encoder

    if not isinstance(encoder_params, dict) or "encoder" not in encoder_params:
        raise UsageError(f"{group}: the stored params do not describe a text encoder")
    if encoder_params["encoder"] == "tfidf":
        if not state or "vocabulary" not in state or "idf" not in state:
            raise UsageError(
                f"{group}: tfidf is fitted on the training corpus; its fitted state (vocabulary, idf) is needed "
                "(feature_state of the training corpus, saved in the run's artifact)"
            )
        enc = TfidfEncoder(max_features=encoder_params["max_features"], token_pattern=encoder_params["token_pattern"],
                           sublinear_tf=encoder_params["sublinear_tf"], dtype=np.dtype(encoder_params["dtype"]))
        enc.set_state(decode_strings(state["vocabulary"]), np.asarray(state["idf"]))
        unfitted = {k: v for k, v in encoder_params.items() if k != "vocabulary_size"}
        _require_same(group, unfitted, {k: v for k, v in enc.params().items() if k != "vocabulary_size"}, "text encoder")
        return enc
    model = encoder_params.get("model")
    source = "minilm" if model == _MINILM_ID else str(model)
    if source != "minilm" and not Path(source).is_dir():
        raise UsageError(f"{group}: the run's text model directory is missing: {source}")
    try:
        # a store written before runtimes existed (no "runtime") was computed in fp32
        enc = make_encoder(source, device=device, clip_tokens=encoder_params["clip_tokens"],
                           pooling=encoder_params["pooling"], max_clips=encoder_params["max_clips"],
                           runtime=encoder_params.get("runtime", "fp32"))
    except UsageError as exc:
        raise UsageError(f"{group}: {exc}") from None
    _require_same(group, encoder_params, enc.params(), "text encoder")
    return enc


def _text_input(group: str, params: dict, state: dict | None, device: str) -> _TextInput:
    from genrecli.pipeline.text import conversion_params, text_format_of

    if group == "text/source" or group.startswith("text/source-"):
        raise UsageError(f"{group} holds the texts, not features: give a text encoder's group (text/minilm ...)")
    feature_identity(group, params)  # an older store without conversion settings fails here, clearly
    conversion = params["conversion"]
    keep, fmt = bool(conversion.get("keep_metadata")), text_format_of(conversion)
    try:
        expected = conversion_params(keep, fmt)
    except UsageError as exc:
        raise UsageError(f"{group}: {exc}") from None
    _require_same(group, conversion, expected, "score-to-text conversion")
    return _TextInput(group, keep, _encoder(group, params.get("encoder"), state, device), fmt)


def _encode(encoder, texts: list[str]) -> np.ndarray:
    encode = encoder.transform if hasattr(encoder, "vectorizer_") else encoder.encode
    return np.asarray(encode(texts), dtype=np.float32)


def encode_texts(texts: list[str], group: str, params: dict, *, state: dict[str, np.ndarray] | None = None,
                 device: str = "cpu") -> np.ndarray:
    """Encode already converted texts with the encoder of a stored text group (tfidf: fitted from ``state``,
    this group's :func:`feature_state`).

    For a run's tfidf input applied to another corpus: the other corpus's ``/text/source`` texts (converted
    with the same ``conversion``: compare :func:`feature_identity` of both ``text/source`` groups) encoded
    with the run's vocabulary. Returns (n_texts, dim) float32.
    """
    plan = _text_input(group, params, state, device)
    return _encode(plan.encoder, list(texts))


def encode_corpus(paths: DatasetPaths, group: str, params: dict, *, state: dict[str, np.ndarray] | None = None,
                  device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Another corpus's texts encoded by a run's text input: the way to apply a tfidf run elsewhere.

    The corpus's own ``/text/tfidf`` has its own vocabulary (its columns mean other terms, see
    :func:`feature_identity`); this reads its ``/text/source`` (which must have been converted with the run's
    conversion settings) and encodes it with the run's encoder and fitted ``state``.

    Returns
    -------
    data : (n_tracks, dim) float32, NaN rows for tracks without text
    valid : (n_tracks,) bool

    Raises
    ------
    UsageError
        No ``/text/source`` (run ``genre extract-text`` on the corpus), or one converted with other settings.
    """
    from genrecli.manifest import read_manifest
    from genrecli.pipeline.text import corpus_default_format, source_group

    plan = _text_input(group, params, state, device)
    source = source_group(plan.text_format, corpus_default_format(read_manifest(paths.manifest)))
    target = paths.features()
    with store.open_read(target, what="features", hint="run `genre extract-text` first") as h5:
        if source not in h5:
            raise UsageError(f"{target}: no {source}; run `genre extract-text --data {paths.name}` first")
        grp = h5[source]
        source_params = store.group_params(grp)
        texts, valid = store.read_strings(grp["text"]), grp["valid"][()].astype(bool)
    if "conversion" not in source_params or source_params["conversion"] != params["conversion"]:
        raise UsageError(
            f"{target}: {source} of '{paths.name}' was converted with other settings than {group} of the run "
            f"(keep_metadata, the stripping or the text format); rerun `genre extract-text --data {paths.name}` with "
            "the run's settings"
        )
    rows = np.flatnonzero(valid)
    out = np.full((len(texts), plan.shape[0]), np.nan, dtype=np.float32)
    if len(rows):
        out[rows] = _encode(plan.encoder, [texts[i] for i in rows])
    return out, valid


# ---------------------------------------------------------------------------------------------- files


def file_kind(path: str | os.PathLike) -> str | None:
    """``audio``, ``midi``, ``score``, ``lyrics`` (:mod:`genrecli.formats`) or ``image`` by suffix, else None."""
    from genrecli.image.embed import IMAGE_SUFFIXES

    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    if suffix in MIDI_SUFFIXES:
        return "midi"
    if suffix in SCORE_FORMATS:
        return "score"
    if suffix in LYRICS_SUFFIXES:
        return "lyrics"
    return None


@dataclasses.dataclass
class Featurized:
    """What :func:`featurize_files` returns; unpacks as ``inputs, failures = featurize_files(...)``.

    Attributes
    ----------
    inputs : dict
        Input name -> (len(ok), *shape) float32, rows in the order of ``ok``.
    failures : dict
        File (as given) -> one-line message naming it.
    ok : list of int
        Positions in the ``files`` argument of the files that gave every input.
    files : list of str
        Those files (as given), in the same order.
    """

    inputs: dict[str, np.ndarray]
    failures: dict[str, str]
    ok: list[int]
    files: list[str]

    def __iter__(self):
        return iter((self.inputs, self.failures))


def _one_line(name: str, exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if name in msg else f"{name}: {msg}"


def _needs_message(name: str, kind: str, missing: list[str], modality: str) -> str:
    from genrecli.image.embed import IMAGE_SUFFIXES

    needs = " and ".join(missing)
    if modality == "image":
        return (f"{name}: the run needs {needs}, which {_WHAT[kind]} does not have; "
                f"give the cover image (a {'/'.join(IMAGE_SUFFIXES)})")
    if modality == "text":
        return (f"{name}: the run needs {needs}, which {_WHAT[kind]} does not have; "
                f"give the score or lyrics (a .krn/.musicxml/.abc/.txt)")
    return (f"{name}: the run needs {needs}, which {_WHAT[kind]} does not have; "
            f"give the audio, MIDI or score (a {_AUDIO_SOURCE_SUFFIXES})")


def _check_file(path: Path, name: str, audio: list[_AudioInput], text: list[_TextInput],
                image: list[_ImageInput] = ()) -> str:
    """The file's kind; an InputError naming it when it is missing, unsupported or lacks a modality the run needs.

    One file is one item: a run on several modalities (audio + image, text + image) needs them from the same
    file, so an image-and-audio run cannot be applied to single files (every file fails, saying why).
    """
    from genrecli.image.embed import IMAGE_SUFFIXES

    if not path.exists():
        raise InputError(f"{name}: no such file")
    kind = file_kind(path)
    if kind is None:
        suffix = path.suffix or "(no suffix)"
        raise InputError(
            f"{name}: unsupported file type {suffix} (expected audio {'/'.join(AUDIO_SUFFIXES)}, "
            f"MIDI {'/'.join(MIDI_SUFFIXES)}, a score {'/'.join(SCORE_FORMATS)}, lyrics {'/'.join(LYRICS_SUFFIXES)} "
            f"or an image {'/'.join(IMAGE_SUFFIXES)})"
        )
    if not path.is_file():
        raise InputError(f"{name}: not a file")
    if image and kind != "image":
        raise InputError(_needs_message(name, kind, [i.name for i in image], "image"))
    if text and kind in ("audio", "midi", "image"):
        raise InputError(_needs_message(name, kind, [t.name for t in text], "text"))
    if audio and kind in ("lyrics", "image"):
        raise InputError(_needs_message(name, kind, [a.name for a in audio], "audio"))
    return kind


def _source(path: Path, name: str, kind: str) -> dict:
    """The extractor's source for a file, as the manifest gives it for a track with only that file."""
    source = {"audio": None, "midi": None, "score": None, "score_text": None, "score_format": None, "name": name}
    if kind == "score":
        source.update(score=str(path), score_format=SCORE_FORMATS[path.suffix.lower()])
    else:
        source[kind] = str(path)
    return source


def featurize_files(
    files: list[Path],
    inputs: dict[str, dict],
    *,
    device: str = "cpu",
    state: dict[str, dict[str, np.ndarray]] | None = None,
) -> Featurized:
    """Compute, for new files, exactly the features a run was trained on.

    Parameters
    ----------
    files : list of path
        Audio (.wav, .au, .mp3, .flac, ...), MIDI (.mid), scores (.krn, .musicxml, .xml, .mxl, .abc) or
        lyrics (.txt), or cover images (.jpg, .png, ...). Audio and MIDI give audio features (MIDI by
        synthesis); a score gives audio (score -> MIDI -> synthesis, as ``extract-audio`` does for
        score-only tracks) and text; lyrics give text; an image gives image features. A run on image and
        another modality cannot be applied to one file: each such file is a failure saying so.
    inputs : dict
        Input name (``audio/mfcc``, ``text/minilm``, ``image/efficientnet-lite0``, ...) -> the params stored
        with that feature group.
    device : str
        Where neural extractors and encoders run.
    state : dict, optional
        Input name -> fitted state (:func:`feature_state`), for fitted encoders (tfidf).

    Returns
    -------
    Featurized
        ``inputs`` (name -> (n_ok, *shape) float32), ``failures`` (file -> one line naming it), ``ok``
        (positions of the files that worked) and ``files``; unpacks as ``(inputs, failures)``.

    Raises
    ------
    UsageError
        An input that cannot be rebuilt exactly (unknown feature, missing weights, SoundFont or model
        directory, changed weights, a tfidf input without state, a precomputed feature, a missing or changed
        image backbone). Per-file problems (missing, unsupported, unreadable, a file lacking a modality the
        run needs) are failures instead.
    """
    from genrecli.audio.features import extract_track
    from genrecli.manifest import Track
    from genrecli.pipeline.features import TrackInternalError
    from genrecli.pipeline.text import track_text

    state = state or {}
    if not inputs:
        raise UsageError("featurize: no inputs to compute")
    audio, text, image = [], [], []
    for group, params in inputs.items():
        if params.get("precomputed"):
            raise UsageError(f"{group}: a precomputed feature shipped with its corpus; it cannot be computed from files")
        if group.startswith("audio/"):
            audio.append(_audio_input(group, params, device))
        elif group.startswith("text/"):
            text.append(_text_input(group, params, state.get(group), device))
        elif group.startswith("image/"):
            image.append(_image_input(group, params))
        else:
            raise UsageError(f"{group}: not an audio/, text/ or image/ feature group")
    # one extract_track call per file for the audio inputs that share a length and a SoundFont
    audio_runs: dict[tuple, list[_AudioInput]] = {}
    for a in audio:
        audio_runs.setdefault((a.max_seconds, a.soundfont), []).append(a)

    names = [str(f) for f in files]
    values: dict[int, dict[str, np.ndarray]] = {}
    texts: dict[int, dict[tuple[bool, str], str]] = {}
    failures: dict[str, str] = {}
    with ui.progress(len(files), "featurize") as advance:
        for i, (path, name) in enumerate(zip(map(Path, files), names)):
            try:
                kind = _check_file(path, name, audio, text, image)
                row: dict[str, np.ndarray] = {}
                for (max_seconds, soundfont), run in audio_runs.items():
                    out = extract_track(_source(path, name, kind), [a.feature for a in run], max_seconds=max_seconds,
                                        soundfont=soundfont, device=device)
                    row.update({a.name: out[a.feature.name] for a in run})
                if text:
                    fmt = "lyrics" if kind == "lyrics" else SCORE_FORMATS[path.suffix.lower()]
                    track = Track(id=name, score=str(path), score_format=fmt)
                    texts[i] = {(keep, fmt): track_text(track, keep_metadata=keep, text_format=fmt)
                                for keep, fmt in {t.conversion for t in text}}
                values[i] = row
            except UsageError:
                raise
            except GenreError as exc:
                failures[name] = _one_line(name, exc)
            except Exception as exc:  # a bug, not a bad file: stop, as the stages do
                raise TrackInternalError("featurize", name, exc) from exc
            advance(1)
    for t in text:
        rows = [i for i in values if i in texts]
        if not rows:
            break
        try:
            vectors = _encode(t.encoder, [texts[i][t.conversion] for i in rows])
        except InputError:  # find the text(s) at fault; the others still count
            vectors = []
            for i in list(rows):
                try:
                    vectors.append(_encode(t.encoder, [texts[i][t.conversion]])[0])
                except InputError as exc:
                    failures[names[i]] = f"{names[i]}: {t.name}: {' '.join(str(exc).split())}"
                    del values[i]
            rows = [i for i in rows if i in values]
        for i, vector in zip(rows, vectors):
            values[i][t.name] = vector
    dims = {}
    for im in image:  # the files passed _check_file: they are images, embedded in batches by the run's backbone
        from genrecli.image.embed import embed_image_files

        rows = sorted(values)
        if not rows:
            break
        z, errors = embed_image_files([names[i] for i in rows], backbone=im.backbone, device=device)
        for k, i in enumerate(rows):
            if k in errors:
                failures[names[i]] = _one_line(names[i], InputError(errors[k]))
                del values[i]
            else:
                values[i][im.name] = z[k]
        dims[im.name] = z.shape[1] or im.dim
    ok = sorted(values)
    shapes = ({a.name: tuple(a.feature.shape) for a in audio} | {t.name: t.shape for t in text}
              | {i.name: (dims.get(i.name, i.dim),) for i in image})
    arrays = {
        name: (np.stack([values[i][name] for i in ok]).astype(np.float32, copy=False) if ok
               else np.empty((0, *shapes[name]), dtype=np.float32))
        for name in inputs
    }
    return Featurized(arrays, failures, ok, [names[i] for i in ok])
