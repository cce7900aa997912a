"""Start-up stays light (issue 14): `genre --help` and the listings import no heavy package, build no model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "librosa", "music21", "h5py", "kymatio", "sklearn", "scipy", "numba", "transformers")
_MARK = "@@modules@@"
# Runs the `genre` entry point, then prints which heavy packages ended up in sys.modules.
_PROBE = f"""
import json, sys
sys.argv = ["genre", *sys.argv[1:]]
from genrecli.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print({_MARK!r} + json.dumps({{"code": code, "heavy": heavy}}))
"""


def _probe(*args: str, code: str = _PROBE) -> tuple[dict, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    output, _, result = proc.stdout.rpartition(_MARK)
    return json.loads(result), output


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (("--help",), ()),
        (("list", "features"), ()),
        (("list", "kernels"), ()),
        (("list", "datasets"), ("h5py",)),  # the corpus loaders import the manifest's store at import
        (("list", "encoders"), ()),
        (("list", "models"), ()),  # the registry's specs (genrecli.models.spec), not the models' modules
    ],
)
def test_cli_start_up_imports_nothing_heavy(args, allowed):
    result, output = _probe(*args)
    assert result["code"] in (0, None)
    assert output.strip()
    assert set(result["heavy"]) <= set(allowed), f"genre {' '.join(args)} imported {result['heavy']}"


def test_import_genrecli_audio_is_light():
    code = (f"import json, sys; import genrecli.audio, genrecli.audio.features; "
            f"print({_MARK!r} + json.dumps({{'heavy': sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))}}))")
    result, _ = _probe(code=code)
    assert result["heavy"] == []


def test_feature_listing_matches_the_built_features():
    """The static listing (what `genre list features` prints without building) agrees with every built feature."""
    from genrecli.audio.features import _BUILDERS, AUDIO_FEATURES, FEATURE_LISTING, describe_features

    assert set(FEATURE_LISTING) <= set(_BUILDERS)
    for name, (shape, sample_rate, description) in FEATURE_LISTING.items():
        feature = AUDIO_FEATURES[name]
        assert (tuple(feature.shape), feature.sample_rate, feature.description) == (shape, sample_rate, description)
    built = [f"audio/{f.name:14s} shape {tuple(f.shape)} @ {f.sample_rate} Hz  {f.description}"
             for f in AUDIO_FEATURES.values()]
    assert describe_features() == built


def test_lazy_registry_behaves_as_a_mapping():
    from genrecli.audio import AUDIO_FEATURES, AudioFeature, configure_feature

    assert "mfcc" in AUDIO_FEATURES and "nope" not in AUDIO_FEATURES
    assert list(AUDIO_FEATURES)[0] == "mfcc" and len(AUDIO_FEATURES) == len(list(AUDIO_FEATURES))
    assert isinstance(AUDIO_FEATURES["mel"], AudioFeature)
    assert AUDIO_FEATURES["mel"] is AUDIO_FEATURES["mel"] is configure_feature("mel")
    with pytest.raises(KeyError):
        AUDIO_FEATURES["nope"]
