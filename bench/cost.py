"""Per-frame CPU cost of the enhancer, next to RNNoise and an aiortc Opus pass-through.

All measured in this one run, on the same 10 ms frames of a noisy speech-like signal,
as CPU time of this process (time.process_time_ns), so other load on the machine
inflates them less than wall time would. Prints median and p99 per 10 ms of audio,
the real-time factor (CPU time / audio time) and streams per core (1 / RTF).

    python -m bench.cost [--seconds 20] [--model models/percepnet-int8.onnx]
        [--also "v12 int8 (192/256)=runs/v12-export/percepnet-int8.onnx"]

The systems run interleaved, one second of audio each in turn, so the machine's speed
drifting during the run (it does here, by 2x at times) moves them together; the
last column is each median over RNNoise's.

Rows "20 ms packets" run Enhancer.process_frames on two frames at once, as the
service does with each 20 ms Opus packet; costs are still per 10 ms of audio.
Rows "N streams batched" run N streams' packets together, as a service worker does
(analysis of each, one model run per frame for all of them, synthesis of each);
their costs are per stream and per 10 ms of audio.

'aiortc pass-through' is the per-stream media work every WebRTC stream costs the
server anyway: Opus decode + encode of the 20 ms packets, counted per 10 ms.
"""

from __future__ import annotations

import argparse
import fractions
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import PACKET_FRAMES, REPO, markdown, noisy_speech, packets
from percepnet.constants import FRAME_SIZE, NB_FEATURES, SAMPLE_RATE
from percepnet.enhancer import Enhancer, warm_up
from percepnet.metrics import RNNoiseReference
from percepnet.runtime import OnnxModel, OnnxSource, gains_for_many, load_model

FRAME_MS = 1000.0 * FRAME_SIZE / SAMPLE_RATE
BLOCK_FRAMES = 100


