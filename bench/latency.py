"""How long audio takes to come back through the service (a script, not a test).

Starts two `percepnet-server`s (one worker each): one with the relay receive buffer (the
default) and one with aiortc's own audio jitter buffer (`--receive-buffer aiortc`).
A client in this process sends a speech-like clip in real time to each in turn, in
both modes, and measures for every 20 ms packet that comes back:

- round trip: from when the client sent the packet with that pts to when the frame
  with that pts came back, in ms (the service keeps the input's pts);
- audio lag: the delay of the returned audio against the sent clip (cross-correlation),
  which holds the enhancer's 30 ms and the codecs' delays;
- missing: packets that never came back (gaps in the returned pts).

The client's own receiver uses the relay buffer, so the figures are the server's
holding, not a playout buffer's at the client. The client's garbage collector is off
while a stream runs and collects between streams: a collection of a closed peer's
objects stalled the client's loop for about 100 ms, which would show as a late round
trip that the server did not cause. With --loss-every K the client's
sender drops every K-th RTP packet (one per K x 20 ms): what a lossy uplink does.

    python -m bench.latency [--seconds 6] [--repeats 3] [--loss-every 50] [--out F.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.common import (
    free_port,
    markdown,
    noisy_speech,
    server_command,
    start_server,
    wait_ready,
)
from percepnet.constants import SAMPLE_RATE
from server.client import PACKET_SAMPLES, ClientPeer, ClipTrack, lag_of, round_trip_ms
from server.media import aiortc_hooks

BUFFERS = ("relay", "aiortc")
MODES = ("passthrough", "enhance")
SETTLE_PACKETS = 25
"""Packets left out at the start of each stream (connection start-up)."""


async def probe(url: str, mode: str, seconds: float, loss_every: int) -> dict[str, float]:
    clip = noisy_speech(seconds, seed=3)
    gc.collect()
    gc.disable()
    try:
        return await _probe(url, mode, clip, seconds, loss_every)
    finally:
        gc.enable()


async def _probe(
    url: str, mode: str, clip: np.ndarray, seconds: float, loss_every: int
) -> dict[str, float]:
    track = ClipTrack(clip)
    peer = await ClientPeer.connect(url, track, mode=mode)
    if loss_every:
        peer.lose_outgoing_rtp(lambda n: n % loss_every == 0)
    try:
        async with asyncio.timeout(seconds + 20):
            await peer.wait_received(seconds - 0.2)
    finally:
        await peer.close()
    rec = peer.received
    delays = round_trip_ms(rec, track)[SETTLE_PACKETS:]
    pts = np.asarray(rec.pts)
    # gaps inside what came back (the last packets sent are still on their way at close)
    missing = int((pts[-1] - pts[0]) // PACKET_SAMPLES + 1 - len(pts))
    out = {
        "round_trip_p50_ms": float(np.median(delays)),
        "round_trip_p95_ms": float(np.quantile(delays, 0.95)),
        "round_trip_max_ms": float(delays.max()),
        "missing_packets": float(missing),
        "returned_packets": float(len(pts)),
    }
    if not loss_every:
        out["audio_lag_ms"] = 1e3 * lag_of(peer.received_audio(), clip) / SAMPLE_RATE
    return out


async def run(urls: dict[str, str], args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {}
    for r in range(args.repeats):
        for buffer in BUFFERS:
            for mode in MODES:
                res = await probe(urls[buffer], mode, args.seconds, args.loss_every)
                results.setdefault(f"{buffer}/{mode}", []).append(res)
                print(f"repeat {r + 1} {buffer:6s} {mode:11s} " + " ".join(
                    f"{k}={v:.1f}" for k, v in res.items()), flush=True)  # fmt: skip
    return results


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loss-every", type=int, default=0, help="drop every K-th packet (0: none)")
    ap.add_argument("--out", help="write results as JSON here")
    args = ap.parse_args()
    aiortc_hooks.install()  # the client: inline codecs, relay receive buffer
    servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    try:
        for buffer in BUFFERS:
            port = free_port()
            cmd = server_command(port, "--receive-buffer", buffer)
            url = f"http://127.0.0.1:{port}"
            servers[buffer] = (url, start_server(cmd, quiet=True))
        for url, proc in servers.values():
            if not wait_ready(url, proc):
                print(f"server at {url} did not start", file=sys.stderr)
                return 1
        results = asyncio.run(run({b: u for b, (u, _) in servers.items()}, args))
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    loss = f", every {args.loss_every}th packet dropped" if args.loss_every else ""
    print(f"\nmedians over {args.repeats} repeats of {args.seconds:.0f} s{loss} "
          f"(ms; packets of {1e3 * PACKET_SAMPLES / SAMPLE_RATE:.0f} ms)")  # fmt: skip
    keys = list(next(iter(results.values()))[0])
    rows = [
        (name, *(f"{statistics.median(run[k] for run in runs):.1f}" for k in keys))
        for name, runs in results.items()
    ]
    print(markdown(("receive buffer / mode", *keys), rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
