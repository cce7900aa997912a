"""Audio feature throughput: audio-seconds per wall-second, jobs=1 and jobs=2, against plain librosa loops.

    python bench/bench_audio.py --json out.json [--files 16] [--slow-files 6] [--features mel,cqt,...]

The clips are the first 30 s of pieces from the music21 corpus rendered with the General-MIDI
SoundFont, written once as 44.1 kHz WAV files (cached in --cache); every measurement decodes them
from disk, as ``genre extract-audio`` does for audio datasets. Each configuration runs a fresh
ProcessPoolExecutor whose workers import the package, limit torch and BLAS to ``cores // jobs`` threads and
warm up the feature (model loading, filter banks); the clock starts once every worker has (a barrier),
so the numbers are steady-state throughput. Fast features pass over the clips ``--rounds`` times (one pass of
16 clips takes well under a second with two workers). The baseline is a plain per-file librosa loop in one process over the same files
(librosa.load at the feature's rate + the librosa transform), for the librosa-expressible features.
VGGish runs with random weights (no weights file ships; the cost is the same).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PIECES = [
    "joplin/maple_leaf_rag.mxl", "bach/bwv66.6.mxl", "beethoven/opus18no1/movement1.mxl",
    "mozart/k155/movement1.mxl", "haydn/opus74no1/movement1.mxl", "schumann_robert/opus41no1/movement2.mxl",
    "ryansMammoth/AcrobatsHornpipe.abc", "chopin/mazurka06-2.krn", "corelli/opus3no1/1grave.xml",
    "handel/rinaldo/Lascia_chio_pianga.mxl", "schubert/Lindenbaum.xml", "verdi/laDonnaEMobile.mxl",
    "weber/concertino_clarinet.mxl", "monteverdi/madrigal.3.1.rntxt", "bach/bwv1.6.mxl", "beethoven/opus59no1/movement1.mxl",
    "mozart/k80/movement1.mxl", "haydn/opus1no1/movement1.mxl", "bach/bwv10.7.mxl", "bach/bwv101.7.mxl",
]  # fmt: skip
FAST = ["mfcc", "mel", "cqt", "harmonic+percussive", "timbre", "rhythm", "logcqt-oramas", "logmel-ru"]
SLOW = ["scattering", "musicnn+musicnn-tags+musicnn-pool", "mfcc-image", "vggish"]
SECONDS = 30.0


def render_clips(cache: pathlib.Path, n: int) -> list[pathlib.Path]:
    import music21
    import soundfile

    from genrecli.audio import load_track_audio
    from genrecli.errors import GenreError

    cache.mkdir(parents=True, exist_ok=True)
    corpus = pathlib.Path(music21.__file__).parent / "corpus"
    paths = []
    for piece in PIECES:
        if len(paths) == n:
            break
        wav = cache / (piece.replace("/", "__").rsplit(".", 1)[0] + ".wav")
        if not wav.is_file():
            try:
                y = load_track_audio(sr=44100, score=corpus / piece, max_seconds=SECONDS)
            except (GenreError, FileNotFoundError) as exc:
                print(f"skip {piece}: {exc}", file=sys.stderr)
                continue
            if len(y) < 10 * 44100:
                continue
            soundfile.write(wav, y, 44100, subtype="FLOAT")
        paths.append(wav)
    return paths


def _duration(path) -> float:
    import soundfile

    return soundfile.info(str(path)).duration


# ------------------------------------------------------------------ workers

_STATE: dict = {}


def _init(names, options, threads, warm_path, device="cpu", barrier=None):
    from genrecli.audio.features import extract_track
    from genrecli.pipeline.workers import _limit_threads

    _limit_threads(threads)  # as the stage's workers do

    _STATE.update(names=names, options=options, device=device, barrier=barrier)
    extract_track({"audio": warm_path}, names, max_seconds=5.0, options=options, device=device)  # load models, filters


def _ours(path):
    from genrecli.audio.features import extract_track

    extract_track({"audio": path}, _STATE["names"], max_seconds=SECONDS, options=_STATE["options"], device=_STATE["device"])
    return path


def _librosa(path, kind):
    import librosa

    if kind == "mel":
        y, sr = librosa.load(path, sr=22050, duration=SECONDS)
        librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=512, n_mels=128))
    elif kind == "cqt":
        y, sr = librosa.load(path, sr=22050, duration=SECONDS)
        librosa.amplitude_to_db(np.abs(librosa.cqt(y, sr=sr, hop_length=512, n_bins=84)))
    elif kind == "hpss":
        y, sr = librosa.load(path, sr=22050, duration=SECONDS)
        h, p = librosa.decompose.hpss(librosa.stft(y, n_fft=2048, hop_length=512))
        basis = librosa.filters.mel(sr=sr, n_fft=2048, n_mels=128)
        librosa.power_to_db(basis @ np.abs(h) ** 2), librosa.power_to_db(basis @ np.abs(p) ** 2)
    elif kind == "mfcc":
        y, sr = librosa.load(path, sr=22050, duration=SECONDS)
        m = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, n_fft=662, hop_length=331, n_mels=40)
        librosa.feature.delta(m, width=9)
    return path


def measure(names, files, jobs, options, cores, device="cpu", rounds=1) -> float:
    threads = max(1, cores // jobs)
    context = multiprocessing.get_context("spawn" if device != "cpu" else None)  # CUDA cannot follow a fork
    barrier = context.Barrier(jobs)
    with concurrent.futures.ProcessPoolExecutor(jobs, initializer=_init, mp_context=context,
                                                initargs=(names, options, threads, str(files[0]), device, barrier)) as pool:
        # One task per worker, each held at the barrier until every worker has taken one: the clock starts
        # only once all workers have warmed up. (A sleep per task let one warm worker take them all while
        # another was still importing, which charged its start-up to the measured wall time.)
        list(pool.map(_wait_for_all, range(jobs)))
        start = time.perf_counter()
        list(pool.map(_ours, [str(f) for f in files] * rounds))
        wall = time.perf_counter() - start
    return rounds * sum(_duration(f) for f in files) / wall


def _pool_mfcc(source):
    from genrecli.audio.features import extract_track

    return extract_track(source, ["mfcc"], max_seconds=SECONDS)


def _wait_for_all(_):
    _STATE["barrier"].wait(timeout=600)


def measure_librosa(kind, files, rounds=1) -> float:
    _librosa(str(files[0]), kind)  # warm-up (numba, filter caches)
    start = time.perf_counter()
    for f in [str(f) for f in files] * rounds:
        _librosa(f, kind)
    return rounds * sum(_duration(f) for f in files) / (time.perf_counter() - start)


def frontend_timing() -> dict:
    """CPU mel spectrogram of 30 s at 22.05 kHz: librosa vs the torch front end (float64 STFT)."""
    import librosa
    import torch

    from genrecli.audio import frontend

    y = np.random.default_rng(0).standard_normal(int(SECONDS * 22050)).astype(np.float32)
    out = {}
    for backend in ("librosa", "torch"):
        frontend.melspectrogram(y, sr=22050, backend=backend)
        start = time.perf_counter()
        for _ in range(5):
            frontend.melspectrogram(y, sr=22050, backend=backend)
        out[backend] = (time.perf_counter() - start) / 5
    out["torch_threads"] = torch.get_num_threads()
    del librosa
    return out


BASELINES = {"mel": "mel", "cqt": "cqt", "harmonic+percussive": "hpss", "mfcc": "mfcc"}


def synthesis_timing(n: int, rounds: int = 2) -> dict:
    """CPU seconds per kern-eras piece, score -> 30 s of audio at 22.05 kHz, four ways, alternated per piece:

    before: music21's stock (copying) MIDI conversion + a fresh TinySoundFont synth (the SoundFont parsed per
    render) + mido's reading of the MIDI, the state before issue 14 (except the mono mix, now 7 ms per piece
    cheaper in every row, so the ratios understate the gain slightly); copying MIDI: the stock conversion + the per-process loaded synth;
    first run: the in-place conversion (``synth._IN_PLACE``) + the loaded synth, what ``score_to_midi`` does
    now; cached: rendering the MIDI from the store's /synth/midi cache (no music21). Also the split of the
    first run into parse (the kern opening, as ``score_to_midi`` parses it) / MIDI / render, with the MIDI
    step timed both ways on two parses of the piece.
    """
    import contextlib
    import io

    from genrecli.audio import synth
    from genrecli.text.symbolic import read_with_music21

    root = ROOT.parent / "shared" / "data" / "kern-eras"
    if not root.is_dir():
        root = pathlib.Path("/work/shared/data/kern-eras")
    pieces = sorted(root.rglob("*.krn"))
    pieces = pieces[:: max(1, len(pieces) // n)][:n]
    cpu = time.process_time

    def convert(path, in_place, converter="music21"):
        default, synth._IN_PLACE = synth._IN_PLACE, in_place
        try:
            return synth.score_to_midi(path=path, max_seconds=SECONDS, converter=converter)
        finally:
            synth._IN_PLACE = default

    @contextlib.contextmanager
    def mido_reading():  # every MIDI file read by mido, as before genrecli.audio.smf
        from genrecli.audio import smf

        def irregular(data):
            raise smf.Irregular("the bench's before row")

        default, smf.read_merged = smf.read_merged, irregular
        try:
            yield
        finally:
            smf.read_merged = default

    def parse(path):
        return synth._parse_kern_opening(path, None, SECONDS) or read_with_music21(path, None, "humdrum")

    totals = dict.fromkeys(["before", "copying_midi", "first_run", "native", "cached", "parse", "midi", "midi_copying", "render"], 0.0)
    for in_place in (False, True):  # imports, warm-up
        synth.render_midi(convert(pieces[0], in_place), sr=22050)
    with contextlib.redirect_stderr(io.StringIO()):
        for _ in range(rounds):
            for path in pieces:
                t = cpu()
                synth._synth_for.cache_clear()
                with mido_reading():
                    synth.render_midi(convert(path, False), sr=22050)
                totals["before"] += cpu() - t
                t = cpu()
                synth.render_midi(convert(path, False), sr=22050)
                totals["copying_midi"] += cpu() - t
                t = cpu()
                midi = convert(path, True)
                synth.render_midi(midi, sr=22050)
                totals["first_run"] += cpu() - t
                t = cpu()
                synth.render_midi(convert(path, True, "auto"), sr=22050)  # native kern converter, music21 where it declines
                totals["native"] += cpu() - t
                t = cpu()
                synth.render_midi(midi, sr=22050)
                totals["cached"] += cpu() - t
                t0 = cpu()
                score = parse(path)
                t1 = cpu()
                midi = synth._midi_bytes(score, SECONDS, in_place=True)
                t2 = cpu()
                synth.render_midi(midi, sr=22050)
                t3 = cpu()
                score = parse(path)  # the in-place conversion changed the first
                t4 = cpu()
                synth._midi_bytes(score, SECONDS)
                totals["parse"] += t1 - t0
                totals["midi"] += t2 - t1
                totals["render"] += t3 - t2
                totals["midi_copying"] += cpu() - t4
    per = {k: v / (rounds * len(pieces)) for k, v in totals.items()}
    return {"pieces": len(pieces), "rounds": rounds, "cpu_seconds_per_piece": per,
            "ratio_copying_midi": per["before"] / per["copying_midi"], "ratio_first_run": per["before"] / per["first_run"],
            "ratio_native": per["before"] / per["native"],
            "ratio_cached": per["before"] / per["cached"], "ratio_midi_in_place": per["midi_copying"] / per["midi"]}


def end_to_end_wall(files, jobs: int) -> float:
    """Wall seconds of extract_track(mfcc) over ``files`` in the stage's worker pool, start-up included."""
    from genrecli import store
    from genrecli.pipeline.features import run_per_track

    items = {i: {"audio": str(f)} for i, f in enumerate(files)}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_per_track(_pool_mfcc, items, checkpoint=store.RowCheckpoint(tmp, "x"), jobs=jobs,
                      description="mfcc", ids=[str(f) for f in files])
        return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    parser.add_argument("--files", type=int, default=16, help="clips for the fast features")
    parser.add_argument("--slow-files", type=int, default=6, help="clips for the neural/scattering features")
    parser.add_argument("--features", default=None, help="comma-separated groups (default: all)")
    parser.add_argument("--cache", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "genre-bench-audio")
    parser.add_argument("--jobs", default="1,2")
    parser.add_argument("--rounds", type=int, default=3,
                        help="passes over the clips per fast-feature measurement (a pass of 16 clips takes < 0.3 s)")
    parser.add_argument("--device", default="cpu", help="where neural encoders and torch front ends run")
    parser.add_argument("--synthesis", type=int, default=40,
                        help="kern-eras pieces for the synthesis case, evenly spaced over the corpus (0: none); 10 are "
                             "too few for the corpus mean: a piece on the music21 path costs as much as six native ones")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    files = render_clips(args.cache, max(args.files, args.slow_files))
    groups = args.features.split(",") if args.features else FAST + SLOW
    job_counts = [int(j) for j in args.jobs.split(",")]
    options = {}
    if any("vggish" in g for g in groups):
        weights = args.cache / "vggish-random.pth"
        if not weights.is_file():
            import torch

            from genrecli.audio.vggish import VGGish

            torch.manual_seed(0)
            torch.save(VGGish().state_dict(), weights)
        options["vggish"] = {"weights": str(weights)}

    rows = []
    for group in groups:
        names = group.split("+")
        subset = files[: args.slow_files] if group in SLOW else files[: args.files]
        rounds = 1 if group in SLOW else args.rounds
        row = {"feature": group, "files": len(subset), "rounds": rounds,
               "audio_seconds": round(sum(_duration(f) for f in subset), 1)}
        for jobs in job_counts:
            row[f"jobs{jobs}"] = round(measure(names, subset, jobs, options, cores, args.device, rounds), 1)
        if group in BASELINES:
            row["librosa_loop"] = round(measure_librosa(BASELINES[group], subset, rounds), 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    wall = {}
    if any(g == "mfcc" for g in groups):
        for jobs in job_counts:
            wall[jobs] = end_to_end_wall(files[: args.files], jobs)
    synthesis = synthesis_timing(args.synthesis) if args.synthesis else None
    result = {"machine": {"cpus": cores, "python": platform.python_version(), "load_average": os.getloadavg()},
              "clip_seconds": SECONDS, "unit": "audio seconds per wall second", "features": rows,
              "cpu_mel_frontend_seconds": frontend_timing(), "mfcc_end_to_end_wall_seconds": wall,
              "synthesis": synthesis}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    most = max(job_counts)
    header = ("| feature | files x rounds | " + " | ".join(f"jobs={j}" for j in job_counts)
              + f" | librosa loop (1 proc) | jobs={most} / librosa |")
    print(header)
    print("|" + "---|" * (4 + len(job_counts)))
    for row in rows:
        cells = [row["feature"], f"{row['files']} x {row['rounds']}"] + [f"{row[f'jobs{j}']:.1f}" for j in job_counts]
        if "librosa_loop" in row:
            cells += [f"{row['librosa_loop']:.1f}", f"{row[f'jobs{most}'] / row['librosa_loop']:.2f}"]
        else:
            cells += ["–", "–"]
        print("| " + " | ".join(cells) + " |")
    fe = result["cpu_mel_frontend_seconds"]
    print(f"\nCPU mel spectrogram, 30 s @ 22.05 kHz: librosa {fe['librosa'] * 1000:.0f} ms, "
          f"torch front end {fe['torch'] * 1000:.0f} ms ({fe['torch_threads']} threads)")
    for jobs, seconds in wall.items():
        print(f"mfcc end to end, {args.files} files in the stage's worker pool, --jobs {jobs}: {seconds:.1f} s wall "
              "(spawn start-up included)")
    if synthesis:
        per = synthesis["cpu_seconds_per_piece"]
        print(f"\nSynthesis, score -> 30 s at 22.05 kHz, CPU s per piece ({synthesis['pieces']} kern-eras pieces x "
              f"{synthesis['rounds']} rounds, alternated):\n")
        print("| path | s per piece | speed-up |")
        print("|---|---:|---:|")
        print(f"| before (music21 copying MIDI + fresh synth) | {per['before']:.3f} | 1.0 |")
        print(f"| copying MIDI (music21 copying MIDI + loaded synth) | {per['copying_midi']:.3f} | "
              f"{synthesis['ratio_copying_midi']:.2f} |")
        print(f"| first run (in-place MIDI + loaded synth) | {per['first_run']:.3f} | {synthesis['ratio_first_run']:.2f} |")
        print(f"| native kern converter first (converter=auto, music21 where it declines) + loaded synth | "
              f"{per['native']:.3f} | {synthesis['ratio_native']:.2f} |")
        print(f"| cached MIDI (render only) | {per['cached']:.3f} | {synthesis['ratio_cached']:.1f} |")
        print(f"\nfirst run split: parse {per['parse']:.3f} s, MIDI {per['midi']:.3f} s (copying: {per['midi_copying']:.3f} s, "
              f"{synthesis['ratio_midi_in_place']:.2f}x), render {per['render']:.3f} s")
    print(f"load average during the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
