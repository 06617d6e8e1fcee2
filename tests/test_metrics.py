"""Metrics and the RNNoise reference against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal

from percepnet import metrics
from percepnet.constants import FRAME_SIZE, SAMPLE_RATE

pytest.importorskip("pesq")
pytest.importorskip("pystoi")


def speech_like(seconds: float = 3.0, seed: int = 0, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Voiced bursts with a gliding pitch (no single period, so lags are unambiguous)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120.0 + 60.0 * np.sin(2 * np.pi * 0.7 * t) + 20.0 * t
    phase = 2 * np.pi * np.cumsum(f0) / rate
    harm = sum(np.sin(k * phase) / k for k in range(1, 25))
    # Syllable-rate envelope: 4 Hz bursts with pauses.
    env = np.clip(np.sin(2 * np.pi * 2.0 * t + rng.uniform(0, 1)), 0.0, None) ** 2
    x = 0.1 * harm * env
    # Formant-ish colouring so the spectrum is not flat.
    b, a = scipy.signal.butter(2, [300 / (rate / 2), 3500 / (rate / 2)], btype="band")
    y = scipy.signal.lfilter(b, a, x) + 0.3 * x
    return np.asarray(y / np.max(np.abs(y)) * 0.5)


def add_noise_at_snr(x: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    n = np.random.default_rng(seed).standard_normal(len(x))
    n *= np.sqrt(np.sum(x**2) / np.sum(n**2) / 10 ** (snr_db / 10))
    return x + n


def test_si_sdr_known_values() -> None:
    x = speech_like(seed=3, rate=16000)
    assert metrics.si_sdr(x, x, 16000) > 100.0
    # Scale invariance: a gain does not change the score.
    assert metrics.si_sdr(x, 0.3 * x, 16000) > 100.0
    noisy = add_noise_at_snr(x - x.mean(), 10.0)
    assert metrics.si_sdr(x, noisy, 16000) == pytest.approx(10.0, abs=0.3)
    noisy0 = add_noise_at_snr(x - x.mean(), 0.0)
    assert metrics.si_sdr(x, noisy0, 16000) == pytest.approx(0.0, abs=0.3)


def test_si_sdr_resamples_like_the_others() -> None:
    x48 = speech_like(seed=4)
    noisy = add_noise_at_snr(x48, 5.0)
    # At 48 kHz the white noise above 8 kHz is removed by the resampler to 16 kHz,
    # so SI-SDR rises by about 10*log10(3) = 4.8 dB.
    assert metrics.si_sdr(x48, noisy, SAMPLE_RATE) == pytest.approx(5.0 + 4.77, abs=0.5)


def test_pesq_and_stoi_order_clean_over_noisy() -> None:
    x = speech_like(seconds=4.0, seed=5)
    noisy = add_noise_at_snr(x, -5.0)
    p_clean = metrics.pesq_wb(x, x, SAMPLE_RATE)
    p_noisy = metrics.pesq_wb(x, noisy, SAMPLE_RATE)
    assert p_clean > 4.0
    assert p_noisy < p_clean - 1.0
    s_clean = metrics.stoi(x, x, SAMPLE_RATE)
    s_noisy = metrics.stoi(x, noisy, SAMPLE_RATE)
    assert s_clean == pytest.approx(1.0, abs=1e-3)
    assert s_noisy < s_clean - 0.05


def test_silence_gives_nan_not_an_error() -> None:
    z = np.zeros(SAMPLE_RATE)
    x = speech_like(seconds=1.0)
    assert math.isnan(metrics.pesq_wb(z, z, SAMPLE_RATE))
    assert math.isnan(metrics.pesq_wb(x, z, SAMPLE_RATE))
    assert math.isnan(metrics.stoi(z, x, SAMPLE_RATE))
    assert math.isnan(metrics.si_sdr(z, x, SAMPLE_RATE))
    assert all(math.isnan(v) for v in metrics.dnsmos(z, SAMPLE_RATE).values())
    assert all(math.isnan(v) for v in metrics.dnsmos(np.zeros(0), SAMPLE_RATE).values())
    # Too short for PESQ: NaN rather than the C library's exception.
    assert math.isnan(metrics.pesq_wb(x[:4800], x[:4800], SAMPLE_RATE))


def test_score_has_all_keys_and_dnsmos_prefers_clean() -> None:
    pytest.importorskip("speechmos")
    x = speech_like(seconds=4.0, seed=6)
    noisy = add_noise_at_snr(x, 0.0)
    s_clean = metrics.score(x, x)
    s_noisy = metrics.score(x, noisy)
    assert tuple(s_clean) == metrics.METRIC_NAMES
    assert all(math.isfinite(v) for v in s_clean.values())
    assert s_noisy["dnsmos_bak"] < s_clean["dnsmos_bak"]
    assert s_noisy["si_sdr"] < s_clean["si_sdr"]


def _lag(reference: np.ndarray, delayed: np.ndarray) -> int:
    c = scipy.signal.correlate(delayed, reference, mode="full", method="fft")
    lags = scipy.signal.correlation_lags(len(delayed), len(reference), mode="full")
    return int(lags[np.argmax(c)])


def test_rnnoise_raw_delay_is_two_frames() -> None:
    pytest.importorskip("pyrnnoise")
    x = speech_like(seconds=3.0, seed=7)
    x = x + 0.002 * np.random.default_rng(0).standard_normal(len(x))
    with metrics.RNNoiseReference() as rn:
        frames = [rn.process_frame(x[i : i + FRAME_SIZE]) for i in range(0, len(x), FRAME_SIZE)]
    y = np.concatenate([f for f, _ in frames])
    vad = np.array([v for _, v in frames])
    assert np.all((vad >= 0.0) & (vad <= 1.0))
    lag = _lag(x, y)
    assert abs(lag - metrics.RNNOISE_DELAY_SAMPLES) <= 2, lag
    assert metrics.RNNOISE_DELAY_SAMPLES == 2 * FRAME_SIZE


def test_rnnoise_enhance_is_aligned_and_same_length() -> None:
    pytest.importorskip("pyrnnoise")
    x = speech_like(seconds=3.0, seed=8)
    noisy = add_noise_at_snr(x, 15.0)
    y = metrics.rnnoise_enhance(noisy)
    assert y.shape == noisy.shape
    assert abs(_lag(x, y)) <= 2


def test_rnnoise_improves_real_speech() -> None:
    pytest.importorskip("pyrnnoise")
    from percepnet.audio import load
    from percepnet.data.corpus import data_root

    clip = data_root() / "speech/ljspeech_subset/wavs/LJ001-0001.flac"
    if not clip.exists():
        pytest.skip(f"shared data not found at {clip}")
    x = load(clip)
    noisy = add_noise_at_snr(x, 5.0)
    y = metrics.rnnoise_enhance(noisy)
    assert abs(_lag(x, y)) <= 2
    # Synthetic tones are not speech to RNNoise; real speech is, and the aligned
    # output is then closer to the clean signal than the noisy input is.
    assert metrics.si_sdr(x, y, SAMPLE_RATE) > metrics.si_sdr(x, noisy, SAMPLE_RATE) + 2.0
    assert metrics.pesq_wb(x, y, SAMPLE_RATE) > metrics.pesq_wb(x, noisy, SAMPLE_RATE) + 0.3


def test_rnnoise_reduces_white_noise() -> None:
    pytest.importorskip("pyrnnoise")
    noise = 0.05 * np.random.default_rng(9).standard_normal(2 * SAMPLE_RATE)
    y = metrics.rnnoise_enhance(noise)
    tail = slice(SAMPLE_RATE // 2, None)  # after the noise estimate settles
    reduction_db = 10 * np.log10(np.sum(noise[tail] ** 2) / np.sum(y[tail] ** 2))
    assert reduction_db > 10.0


def test_summarise_and_table() -> None:
    rows = [
        {"system": "noisy", "pesq_wb": 1.0, "stoi": 0.7},
        {"system": "noisy", "pesq_wb": 3.0, "stoi": float("nan")},
        {"system": "noisy", "pesq_wb": 2.5, "stoi": 0.9},
        {"system": "rnnoise", "pesq_wb": 2.0, "stoi": 0.8},
    ]
    s = metrics.summarise(rows, metrics=("pesq_wb", "stoi"))
    assert [x.system for x in s] == ["noisy", "rnnoise"]
    assert s[0].median["pesq_wb"] == pytest.approx(2.5)
    assert s[0].mean["pesq_wb"] == pytest.approx(6.5 / 3)
    assert s[0].median["stoi"] == pytest.approx(0.8)
    assert s[0].n == 3 and s[0].n_valid["stoi"] == 2
    table = metrics.markdown_table(s, metrics=("pesq_wb", "stoi"))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| system | n | PESQ-WB | STOI |")
    assert lines[2] == "| noisy | 3 | 2.50 | 0.80 |"
    assert len(lines) == 4
