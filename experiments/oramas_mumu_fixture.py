"""The Oramas et al. multi-label models on the MuMu fixture, end to end through the CLI (issue 10's figures).

    python experiments/oramas_mumu_fixture.py --home DIR [--artists 40] [--seeds 3]

The fixture (``tests/corpus_fixtures.make_mumu``) is synthetic: albums of 2 tracks with PNG covers drawn
from the album number, reviews that say only "review of album k", and genres from a 4-branch taxonomy
cycling with k; its 0.05 s clips are rewritten as 2 s tones whose pitch follows the album's first genre
branch (plus a small per-track offset), so the audio carries label information and the text and the
covers carry little. The figures measure that the models run and learn what signal there is, not
anything about MuMu itself. Training uses every model's defaults (at most 100 epochs, early stopping on
the validation part of the standard artist-disjoint split); ``min_count=3`` keeps the genres on at least
3 albums.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from corpus_fixtures import make_mumu, write_audio  # noqa: E402

MODELS = {  # model -> inputs
    "oramas-audio": "audio/logcqt-oramas",
    "oramas-text": "text/tfidf",
    "oramas-image": "image/efficientnet-lite0",
    "oramas-mm-audio": "audio/logcqt-oramas,image/efficientnet-lite0",
    "oramas-fusion": "audio/logcqt-oramas,text/tfidf,image/efficientnet-lite0",
}


def genre(*args: str, home: pathlib.Path, ok=(0,), show: bool = False) -> None:
    """Run ``genre ARGS`` on ``home``, print the command with its wall time (and its output with ``show``)."""
    env = {**os.environ, "GENRE_DATA_HOME": str(home)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "genrecli", *args], env=env, text=True, capture_output=not show)
    print(f"$ genre {' '.join(args)}  [{time.perf_counter() - started:.0f} s, rc {proc.returncode}]", flush=True)
    if proc.returncode not in ok:
        sys.exit(f"failed: {(proc.stderr or '').strip()[-2000:]}")


def build_fixture(root: pathlib.Path, n_artists: int) -> pathlib.Path:
    root = make_mumu(root, n_artists=n_artists, albums_per_artist=2)
    for i, path in enumerate(sorted((root / "audio").glob("*.mp3"))):
        album = int(path.name[2:8])
        write_audio(path, seconds=2.0, freq=150 * (1 + album % 4) + 3 * (i % 7))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=pathlib.Path, required=True, help="a fresh data home (the fixture goes beside it)")
    parser.add_argument("--artists", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    home = args.home.resolve()
    root = build_fixture(home.parent / f"{home.name}-mumu-fixture", args.artists)
    genre("ingest", "mumu", "--root", str(root), "-o", "min_count=3", home=home)
    genre("extract-audio", "--data", "mumu", "--features", "logcqt-oramas", home=home, ok=(0, 2))  # albums without audio
    genre("extract-text", "--data", "mumu", "--encoder", "tfidf", home=home)
    genre("extract-image", "--data", "mumu", home=home, ok=(0, 2))  # albums without a cover
    for model, inputs in MODELS.items():
        for target in ("logistic", "cosine"):
            genre("train", "--data", "mumu", "--model", model, "--inputs", inputs, "-o", f"target={target}",
                  "--seeds", str(args.seeds), home=home)
    genre("evaluate", "--data", "mumu", home=home)
    genre("report", "--data", "mumu", home=home, show=True)


if __name__ == "__main__":
    main()
