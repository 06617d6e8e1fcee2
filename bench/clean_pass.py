"""Why does clean speech not pass through the model untouched? The test clip of
tests/test_quality.py (dry speech, no noise) through the shipped model, then again with
the model's band gains replaced: by each band's mean over the clip (constant in time),
by 1, and with the comb strengths set to 0.

    python -m bench.clean_pass [--model models/percepnet-int8.onnx]

Findings: results/clean_pass.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from percepnet.audio import load, resample
from percepnet.constants import FRAME_SIZE, SAMPLE_RATE
from percepnet.enhancer import enhance_signal
from percepnet.metrics import pesq_at, si_sdr, stoi
from percepnet.runtime import OnnxSource, load_model
from server.clips import data_dir

FloatArray = npt.NDArray[np.float64]
SPEECH = "speech/picovoice_speech_to_intent/speech/clean/05ad3db4-3456-4570-a4dd-4c64d8814681.flac"
"""A clean dev-split clip: this diagnostic's input and tests/test_quality.py's."""


def channel(x: FloatArray, rate: int) -> FloatArray:
    """48 kHz audio as it arrives through a channel at `rate`: down and back up (the
    channels of tests/test_quality.py)."""
    return x if rate == SAMPLE_RATE else resample(resample(x, SAMPLE_RATE, rate), rate, SAMPLE_RATE)


def scores(clean: FloatArray, est: Any, rate: int) -> tuple[float, float, float]:
    """PESQ, STOI and SI-SDR at the channel's rate (fullband at 16 kHz)."""
    r = min(rate, 16000)
    c = resample(clean, SAMPLE_RATE, r)
    e = resample(np.asarray(est, np.float64), SAMPLE_RATE, r)
    return pesq_at(c, e, r), stoi(c, e, r), si_sdr(c, e, r)


class Replaced:
    """A gain source that records the model's gains and may replace them."""

    def __init__(self, inner: OnnxSource, gains: FloatArray | None = None, r0: bool = False):
        self.inner, self.gains, self.r0 = inner, gains, r0
        self.seen: list[FloatArray] = []

    def reset(self) -> None:
        self.inner.reset()

    def __call__(self, frames: Any) -> Any:
        g, r = self.inner(frames)
        self.seen.append(np.atleast_2d(np.asarray(g, np.float64)))
        if self.gains is not None:
            g = np.broadcast_to(self.gains, np.shape(g)).astype(np.float32)
        if self.r0:
            r = np.zeros_like(r)
        return g, r


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="default: the shipped int8 model")
    args = ap.parse_args(argv)
    model = load_model(args.model)
    x = load(data_dir() / SPEECH)
    x = 0.1 * x / np.sqrt(np.mean(x**2))
    print("| input | gains | PESQ | STOI | SI-SDR dB |\n|---|---|---:|---:|---:|")
    for rate in (16000, SAMPLE_RATE):
        clean = channel(x, rate)
        rec = Replaced(OnnxSource(model))
        runs = {"the model's": enhance_signal(clean, rec)}
        g = np.concatenate(rec.seen)
        variants = {
            "each band's mean over the clip": Replaced(OnnxSource(model), g.mean(axis=0)),
            "the model's, comb strength 0": Replaced(OnnxSource(model), None, r0=True),
            "1 in every band": Replaced(OnnxSource(model), np.ones(g.shape[1])),
        }
        for name, src in variants.items():
            runs[name] = enhance_signal(clean, src)
        for name, out in runs.items():
            p, s, d = scores(clean, out, rate)
            print(f"| {rate // 1000} kHz | {name} | {p:.2f} | {s:.3f} | {d:.1f} |")
        n = min(len(g), len(clean) // FRAME_SIZE)
        energy = np.array(
            [np.mean(clean[i * FRAME_SIZE : (i + 1) * FRAME_SIZE] ** 2) for i in range(n)]
        )
        level = 10 * np.log10(energy + 1e-12)
        loud = level > level.max() - 30
        q = np.quantile(g[:n][loud].mean(axis=1), [0.05, 0.5, 0.95])
        print(
            f"\n{rate // 1000} kHz: in the {int(loud.sum())} frames within 30 dB of the loudest, "
            f"the model's gain (mean over bands) is {q[1]:.2f} (5-95 %: {q[0]:.2f}-{q[2]:.2f}); "
            f"band means range {g.mean(axis=0).min():.2f}-{g.mean(axis=0).max():.2f}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
