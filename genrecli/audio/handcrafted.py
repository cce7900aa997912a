"""Hand-crafted audio representations of Ng et al., Oramas et al. and Ru et al.

Time-frequency features are stored as fixed-size (bands, frames) patches so that CNNs can read them:
the middle ``frames`` frames of the track (the whole track is centred and padded with its floor
value when shorter). Each is computed on the middle excerpt of the audio that the patch covers plus
a margin of one second on each side, cut on the full track's frame grid, so the patch equals the
middle of the full-track transform (the top_db floor is relative to the excerpt's peak) at a third
of the cost for 30 s tracks. Levels are decibels relative to 1.0
(``power_to_db``/``amplitude_to_db`` with ``ref=1.0, top_db=80``), so loudness is kept.

Vectors: ``timbre`` (Tzanetakis & Cook's timbral texture set) and ``rhythm`` (Lidy & Rauber's
Rhythm Histogram + Statistical Spectrum Descriptors on 24 Bark bands).
"""

from __future__ import annotations

import functools

import numpy as np

from genrecli.audio.base import AudioFeature, middle_excerpt, middle_patch, require_sound

MARGIN_SECONDS = 1.0


def _excerpt(y, sr, n_frames, hop):
    """Audio covering the middle patch plus margins, aligned to the full track's frame grid.

    Returns ``(segment, first)``: frames ``first .. first + n_frames`` of the centred transform of
    ``segment`` are the middle ``n_frames`` frames of the full track's transform (up to edge effects
    beyond the margin). ``first`` is None when the track is too short to cut: the caller then takes
    the middle patch of the whole transform.
    """
    margin = int(np.ceil(MARGIN_SECONDS * sr / hop))
    total = 1 + len(y) // hop
    if total <= n_frames + 2 * margin:
        return y, None
    start = (total - n_frames) // 2  # the frame middle_patch would start at
    return y[(start - margin) * hop : (start + n_frames + margin) * hop], margin


def _patch(rep, first, n_frames):
    if first is None:
        return middle_patch(rep, n_frames)
    return np.ascontiguousarray(rep[:, first : first + n_frames], dtype=np.float32)


# ----------------------------------------------------------------------------- spectrogram patches


def mel_patch(y, *, sr, n_fft, hop, n_mels, n_frames, fmin=0.0, fmax=None, whole=False, device="cpu"):
    """Log-mel (dB) patch, shape (n_mels, n_frames)."""
    from genrecli.audio.frontend import melspectrogram
    import librosa

    y = require_sound(y, sr)
    segment, first = (y, None) if whole else _excerpt(y, sr, n_frames, hop)
    S = melspectrogram(segment, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=fmin, fmax=fmax,
                       device=device)
    return _patch(librosa.power_to_db(S, ref=1.0, top_db=80.0), first, n_frames)


def cqt_patch(y, *, sr, hop, n_bins, bins_per_octave, fmin, n_frames):
    """Log-amplitude (dB) constant-Q patch, shape (n_bins, n_frames)."""
    import librosa

    y = require_sound(y, sr)
    segment, first = _excerpt(y, sr, n_frames, hop)
    C = np.abs(librosa.cqt(segment, sr=sr, hop_length=hop, fmin=fmin, n_bins=n_bins,
                           bins_per_octave=bins_per_octave))
    return _patch(librosa.amplitude_to_db(C, ref=1.0, top_db=80.0), first, n_frames)


def hpss_patch(y, *, part, sr, n_fft, hop, n_mels, n_frames, kernel_size, margin, device="cpu"):
    """Log-mel patch of the harmonic or percussive part (median-filtering HPSS on the power STFT)."""
    import librosa

    y = require_sound(y, sr)
    segment, first = _excerpt(y, sr, n_frames, hop)
    harmonic, percussive = _hpss(segment, sr, n_fft, hop, kernel_size, margin)
    D = harmonic if part == "harmonic" else percussive
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)
    S = basis @ (np.abs(D) ** 2)
    return _patch(librosa.power_to_db(S, ref=1.0, top_db=80.0), first, n_frames)


