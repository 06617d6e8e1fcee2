"""What the Opus encoder's complexity costs and buys, for the audio the service sends back.

Encodes speech clips from ../shared/data (LJSpeech, resampled to 48 kHz, -6 dBFS peak
region) exactly as the service's sender does: libopus through PyAV, 96 kbit/s, 'voip',
20 ms stereo s16 frames with both channels equal, at each complexity; decodes them,
aligns, and scores the round trip against the input (PESQ-WB and STOI at 16 kHz), with
the encoder's CPU time per 20 ms packet. Settings are interleaved clip by clip so the
machine's drift touches them alike. A script, not a test:

    python -m bench.opus_complexity --clips 8
"""

from __future__ import annotations

import argparse
import fractions
import statistics
import sys
import time

import av
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from bench.common import DATA, PACKET_FRAMES, markdown
from percepnet.constants import FRAME_SIZE, SAMPLE_RATE

SPEECH = DATA / "speech" / "ljspeech_subset" / "wavs"
RATE = SAMPLE_RATE
PACKET = PACKET_FRAMES * FRAME_SIZE
TIME_BASE = fractions.Fraction(1, RATE)


def round_trip(x: np.ndarray, complexity: int) -> tuple[np.ndarray, float]:
    """Decoded audio (left channel, float) and the median encode CPU seconds per packet."""
    enc = av.CodecContext.create("libopus", "w")
    enc.bit_rate = 96000  # aiortc's setting
    enc.format = "s16"
    enc.layout = "stereo"
    enc.options = {"application": "voip", "compression_level": str(complexity)}
    enc.sample_rate = RATE
    enc.time_base = TIME_BASE
    dec = av.CodecContext.create("libopus", "r")
    dec.layout = "stereo"
    dec.sample_rate = RATE
    pcm = np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)
    out, costs = [], []
    for i in range(len(pcm) // PACKET):
        frame = av.AudioFrame.from_ndarray(
            np.repeat(pcm[i * PACKET : (i + 1) * PACKET], 2)[None, :], format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts, frame.time_base = RATE, i * PACKET, TIME_BASE
        t0 = time.thread_time()
        packets = enc.encode(frame)
        costs.append(time.thread_time() - t0)
        for p in packets:
            for f in dec.decode(p):
                out.append(f.to_ndarray().reshape(-1)[0::2].astype(np.float64) / 32768)
    return np.concatenate(out), statistics.median(costs)


def main() -> int:
    from percepnet.metrics import pesq_wb, stoi

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--complexities", default="10,8,5,3,1,0")
    args = ap.parse_args()
    files = sorted(SPEECH.glob("*.flac"))[: args.clips]
    if not files:
        print(f"no speech clips under {SPEECH}", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.complexities.split(",")]
    scores: dict[int, list[tuple[float, float, float]]] = {c: [] for c in levels}
    for path in files:
        x, sr = sf.read(path, always_2d=True)
        x48 = resample_poly(x.mean(axis=1), RATE, sr)
        x48 *= 0.5 / max(1e-9, float(np.max(np.abs(x48))))
        for c in levels:
            y, cost = round_trip(x48, c)
            search = np.correlate(y[: RATE // 2 + 3000], x48[: RATE // 2], "valid")
            lag = int(np.argmax(search))  # the codec delay, 312 samples
            n = min(len(x48), len(y) - lag)
            ref = resample_poly(x48[:n], 1, 3)
            est = resample_poly(y[lag : lag + n], 1, 3)
            scores[c].append((pesq_wb(ref, est, 16000), stoi(ref, est, 16000), 1e6 * cost))
    print(f"{len(files)} LJSpeech clips, Opus 96 kbit/s voip, 20 ms stereo packets; medians")
    rows = []
    for c in levels:
        p, s, t = (statistics.median(v) for v in zip(*scores[c], strict=True))
        rows.append((c, f"{p:.3f}", f"{s:.4f}", f"{t:.0f}"))
    print(markdown(("complexity", "PESQ-WB", "STOI", "encode us/packet"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
