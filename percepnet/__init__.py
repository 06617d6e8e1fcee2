"""PercepNet speech enhancement: DSP, oracle, model runtime and offline tools."""

from percepnet.constants import FRAME_SIZE, LATENCY_MS, LATENCY_SAMPLES, SAMPLE_RATE
from percepnet.enhancer import ChunkedStream, Diagnostics, Enhancer, GainSource, enhance_signal

__all__ = [
    "FRAME_SIZE",
    "LATENCY_MS",
    "LATENCY_SAMPLES",
    "SAMPLE_RATE",
    "ChunkedStream",
    "Diagnostics",
    "Enhancer",
    "GainSource",
    "enhance_signal",
]