def measure(
    step: Callable[[np.ndarray], object], frames: np.ndarray, per_call: int = 1
) -> np.ndarray:
    """CPU ns per 10 ms frame for each call (a call may consume several frames)."""
    costs = np.empty(len(frames) // per_call)
    for i in range(len(costs)):
        chunk = frames[i * per_call : (i + 1) * per_call]
        t = time.process_time_ns()
        step(chunk)
        costs[i] = (time.process_time_ns() - t) / per_call
    return costs


def batched_streams(model: OnnxModel, n: int) -> Callable[[np.ndarray], object]:
    """n streams, each fed the same packet, through one model run per frame."""
    enhancers = [Enhancer(OnnxSource(model)) for _ in range(n)]

    def step(chunk: np.ndarray) -> object:
        x = chunk.reshape(-1)
        blocks = [e.analyse_frames(x) for e in enhancers]
        results = gains_for_many([e.source for e in enhancers], blocks)
        outs = []
        for e, b, res in zip(enhancers, blocks, results, strict=True):
            assert not isinstance(res, Exception)
            outs.append(e.synthesise_frames(b, *res))
        return outs

    return step


def model_batch(model: OnnxModel, n: int) -> Callable[[np.ndarray], object]:
    """One model frame for n streams in one run."""
    states = [model.initial_state() for _ in range(n)]
    feats = np.zeros((n, NB_FEATURES), np.float32)

    def step(_chunk: np.ndarray) -> object:
        _, _, states[:] = model.step_many(feats, states)
        return None

    return step


def opus_passthrough() -> Callable[[np.ndarray], object]:
    import av
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    enc, dec = OpusEncoder(), OpusDecoder()
    pts = [0]

    def step(chunk: np.ndarray) -> object:
        pcm = np.clip(chunk.reshape(-1) * 32767, -32768, 32767).astype(np.int16)
        stereo = np.repeat(pcm, 2)[None, :]
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts[0]
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        pts[0] += pcm.shape[0]
        packets, _ = enc.encode(frame)
        out = []
        for p in packets:
            out.extend(dec.decode(JitterFrame(data=p, timestamp=0)))
        return out

    return step


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model", default=str(REPO / "models" / "percepnet-int8.onnx"))
    parser.add_argument("--float-model", default=str(REPO / "models" / "percepnet.onnx"))
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="another model to measure in the same run (another network size), repeatable",
    )
    args = parser.parse_args()
    extra = [a.split("=", 1) for a in args.also]
    if any(len(e) != 2 or not Path(e[1]).exists() for e in extra):
        parser.error("--also takes LABEL=PATH of an existing model file")
    x = noisy_speech(args.seconds, snr_db=5.0, level=0.3)
    frames = packets(x).reshape(-1, FRAME_SIZE)

    warm_up()  # compiled kernels: loaded (or compiled) before anything is timed

    # (name, step, frames per call, streams per call)
    def per_frame(e: Enhancer) -> Callable[[np.ndarray], object]:
        return lambda f: e.process(f[0])

    def per_packet(e: Enhancer) -> Callable[[np.ndarray], object]:
        return lambda f: e.process_frames(f.reshape(-1))

    systems: list[tuple[str, Callable[[np.ndarray], object], int, int]] = []
    dsp, dsp2 = Enhancer(), Enhancer()
    systems.append(("PercepNet DSP alone (unity gains)", lambda f: dsp.process(f[0]), 1, 1))
    systems.append(
        (
            "PercepNet DSP alone, 20 ms packets",
            lambda f: dsp2.process_frames(f.reshape(-1)),
            PACKET_FRAMES,
            1,
        )
    )
    for label, path in (
        ("PercepNet DSP + int8 model", args.model),
        ("PercepNet DSP + float model", args.float_model),
        *((f"PercepNet DSP + {name}", p) for name, p in extra),
    ):
        if not Path(path).exists():
            continue
        enh = Enhancer(OnnxSource(load_model(path)))
        systems.append((label, per_frame(enh), 1, 1))
        enh2 = Enhancer(OnnxSource(load_model(path)))
        systems.append(
            (
                label + ", 20 ms packets",
                per_packet(enh2),
                PACKET_FRAMES,
                1,
            )
        )
        model = load_model(path)
        systems.append((label + ", 4 streams batched", batched_streams(model, 4), PACKET_FRAMES, 4))
        short = label.replace("PercepNet DSP + ", "model alone: ")
        systems.append((short, model_batch(model, 1), 1, 1))
        systems.append((short + ", 4 streams batched", model_batch(model, 4), 1, 4))
    rn = RNNoiseReference()
    systems.append(("RNNoise (pyrnnoise, per frame)", lambda f: rn.process_frame(f[0]), 1, 1))
    systems.append(("aiortc pass-through (Opus dec+enc)", opus_passthrough(), PACKET_FRAMES, 1))

    # Interleaved in blocks of 1 s of audio: a change in the machine's speed during the
    # run (frequent here) hits every system alike, so the ratios hold.
    costs: dict[str, list[np.ndarray]] = {name: [] for name, _, _, _ in systems}
    for start in range(0, len(frames), BLOCK_FRAMES):
        block = frames[start : start + BLOCK_FRAMES]
        for name, step, per_call, streams in systems:
            costs[name].append(measure(step, block, per_call) / streams)
    rows = [(name, np.concatenate(parts)) for name, parts in costs.items()]
    reference = float(np.median(np.concatenate(costs["RNNoise (pyrnnoise, per frame)"])))

    print(f"{len(frames)} frames of {FRAME_MS:.0f} ms, CPU time per 10 ms of audio (one thread)\n")
    header = ("system", "median (us)", "p99 (us)", "RTF (mean)", "% of a core", "streams/core",
              "x RNNoise")  # fmt: skip
    table = []
    for name, ns in rows:
        us = ns / 1000.0
        rtf = float(np.mean(us)) / (FRAME_MS * 1000.0)
        table.append((name, f"{np.median(us):.0f}", f"{np.percentile(us, 99):.0f}", f"{rtf:.4f}",
                      f"{100 * np.median(us) / (FRAME_MS * 1000):.2f}", f"{1 / rtf:.0f}",
                      f"{np.median(ns) / reference:.2f}"))  # fmt: skip
    print(markdown(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
