"""Mono Opus payloads <-> mono float at SAMPLE_RATE, for the RTP sidecar.

Named apart from aiortc's own codec classes (aiortc.codecs.opus.OpusEncoder, which the
WebRTC path uses through aiortc): these work on bare RTP payloads, mono, with the
packet duration of the input.
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

from percepnet.streaming import INT16_SCALE, PACKET_SAMPLES, SAMPLE_RATE
from server.media.convert import to_mono

FloatArray = npt.NDArray[np.float64]

LONG_PACKETS = (2 * PACKET_SAMPLES, 3 * PACKET_SAMPLES)
"""Output packetisation: PACKET_SAMPLES (20 ms, the usual Opus frame for conferencing)
or the input's own 40 or 60 ms, so one packet in makes at most one packet out."""


class OpusPayloadDecoder:
    """Opus payloads -> mono float at 48 kHz."""

    def __init__(self) -> None:
        self.codec = av.CodecContext.create("libopus", "r")
        self.codec.sample_rate = SAMPLE_RATE
        self.codec.layout = "mono"

    def decode(self, payload: bytes) -> FloatArray:
        frames = self.codec.decode(av.Packet(payload))
        pieces = [to_mono(f) for f in frames if isinstance(f, av.AudioFrame)]
        return np.concatenate(pieces) if pieces else np.zeros(0)


class OpusPayloadEncoder:
    """Mono float at 48 kHz -> one Opus payload per `packet_samples` samples."""

    def __init__(self, bitrate: int, packet_samples: int = PACKET_SAMPLES) -> None:
        if packet_samples not in (PACKET_SAMPLES, *LONG_PACKETS):
            raise ValueError(f"unsupported Opus packet of {packet_samples} samples")
        self.packet_samples = packet_samples
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.sample_rate = SAMPLE_RATE
        self.codec.layout = "mono"
        self.codec.format = "s16"
        self.codec.bit_rate = bitrate
        # libopus's default complexity (the highest): at this bit rate a lower one changes the
        # sound measurably (the noise floor in pauses by 2.5 dB at 5, tests/test_rtp.py)
        duration_ms = 1000 * packet_samples // SAMPLE_RATE
        self.codec.options = {"application": "voip", "frame_duration": str(duration_ms)}
        self._pending = np.zeros(0)
        self._pts = 0

    def encode(self, x: FloatArray) -> list[bytes]:
        size = self.packet_samples
        data = np.concatenate([self._pending, x]) if self._pending.size else x
        n = len(data) // size
        self._pending = data[n * size :].copy()
        out: list[bytes] = []
        for i in range(n):
            chunk = data[i * size : (i + 1) * size]
            pcm = np.clip(np.rint(chunk * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1)
            frame = av.AudioFrame.from_ndarray(
                pcm.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self._pts
            self._pts += size
            out.extend(bytes(p) for p in self.codec.encode(frame))
        return out
