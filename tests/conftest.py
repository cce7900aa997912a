import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
KERN_ERAS = SHARED / "data" / "kern-eras"

KERN_TEMPLATE = """!!!COM: {composer}
!!!OTL: Piece {n}
**kern\t**kern
*clefF4\t*clefG2
*M4/4\t*M4/4
=1\t=1
4C\t4c
4E\t4e
4G\t4g
4c\t4cc
==\t==
*-\t*-
"""


def write_kern(path: Path, composer: str = "Somebody", n: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(KERN_TEMPLATE.format(composer=composer, n=n))
    return path


def write_wav(path: Path, *, seconds=1.0, sr=22050, freq=440.0, subtype=None) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, subtype=subtype)
    return path


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("GENRE_DATA_HOME", str(home))
    return home


def one_line(excinfo, *needles):
    """Assert that a raised error's message is one clean line containing every needle."""
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message, message
    for needle in needles:
        assert needle in message, message


# Checks of scikit-learn's estimator suite that the torch-based estimators cannot pass, and why.
FLOAT32_INVARIANCE_FAILURES = {
    "check_methods_subset_invariance": "float32 torch GEMMs round differently for different batch shapes "
                                       "(differences ~1e-6 relative; the check demands 1e-7)",
    "check_methods_sample_order_invariance": "same float32 rounding: a permuted batch changes the BLAS "
                                             "summation order (fails intermittently at 1e-7)",
}


def invoke_cli(*args) -> int:
    """``genre ARGS`` in this process; its exit code (its output goes to the current sys.stdout / sys.stderr)."""
    import sys

    from genrecli import cli

    argv = sys.argv
    sys.argv = ["genre", *map(str, args)]
    try:
        cli.main()
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv


def run_cli(capsys, *args):
    """Used as ``from conftest import run_cli``. ``genre ARGS`` in this process: (exit code, stdout, stderr)."""
    code = invoke_cli(*args)
    out = capsys.readouterr()
    return code, out.out, out.err
