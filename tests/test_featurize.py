"""New files -> a run's exact features (genrecli.pipeline.featurize), against the extract stages."""

import json
import pathlib
import shutil

import h5py
import numpy as np
import pytest

from conftest import one_line, write_wav
from genrecli import store
from genrecli.errors import UsageError
from genrecli.layout import DatasetPaths
from genrecli.pipeline.audio import extract_audio
from genrecli.pipeline.featurize import (
    decode_strings,
    encode_corpus,
    encode_strings,
    encode_texts,
    feature_identity,
    feature_state,
    featurize_files,
    identity_digest,
)
from genrecli.pipeline.features import read_feature
from genrecli.pipeline.ingest import ingest
from genrecli.pipeline.text import extract_text

KERN = """!!!COM: Composer {n}
!!!OTL: Piece {n}
**kern\t**kern
*clefF4\t*clefG2
*M4/4\t*M4/4
=1\t=1
{bass}\t{top}
4G\t4g
4E\t4ee
4c\t4cc
==\t==
*-\t*-
"""
NOTES = [("4C", "4c"), ("4D", "4d#"), ("4F", "4f"), ("4A", "4b-")]  # the first chord differs per piece


def _kern(path, n):
    bass, top = NOTES[n]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(KERN.format(n=n, bass=bass, top=top))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder corpus of 2 kern scores and one WAV, with mfcc, minilm and tfidf extracted by the stages."""
    base = tmp_path_factory.mktemp("featurize")
    root, home = base / "root", base / "home"
    scores = [_kern(root / label / f"piece{n}.krn", n) for n, label in enumerate("ab")]
    wav = write_wav(root / "a" / "tone.wav", seconds=1.0, freq=330.0)
    ingest("folder", root=root, name="one", splits=(), data_home=home)
    extract_audio("one", features=("mfcc",), max_seconds=5.0, data_home=home)
    extract_text("one", encoder="minilm", data_home=home)
    extract_text("one", encoder="tfidf", data_home=home)
    paths = DatasetPaths.of("one", home)
    from genrecli.manifest import read_manifest

    ids = read_manifest(paths.manifest).ids
    groups = {g: read_feature(paths, g) for g in ("audio/mfcc", "text/minilm", "text/tfidf")}
    return {"base": base, "home": home, "paths": paths, "scores": scores, "wav": wav, "ids": ids, "groups": groups}


def _row(corpus, group, track_id):
    data, valid, _ = corpus["groups"][group]
    row = corpus["ids"].index(track_id)
    assert valid[row]
    return data[row]


def _params(corpus, *groups):
    return {g: corpus["groups"][g][2] for g in groups}


# text/minilm is computed in bfloat16 on an AMX CPU (extract-text's default runtime 'auto'; fp32 elsewhere): a text
# encoded alone (predict) and in a batch padded to another text's length (the stage) agree to bf16 rounding (2 units in the last place: 2 x 2^-7
# relative), not to 1e-5
BF16_TOL = {"atol": 1e-2, "rtol": 1.6e-2}


def _tol(group):
    return BF16_TOL if group == "text/minilm" else {"atol": 1e-5, "rtol": 0}


def test_a_kern_file_gives_the_stage_features_for_audio_and_text(corpus):
    inputs = _params(corpus, "audio/mfcc", "text/minilm", "text/tfidf")
    state = {"text/tfidf": feature_state(corpus["paths"], "text/tfidf")}
    score = corpus["scores"][1]
    result = featurize_files([score], inputs, state=state)
    features, failures = result
    assert failures == {} and result.ok == [0] and result.files == [str(score)]
    for group in inputs:
        assert features[group].shape == (1, *corpus["groups"][group][0].shape[1:]) and features[group].dtype == np.float32
        np.testing.assert_allclose(features[group][0], _row(corpus, group, "b/piece1"), **_tol(group))
    # the score's audio went through the score -> MIDI -> synthesis path: it is not silent, and differs per score
    other = featurize_files([corpus["scores"][0]], {"audio/mfcc": inputs["audio/mfcc"]}).inputs["audio/mfcc"][0]
    assert not np.allclose(other, features["audio/mfcc"][0], atol=1e-3)


def test_wav_and_midi_give_audio_features_and_a_clear_error_for_text_inputs(corpus, tmp_path):
    from genrecli.audio.features import extract_track
    from genrecli.audio.synth import score_to_midi

    mfcc = _params(corpus, "audio/mfcc")
    wav = corpus["wav"]
    features, failures = featurize_files([wav], mfcc)
    assert failures == {}
    np.testing.assert_allclose(features["audio/mfcc"][0], _row(corpus, "audio/mfcc", "a/tone"), atol=1e-5, rtol=0)

    midi = tmp_path / "piece.mid"
    midi.write_bytes(score_to_midi(path=corpus["scores"][1], max_seconds=5.0))
    expected = extract_track({"midi": str(midi)}, ["mfcc"], max_seconds=5.0)["mfcc"]
    np.testing.assert_allclose(featurize_files([midi], mfcc).inputs["audio/mfcc"][0], expected, atol=1e-6)

    both = _params(corpus, "audio/mfcc", "text/minilm")
    result = featurize_files([wav, midi, corpus["scores"][0]], both)
    assert result.ok == [2] and result.inputs["audio/mfcc"].shape == (1, 80) and result.inputs["text/minilm"].shape == (1, 384)
    assert result.failures[str(wav)] == (
        f"{wav}: the run needs text/minilm, which an audio file does not have; "
        "give the score or lyrics (a .krn/.musicxml/.abc/.txt)"
    )
    assert result.failures[str(midi)].startswith(f"{midi}: the run needs text/minilm, which a MIDI file does not have")


def test_lyrics_give_text_and_a_clear_error_for_audio_inputs(corpus, tmp_path):
    lyrics = tmp_path / "song.txt"
    lyrics.write_text("down by the salley gardens my love and I did meet\n")
    minilm = _params(corpus, "text/minilm")
    from genrecli.text.encoders import make_encoder, resolve_runtime

    runtime = resolve_runtime("auto", "cpu")  # the stage's default: bf16 on an AMX CPU, else fp32
    assert minilm["text/minilm"]["encoder"].get("runtime", "fp32") == runtime  # recorded unless fp32
    vector = featurize_files([lyrics], minilm).inputs["text/minilm"][0]
    np.testing.assert_allclose(vector, make_encoder("minilm", runtime=runtime).encode([lyrics.read_text()])[0], atol=1e-5)
    # params without a runtime (stores written before runtimes existed) are the fp32 reference
    old = {"text/minilm": {**minilm["text/minilm"], "encoder": {k: v for k, v in minilm["text/minilm"]["encoder"].items()
                                                                if k != "runtime"}}}
    fp32 = featurize_files([lyrics], old).inputs["text/minilm"][0]
    np.testing.assert_allclose(fp32, make_encoder("minilm").encode([lyrics.read_text()])[0], atol=1e-6, rtol=0)
    if runtime == "bf16":
        assert not np.array_equal(fp32, vector)
    from genrecli.text.int8 import available as int8_available

    if int8_available():  # a run whose text features were extracted with --runtime int8 predicts with int8
        encoder = {**old["text/minilm"]["encoder"], "runtime": "int8"}
        as_int8 = featurize_files([lyrics], {"text/minilm": {**old["text/minilm"], "encoder": encoder}})
        np.testing.assert_allclose(as_int8.inputs["text/minilm"][0],
                                   make_encoder("minilm", runtime="int8").encode([lyrics.read_text()])[0], atol=1e-6)
        assert not np.array_equal(as_int8.inputs["text/minilm"][0], fp32)
    failures = featurize_files([lyrics], _params(corpus, "audio/mfcc")).failures
    assert list(failures) == [str(lyrics)] and "the run needs audio/mfcc, which a lyrics file does not have" in failures[str(lyrics)]


def test_bad_files_give_one_line_errors_naming_them_and_the_others_go_on(corpus, tmp_path):
    unsupported = tmp_path / "notes.docx"
    unsupported.write_text("hello")
    missing = tmp_path / "nowhere.krn"
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF\x00\x00junk" * 10)
    bad_score = tmp_path / "bad.krn"
    bad_score.write_text("**kern\n4c\t4d\n*-\n")  # ragged spines
    score = corpus["scores"][1]
    files = [unsupported, missing, score, corrupt, bad_score]
    result = featurize_files(files, _params(corpus, "audio/mfcc", "text/minilm"))
    assert result.ok == [2] and result.files == [str(score)]
    assert set(result.failures) == {str(f) for f in (unsupported, missing, corrupt, bad_score)}
    for path, message in result.failures.items():
        assert "\n" not in message and message.startswith(path + ": "), message
    assert "unsupported file type .docx" in result.failures[str(unsupported)]
    assert result.failures[str(missing)] == f"{missing}: no such file"
    np.testing.assert_allclose(result.inputs["text/minilm"][0], _row(corpus, "text/minilm", "b/piece1"), **BF16_TOL)
    # nothing worked: empty arrays of the right shape
    empty = featurize_files([missing], _params(corpus, "audio/mfcc", "text/minilm"))
    assert empty.ok == [] and empty.inputs["audio/mfcc"].shape == (0, 80) and empty.inputs["text/minilm"].shape == (0, 384)


def test_tfidf_state_is_stored_round_trips_and_is_required(corpus, tmp_path):
    from safetensors.numpy import load_file, save_file

    state = feature_state(corpus["paths"], "text/tfidf")
    assert set(state) == {"vocabulary", "idf"} and state["vocabulary"].dtype == np.uint8
    terms = decode_strings(state["vocabulary"])
    assert len(terms) == len(state["idf"]) == corpus["groups"]["text/tfidf"][0].shape[1]
    with h5py.File(corpus["paths"].features(), "r") as h5:
        assert store.read_strings(h5["text/tfidf/state/vocabulary"]) == terms
    assert "4d#" in terms and "!!!COM:" not in terms  # kern tokens kept whole, metadata stripped
    assert feature_state(corpus["paths"], "text/minilm") == {} and feature_state(corpus["paths"], "audio/mfcc") == {}
    odd = ["4c#", "é", "a\"b", "\\L", "日本"]
    assert decode_strings(encode_strings(odd)) == odd and json.loads(encode_strings(odd).tobytes()) == odd

    save_file(state, tmp_path / "state.safetensors")  # numeric arrays only: what a model artifact holds
    loaded = load_file(tmp_path / "state.safetensors")
    params = _params(corpus, "text/tfidf")
    result = featurize_files(corpus["scores"], params, state={"text/tfidf": loaded})
    for k, tid in enumerate(("a/piece0", "b/piece1")):
        np.testing.assert_allclose(result.inputs["text/tfidf"][k], _row(corpus, "text/tfidf", tid), atol=1e-6, rtol=0)
    with h5py.File(corpus["paths"].features(), "r") as h5:
        source = store.read_strings(h5["text/source/text"])
    texts = [source[corpus["ids"].index(t)] for t in ("a/piece0", "b/piece1")]
    np.testing.assert_allclose(encode_texts(texts, "text/tfidf", params["text/tfidf"], state=loaded),
                               result.inputs["text/tfidf"], atol=1e-7)
    with pytest.raises(UsageError) as err:
        featurize_files(corpus["scores"][:1], params)
    one_line(err, "text/tfidf", "fitted state")


def test_changed_or_old_params_are_refused_not_silently_approximated(corpus):
    mfcc = dict(corpus["groups"]["audio/mfcc"][2])
    with pytest.raises(UsageError) as err:
        featurize_files(corpus["scores"][:1], {"audio/mfcc": {**mfcc, "n_mfcc": 13}})
    one_line(err, "audio/mfcc", "cannot reproduce", "n_mfcc")
    with pytest.raises(UsageError) as err:
        featurize_files(corpus["scores"][:1], {"audio/mfcc": {k: v for k, v in mfcc.items() if k != "options"}})
    one_line(err, "audio/mfcc", "older genre")
    minilm = dict(corpus["groups"]["text/minilm"][2])
    with pytest.raises(UsageError) as err:
        featurize_files(corpus["scores"][:1], {"text/minilm": {**minilm, "encoder": {**minilm["encoder"], "weights_sha256": "0" * 64}}})
    one_line(err, "text/minilm", "weights_sha256")
    with pytest.raises(UsageError) as err:
        feature_identity("text/minilm", {"encoder": minilm["encoder"], "source": "abc"})
    one_line(err, "text/minilm", "conversion")


def test_feature_identity_equal_across_corpora_with_the_same_settings(corpus):
    base, home = corpus["base"], corpus["home"]
    root = base / "root2"
    shutil.copy(corpus["wav"], (root / "x").mkdir(parents=True) or root / "x" / "other.wav")
    (root / "y").mkdir()
    (root / "y" / "song.txt").write_text("a lyric about the sea: 4G 4g =1 4c 4cc\n")  # some tokens of corpus one
    ingest("folder", root=root, name="two", splits=(), data_home=home)
    assert extract_audio("two", features=("mfcc",), max_seconds=5.0, data_home=home).written == ["audio/mfcc"]
    extract_text("two", encoder="minilm", data_home=home)
    extract_text("two", encoder="tfidf", data_home=home)
    two = DatasetPaths.of("two", home)
    p1 = {g: p for g, (_, _, p) in corpus["groups"].items()}
    p2 = {g: read_feature(two, g)[2] for g in p1}
    for group in ("audio/mfcc", "text/minilm"):
        assert p1[group] != p2[group]  # different corpora ...
        assert feature_identity(group, p1[group]) == feature_identity(group, p2[group])  # ... the same feature
        assert identity_digest(group, p1[group]) == identity_digest(group, p2[group])
    assert "manifest" not in feature_identity("audio/mfcc", p2["audio/mfcc"])
    assert feature_identity("text/minilm", p2["text/minilm"])["conversion"]["keep_metadata"] is False
    # tfidf columns are each corpus's own vocabulary: never comparable across corpora; the run's state
    # applied to the other corpus's converted texts is
    assert feature_identity("text/tfidf", p1["text/tfidf"]) != feature_identity("text/tfidf", p2["text/tfidf"])
    state = feature_state(corpus["paths"], "text/tfidf")
    data, valid = encode_corpus(two, "text/tfidf", p1["text/tfidf"], state=state)
    (song,) = np.flatnonzero(valid)
    assert data.shape == (2, len(state["idf"])) and np.isnan(data[~valid]).all()
    expected = featurize_files([root / "y" / "song.txt"], {"text/tfidf": p1["text/tfidf"]}, state={"text/tfidf": state})
    np.testing.assert_array_equal(data[song], expected.inputs["text/tfidf"][0])
    assert np.count_nonzero(data[song]) == 5  # its 5 kern tokens, in corpus one's columns
    with h5py.File(DatasetPaths.of("two", home).features(), "r") as h5:
        source_two = store.group_params(h5["text/source"])
    with h5py.File(corpus["paths"].features(), "r") as h5:
        source_one = store.group_params(h5["text/source"])
    assert feature_identity("text/source", source_one) == feature_identity("text/source", source_two)

    # the same settings again: up to date; another setting: recomputed, and another identity
    assert extract_audio("two", features=("mfcc",), max_seconds=5.0, data_home=home).up_to_date == ["audio/mfcc"]
    assert extract_audio("two", features=("mfcc",), max_seconds=2.0, data_home=home).written == ["audio/mfcc"]
    assert feature_identity("audio/mfcc", read_feature(two, "audio/mfcc")[2]) != feature_identity("audio/mfcc", p1["audio/mfcc"])
    assert extract_text("two", encoder="minilm", keep_metadata=True, data_home=home).written == ["text/minilm"]
    kept = read_feature(two, "text/minilm")[2]
    assert feature_identity("text/minilm", kept) != feature_identity("text/minilm", p1["text/minilm"])
    assert extract_text("two", encoder="minilm", pooling="mean", data_home=home).written == ["text/minilm"]
    mean = read_feature(two, "text/minilm")[2]
    assert feature_identity("text/minilm", mean) != feature_identity("text/minilm", p1["text/minilm"])


def test_score_midi_is_cached_in_the_store_keyed_on_content_and_reused(corpus, tmp_path):
    """extract-audio keeps each score's MIDI in /synth/midi: another feature or a shorter opening skips music21."""
    from genrecli.audio.features import extract_track
    from genrecli.manifest import read_manifest
    from genrecli.pipeline.audio import MIDI_GROUP, MIDI_OUT_KEY, MidiCache

    home = tmp_path / "home"
    shutil.copytree(corpus["home"], home)
    paths = DatasetPaths.of("one", home)
    manifest = read_manifest(paths.manifest)
    rows = [corpus["ids"].index(f"{label}/piece{n}") for n, label in enumerate("ab")]
    with store.open_read(paths.features()) as h5:
        keys = store.read_strings(h5[MIDI_GROUP]["key"])
        assert "params_hash" in h5[MIDI_GROUP].attrs  # listed with its parameters by `genre info`
    assert all(keys[r] for r in rows) and keys[corpus["ids"].index("a/tone")] == ""

    cache = MidiCache(paths.features(), tmp_path / "staging", manifest)
    source = manifest.tracks[rows[0]].source()
    ready = cache.prepare(rows[0], source, 5.0)
    assert isinstance(ready["midi"], bytes) and MIDI_OUT_KEY not in ready  # no music21 in the worker
    assert isinstance(cache.prepare(rows[0], source, 2.0)["midi"], bytes)  # a shorter opening: reused
    assert MIDI_OUT_KEY in cache.prepare(rows[0], source, 10.0)  # a longer one: converted again
    edited = tmp_path / "edited.krn"
    edited.write_text(pathlib.Path(source["score"]).read_text().replace("4G\t4g", "4A\t4a"))
    assert MIDI_OUT_KEY in cache.prepare(rows[0], {**source, "score": str(edited)}, 5.0)  # new content: new key

    # a second run with another feature renders the cached MIDI: the same values as converting the score afresh
    extract_audio("one", features=("timbre",), max_seconds=5.0, data_home=home)
    data, valid, _ = read_feature(paths, "audio/timbre")
    for row in rows:
        expected = extract_track(manifest.tracks[row].source(), ["timbre"], max_seconds=5.0)["timbre"]
        np.testing.assert_array_equal(data[row], expected)
    # and a shorter opening rendered from the 5 s MIDI equals the one converted for it
    short = extract_track({**manifest.tracks[rows[1]].source(), "midi": cache.prepare(rows[1], manifest.tracks[rows[1]].source(), 5.0)["midi"]},
                          ["mfcc"], max_seconds=2.0)["mfcc"]
    np.testing.assert_array_equal(short, extract_track(manifest.tracks[rows[1]].source(), ["mfcc"], max_seconds=2.0)["mfcc"])