_HPSS_MEMO: dict = {}


def _hpss(segment, sr, n_fft, hop, kernel_size, margin):
    # 'harmonic' and 'percussive' of one track come from one decomposition: memoise the last one.
    key = (segment.tobytes().__hash__(), len(segment), sr, n_fft, hop, kernel_size, margin)
    if key not in _HPSS_MEMO:
        import librosa

        D = librosa.stft(segment, n_fft=n_fft, hop_length=hop)
        _HPSS_MEMO.clear()
        _HPSS_MEMO[key] = librosa.decompose.hpss(D, kernel_size=kernel_size, margin=margin)
    return _HPSS_MEMO[key]


@functools.lru_cache(maxsize=4)
def _scattering(n_samples, J, Q, max_order):
    from kymatio import Scattering1D  # top-level import: kymatio.torch fails with SciPy >= 1.17

    return Scattering1D(J=J, shape=n_samples, Q=Q, max_order=max_order, frontend="numpy")


def scattering_patch(y, *, sr, n_samples, J, Q, max_order, eps):
    """Log scattering coefficients (orders 1..max_order) of the middle ``n_samples``: (n_paths, n_samples / 2**J)."""
    y = require_sound(y, sr)
    segment = middle_excerpt(y, n_samples)
    if len(segment) < n_samples:  # centre a short track in silence
        padded = np.zeros(n_samples, dtype=np.float32)
        start = (n_samples - len(segment)) // 2
        padded[start : start + len(segment)] = segment
        segment = padded
    transform = _scattering(n_samples, J, Q, max_order)
    S = transform(segment.astype(np.float32))[transform.meta()["order"] > 0]  # order 0 is signed, ~0 for audio
    return np.log(np.maximum(S, 0.0) + eps).astype(np.float32)


def scattering_shape(n_samples, J, Q, max_order) -> tuple[int, int]:
    # The number of paths depends on J, Q and the order only; a short probe builds in 0.1 s instead
    # of 6 s for 2**18 samples (the real transform is built on first use in each process).
    meta = _scattering(min(n_samples, 2 ** (J + 3)), J, Q, max_order).meta()
    return int(np.sum(meta["order"] > 0)), n_samples // 2**J


# ----------------------------------------------------------------------------- timbre


def timbre_vector(y, *, sr, n_fft, hop, n_mfcc, n_mels):
    """Timbral texture features (Tzanetakis & Cook 2002), shape (2 * (3 + n_mfcc) + 1,).

    Per analysis frame: spectral centroid (Hz), spectral flux (squared difference of successive
    L2-normalised magnitude spectra), zero-crossing rate, ``n_mfcc`` MFCCs. Returned: the means of
    these frame features, then their variances, then low energy: the fraction of frames whose RMS
    is below the track's mean frame RMS.
    """
    import librosa

    y = require_sound(y, sr, min_seconds=n_fft / sr)
    S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop))
    centroid = librosa.feature.spectral_centroid(S=S, sr=sr, n_fft=n_fft)[0]
    unit = S / np.maximum(np.linalg.norm(S, axis=0, keepdims=True), 1e-12)
    flux = np.concatenate([[0.0], np.sum(np.diff(unit, axis=1) ** 2, axis=0)])
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop)[0]
    mel = librosa.feature.melspectrogram(S=S**2, sr=sr, n_mels=n_mels)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=n_mfcc)
    rms = librosa.feature.rms(S=S, frame_length=n_fft)[0]
    n = min(len(centroid), len(zcr))
    frames = np.vstack([centroid[:n], flux[:n], zcr[:n], mfcc[:, :n]])
    low_energy = float(np.mean(rms < rms.mean()))
    return np.concatenate([frames.mean(axis=1), frames.var(axis=1), [low_energy]]).astype(np.float32)


# ----------------------------------------------------------------------------- rhythm

