"""A vectorised replacement for one hot spot of aiortc, installed by each worker.

aiortc's RTCRtpSender computes the RFC 6465 audio level of every outgoing audio frame
with `aiortc.rtp.compute_audio_level_dbov`, a pure-Python loop over each sample
(1920 per 20 ms stereo packet) run on the event loop: measured at about 0.3-0.5 ms
per packet, a large share of a pass-through stream's CPU, and loop time every peer
waits for. `numpy_audio_level_dbov` computes the same integer from the same bytes
(tests/test_server_cli.py checks equality against the original).
"""

from __future__ import annotations

import math

import aiortc.rtp
import numpy as np
from av import AudioFrame

_MAX_SAMPLE = 32767
_MIN_LEVEL = -127
_original = aiortc.rtp.compute_audio_level_dbov


def numpy_audio_level_dbov(frame: AudioFrame) -> int:
    """RFC 6465 Appendix A level, as aiortc defines it (all plane-0 int16 values)."""
    pcm = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16).astype(np.float64)
    rms = math.sqrt(float(np.dot(pcm, pcm)) / (frame.samples * _MAX_SAMPLE * _MAX_SAMPLE))
    if rms <= 0:
        return _MIN_LEVEL
    return round(min(0.0, max(20 * math.log10(rms), _MIN_LEVEL)))


def install() -> None:
    """Swap the implementation in (idempotent)."""
    aiortc.rtp.compute_audio_level_dbov = numpy_audio_level_dbov


def original_audio_level_dbov(frame: AudioFrame) -> int:
    return int(_original(frame))
