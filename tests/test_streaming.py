"""Streaming equivalence: whole signal = 480-sample frames = 960-sample packets = random chunks."""

from __future__ import annotations

import numpy as np

from percepnet.constants import FRAME_SIZE, LATENCY_SAMPLES
from percepnet.enhancer import ChunkedStream, Enhancer, OracleSource, enhance_signal
from tests.signals import add_noise, speechlike


def _pair(seconds: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    clean = speechlike(seconds, rng)
    return clean, add_noise(clean, 5.0, rng)


def _stream(noisy: np.ndarray, clean: np.ndarray, sizes: list[int]) -> np.ndarray:
    stream = ChunkedStream(Enhancer(OracleSource(clean)))
    padded = np.concatenate([noisy, np.zeros(LATENCY_SAMPLES + FRAME_SIZE)])
    out, pos = [], 0
    for size in sizes:
        out.append(stream.process(padded[pos : pos + size]))
        pos += size
    out.append(stream.process(padded[pos:]))
    y = np.concatenate(out)
    return y[LATENCY_SAMPLES : LATENCY_SAMPLES + len(noisy)]


def test_frames_packets_and_random_chunks_are_identical() -> None:
    clean, noisy = _pair()
    n = len(noisy) + LATENCY_SAMPLES + FRAME_SIZE
    frames = _stream(noisy, clean, [FRAME_SIZE] * (n // FRAME_SIZE))
    packets = _stream(noisy, clean, [2 * FRAME_SIZE] * (n // (2 * FRAME_SIZE)))
    rng = np.random.default_rng(1)
    sizes = list(rng.integers(1, 1500, size=200))
    chunks = _stream(noisy, clean, [int(s) for s in sizes if s])
    np.testing.assert_array_equal(frames, packets)
    np.testing.assert_array_equal(frames, chunks)


def test_whole_signal_path_equals_streaming() -> None:
    clean, noisy = _pair()
    n = len(noisy) + LATENCY_SAMPLES + FRAME_SIZE
    frames = _stream(noisy, clean, [FRAME_SIZE] * (n // FRAME_SIZE))
    whole = enhance_signal(noisy, OracleSource(clean))
    np.testing.assert_allclose(whole, frames, atol=1e-6)
    # and the oracle really did something
    assert np.mean((whole - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)


def test_reset_restarts_the_stream() -> None:
    clean, noisy = _pair(0.5)
    enh = Enhancer(OracleSource(clean))
    first = [enh.process(noisy[i : i + FRAME_SIZE]) for i in range(0, 20 * FRAME_SIZE, FRAME_SIZE)]
    enh.reset()
    second = [enh.process(noisy[i : i + FRAME_SIZE]) for i in range(0, 20 * FRAME_SIZE, FRAME_SIZE)]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(second))