# Zwicker's critical band edges in Hz (24 Bark bands), as in rp_extract
BARK_EDGES = np.array([0, 100, 200, 300, 400, 510, 630, 770, 920, 1080, 1270, 1480, 1720, 2000, 2320, 2700,
                       3150, 3700, 4400, 5300, 6400, 7700, 9500, 12000, 15500], dtype=np.float64)
DB_MAX = 96.0  # full scale = 96 dB SPL, as in Pampalk's MA toolbox and rp_extract
SSD_STATS = ("mean", "var", "skewness", "kurtosis", "median", "min", "max")


def _spreading_matrix(n_bands):
    # Schroeder et al. (1979) spreading function, in dB -> power, as rp_extract applies it
    d = np.arange(n_bands)[:, None] - np.arange(n_bands)[None, :]
    db = 15.81 + 7.5 * (d + 0.474) - 17.5 * np.sqrt(1 + (d + 0.474) ** 2)
    return 10.0 ** (db / 10.0)


def _sone(db):
    # dB taken as phon (no equal-loudness contours; see rhythm_vector), then Zwicker's sone scale
    return np.where(db >= 40.0, 2.0 ** ((db - 40.0) / 10.0), (np.maximum(db, 0.0) / 40.0) ** 2.642)


def rhythm_vector(y, *, sr, n_fft, hop, segment_samples, n_rh):
    """Rhythm Histogram (``n_rh`` modulation bins) + Statistical Spectrum Descriptors (7 x 24 Bark bands).

    Follows rp_extract (Lidy & Rauber 2005): segments of ``segment_samples`` (2**18 at 44.1 kHz, 5.9 s;
    the first and last are skipped when there are at least 3, a short track is zero-padded to one);
    audio is scaled so that a full-scale sine is 96 dB (Pampalk's MA toolbox); per segment the power
    of the window-normalised STFT (Hann ``n_fft``, ``hop``) is summed into 24 Bark bands, spread with
    Schroeder's spreading function, converted to dB (values below 1 set to 1) and to sone. SSD: mean,
    variance, skewness, kurtosis, median, min, max of each band's sone over time (stat-major), averaged
    over segments. RH: per segment the magnitude of the FFT over time of each band's sone, bins
    1..``n_rh`` (0.17..10 Hz at 44.1 kHz), summed over bands; median over segments.
    Deviation from rp_extract: the phon step (equal-loudness contours) is omitted (dB is used as phon).

    Returns
    -------
    np.ndarray, float32, shape (n_rh + 7 * 24,)
    """
    import librosa
    import scipy.stats

    y = require_sound(y, sr, min_seconds=n_fft / sr).astype(np.float64) * 10.0 ** (DB_MAX / 20.0)
    n_segments = max(1, len(y) // segment_samples)
    starts = [i * segment_samples for i in range(n_segments)]
    if n_segments >= 3:
        starts = starts[1:-1]
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    band = np.searchsorted(BARK_EDGES, freqs, side="right") - 1  # band index of each FFT bin
    valid = (band >= 0) & (band < 24)
    spread = _spreading_matrix(24)
    window_sum = float(np.sum(np.hanning(n_fft + 1)[:-1]))  # periodic Hann, as librosa.stft uses
    rh_all, ssd_all = [], []
    for start in starts:
        segment = y[start : start + segment_samples]
        if len(segment) < segment_samples:
            segment = np.pad(segment, (0, segment_samples - len(segment)))
        # amplitude spectrum normalised by the window sum (x2 for one side): a full-scale sine -> 96 dB
        P = (2.0 * np.abs(librosa.stft(segment, n_fft=n_fft, hop_length=hop, center=False)) / window_sum) ** 2
        bark = np.zeros((24, P.shape[1]))
        np.add.at(bark, band[valid], P[valid])
        bark = spread @ bark
        sone = _sone(10.0 * np.log10(np.maximum(bark, 1.0)))
        ssd = [sone.mean(1), sone.var(1), scipy.stats.skew(sone, axis=1), scipy.stats.kurtosis(sone, axis=1),
               np.median(sone, axis=1), sone.min(1), sone.max(1)]
        ssd_all.append(np.nan_to_num(np.concatenate(ssd)))  # constant bands: skew/kurtosis undefined -> 0
        modulation = np.abs(np.fft.fft(sone, axis=1)) / sone.shape[1]
        rh_all.append(modulation[:, 1 : n_rh + 1].sum(axis=0))
    return np.concatenate([np.median(rh_all, axis=0), np.mean(ssd_all, axis=0)]).astype(np.float32)


# ----------------------------------------------------------------------------- registry builders


def _frames_in(seconds, sr, hop):
    return 1 + int(seconds * sr) // hop


def mel_feature(*, name="mel", sr=22050, n_fft=2048, hop=512, n_mels=128, seconds=10.0, whole=False,
                description=None) -> AudioFeature:
    n_frames = _frames_in(seconds, sr, hop)
    shape = (n_mels, n_frames)
    params = {"representation": "log-mel power spectrogram (dB, ref 1.0, top_db 80)", "sample_rate": sr,
              "n_fft": n_fft, "window": "hann", "hop_length": hop, "n_mels": n_mels, "mel_scale": "slaney",
              "patch": {"frames": n_frames, "seconds": seconds, "position": "middle", "pad": "floor value"},
              "shape": list(shape)}
    function = functools.partial(mel_patch, sr=sr, n_fft=n_fft, hop=hop, n_mels=n_mels, n_frames=n_frames,
                                 whole=whole)
    description = description or f"log-mel patch, {n_mels} bands x {n_frames} frames ({seconds:g} s, hop {hop})"
    return AudioFeature(name, sr, params, shape, description, function, device_aware=True)


def cqt_feature(*, name="cqt", sr=22050, hop=512, n_bins=84, bins_per_octave=12, fmin=32.703, seconds=10.0,
                description=None) -> AudioFeature:
    n_frames = _frames_in(seconds, sr, hop)
    shape = (n_bins, n_frames)
    params = {"representation": "log-amplitude constant-Q transform (dB, ref 1.0, top_db 80)", "sample_rate": sr,
              "hop_length": hop, "n_bins": n_bins, "bins_per_octave": bins_per_octave, "fmin": fmin,
              "patch": {"frames": n_frames, "seconds": seconds, "position": "middle", "pad": "floor value"},
              "shape": list(shape)}
    function = functools.partial(cqt_patch, sr=sr, hop=hop, n_bins=n_bins, bins_per_octave=bins_per_octave,
                                 fmin=fmin, n_frames=n_frames)
    description = description or f"log-CQT patch, {n_bins} bins x {n_frames} frames ({seconds:g} s, hop {hop})"
    return AudioFeature(name, sr, params, shape, description, function)


def hpss_feature(part, *, sr=22050, n_fft=2048, hop=512, n_mels=128, seconds=10.0, kernel_size=31,
                 margin=1.0) -> AudioFeature:
    n_frames = _frames_in(seconds, sr, hop)
    shape = (n_mels, n_frames)
    params = {"representation": f"log-mel (dB) of the {part} part (librosa median-filter HPSS of the STFT)",
              "sample_rate": sr, "n_fft": n_fft, "window": "hann", "hop_length": hop, "n_mels": n_mels,
              "hpss_kernel_size": kernel_size, "hpss_margin": margin,
              "patch": {"frames": n_frames, "seconds": seconds, "position": "middle", "pad": "floor value"},
              "shape": list(shape)}
    function = functools.partial(hpss_patch, part=part, sr=sr, n_fft=n_fft, hop=hop, n_mels=n_mels,
                                 n_frames=n_frames, kernel_size=kernel_size, margin=margin)
    return AudioFeature(part, sr, params, shape, f"{part} (HPSS) log-mel patch, {n_mels} x {n_frames}", function)


def scattering_feature(*, sr=22050, n_samples=2**18, J=9, Q=8, max_order=2, eps=1e-6) -> AudioFeature:
    shape = scattering_shape(n_samples, J, Q, max_order)
    params = {"representation": "log(1e-6 + scattering transform), orders 1..max_order (kymatio Scattering1D)",
              "sample_rate": sr, "J": J, "Q": Q, "max_order": max_order, "eps": eps,
              "patch": {"samples": n_samples, "seconds": n_samples / sr, "position": "middle",
                        "pad": "zeros (silence)", "frames": shape[1], "hop_samples": 2**J},
              "shape": list(shape)}
    function = functools.partial(scattering_patch, sr=sr, n_samples=n_samples, J=J, Q=Q, max_order=max_order,
                                 eps=eps)
    description = f"log scattering transform (J={J}, Q={Q}, orders 1-{max_order}), {shape[0]} x {shape[1]}"
    return AudioFeature("scattering", sr, params, shape, description, function)


def timbre_feature(*, sr=22050, n_fft=512, hop=256, n_mfcc=13, n_mels=40) -> AudioFeature:
    names = ["centroid", "flux", "zero_crossing_rate"] + [f"mfcc{i}" for i in range(n_mfcc)]
    shape = (2 * len(names) + 1,)
    params = {"sample_rate": sr, "n_fft": n_fft, "window": "hann", "hop_length": hop, "n_mfcc": n_mfcc,
              "n_mels": n_mels, "layout": [f"mean_{n}" for n in names] + [f"var_{n}" for n in names] + ["low_energy"],
              "shape": list(shape)}
    function = functools.partial(timbre_vector, sr=sr, n_fft=n_fft, hop=hop, n_mfcc=n_mfcc, n_mels=n_mels)
    description = (f"timbral texture: centroid, flux, zero crossings, {n_mfcc} MFCCs (mean, variance) "
                   f"+ low energy ({shape[0]} values)")
    return AudioFeature("timbre", sr, params, shape, description, function)


def rhythm_feature(*, sr=44100, n_fft=1024, hop=512, segment_samples=2**18, n_rh=60) -> AudioFeature:
    shape = (n_rh + 7 * 24,)
    params = {"sample_rate": sr, "n_fft": n_fft, "window": "hann", "hop_length": hop,
              "segment_samples": segment_samples, "bark_bands": 24, "rh_bins": n_rh,
              "modulation_resolution_hz": sr / hop / (1 + (segment_samples - n_fft) // hop),
              "ssd_stats": list(SSD_STATS), "layout": f"RH ({n_rh}), then SSD stat-major (7 x 24)",
              "loudness": "full scale 96 dB, Schroeder spreading, dB (floor 1), dB as phon, sone", "shape": list(shape)}
    function = functools.partial(rhythm_vector, sr=sr, n_fft=n_fft, hop=hop, segment_samples=segment_samples,
                                 n_rh=n_rh)
    description = f"rhythm histogram ({n_rh}) + statistical spectrum descriptors on 24 Bark bands ({shape[0]})"
    return AudioFeature("rhythm", sr, params, shape, description, function)


def logcqt_oramas_feature() -> AudioFeature:
    n_frames = _frames_in(15.0, 22050, 1024)
    return cqt_feature(name="logcqt-oramas", sr=22050, hop=1024, n_bins=96, bins_per_octave=12, fmin=32.703,
                       seconds=15.0, description=f"Oramas et al. log-CQT: 96 bins x {n_frames} frames (15 s, hop 1024)")


def logmel_ru_feature() -> AudioFeature:
    n_frames = _frames_in(30.0, 22050, 512)
    return mel_feature(name="logmel-ru", sr=22050, n_fft=2048, hop=512, n_mels=128, seconds=30.0, whole=True,
                       description=f"Ru et al. log-mel: 128 bands x {n_frames} frames (30 s at 22.05 kHz, hop 512)")
