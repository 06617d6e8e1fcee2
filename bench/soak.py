"""Soak and leak checks of one worker (a script, not a test).

soak: starts `percepnet-server` (one worker), keeps --streams enhanced peers up for
--minutes, while another client joins and leaves every --join-every seconds and every
--abandon-every seconds --abandon offers arrive that never connect (no ICE candidates;
the server closes them after --connect-timeout). Every --sample-every seconds it
samples the worker's RSS, open fds and asyncio tasks (from /metrics) and the frames
failed and passed through. At the end it stops the churn, closes the streams, waits
for the worker to be idle and compares tasks and fds with the idle worker's at the
start: what is left over leaked.

    python -m bench.soak soak --streams 8 --minutes 30          # the issue's soak
    python -m bench.soak soak --streams 2 --minutes 1 --unity-gains   # a short smoke run

abandoned: in this process (so live objects can be counted), --cycles cycles of
--offers abandoned offers; after each cycle, once the server has closed them: RSS,
the bytes Python has allocated (tracemalloc) and the number of live aiortc/aioice
objects. Then malloc_trim(0): memory that glibc gives back is memory the allocator had
kept, not memory still referenced. Live objects back at their baseline, tracemalloc
flat and RSS falling at the trim mean heap fragmentation, not a leak.

    python -m bench.soak abandoned --cycles 8 --offers 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import aiohttp
import numpy as np

from bench.common import free_port, scrape, server_command, start_server, wait_ready
from server.client import ClientPeer, ClipTrack, candidate_less_offer
from server.clips import speech_like

FRAME_OUTCOMES = ("failed", "bypassed", "processed")
TRACKED = (
    "RTCPeerConnection",
    "RTCDtlsTransport",
    "RTCIceTransport",
    "RTCSctpTransport",
    "Connection",  # aioice
    "Session",
    "Enhancer",
)


def write_json(path: str, data: object) -> None:
    Path(path).write_text(json.dumps(data, indent=1))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def abandon(http: aiohttp.ClientSession, url: str, offer: str, n: int) -> list[int]:
    async def one() -> int:
        async with http.post(url + "/offer", json={"sdp": offer, "type": "offer"}) as r:
            await r.read()
            return r.status

    return list(await asyncio.gather(*(one() for _ in range(n))))


# -- soak -------------------------------------------------------------------------------
async def soak(args: argparse.Namespace) -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = server_command(
        port, "--max-streams", str(args.streams + args.abandon + 4),
        "--max-pending", str(args.abandon + 4),
        "--max-pending-per-client", str(args.abandon + 4),
        "--connect-timeout", str(args.connect_timeout), "--log-level", "WARNING",
    )  # fmt: skip
    if args.unity_gains:
        cmd.append("--unity-gains")
    proc = start_server(cmd)
    samples: list[dict[str, float]] = []
    try:
        if not await asyncio.to_thread(wait_ready, url, proc, 600):
            raise RuntimeError(f"server did not become ready (exit status {proc.poll()})")
        await asyncio.sleep(6)  # one loop-lag window: the idle task count is sampled
        idle = await asyncio.to_thread(scrape, url)
        base = {"rss": rss_mb(proc.pid), "fds": idle["process_open_fds"],
                "tasks": idle["percepnet_event_loop_tasks"]}  # fmt: skip
        print(f"idle worker: {base}")
        offer = await candidate_less_offer()
        peers = [
            await ClientPeer.connect(url, ClipTrack(speech_like(4.0, seed=i), loop=True))
            for i in range(args.streams)
        ]
        stop = asyncio.Event()
        churn = {"joins": 0, "join_failures": 0, "abandoned": 0}

        async def joiner() -> None:
            while not stop.is_set():
                try:
                    peer = await ClientPeer.connect(url, ClipTrack(speech_like(1.0), loop=True))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(3):
                            await peer.wait_received(1.0)
                    await peer.close()
                    churn["joins"] += 1
                except Exception:
                    churn["join_failures"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.join_every)

        async def abandoner(http: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                statuses = await abandon(http, url, offer, args.abandon)
                churn["abandoned"] += statuses.count(200)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.abandon_every)

        async with aiohttp.ClientSession() as http:
            tasks = [asyncio.create_task(joiner()), asyncio.create_task(abandoner(http))]
            start = time.monotonic()
            while time.monotonic() - start < 60 * args.minutes:
                await asyncio.sleep(args.sample_every)
                m = await asyncio.to_thread(scrape, url)
                samples.append({
                    "t_s": round(time.monotonic() - start, 1),
                    "rss_mb": round(rss_mb(proc.pid), 1),
                    "fds": m["process_open_fds"],
                    "tasks": m["percepnet_event_loop_tasks"],
                    "active": m["percepnet_active_streams"],
                    "failed": m['percepnet_frames_total{outcome="failed"}'],
                    "bypassed": m['percepnet_frames_total{outcome="bypassed"}'],
                    "processed": m['percepnet_frames_total{outcome="processed"}'],
                })  # fmt: skip
                print(samples[-1], flush=True)
            stop.set()
            await asyncio.gather(*tasks)
        for p in peers:
            await p.close()
        await asyncio.sleep(args.connect_timeout + 7)  # pending closed, a lag window passed
        end = await asyncio.to_thread(scrape, url)
        left = {"rss": rss_mb(proc.pid), "fds": end["process_open_fds"],
                "tasks": end["percepnet_event_loop_tasks"],
                "active": end["percepnet_active_streams"]}  # fmt: skip
        print(f"\nchurn: {churn}")
        print(f"after: {left}")
        rss = [s["rss_mb"] for s in samples]
        half = len(rss) // 2
        print(
            f"RSS first half mean {np.mean(rss[:half] or rss):.1f} MB, second half "
            f"{np.mean(rss[half:]):.1f} MB, min {min(rss):.1f}, max {max(rss):.1f}"
        )
        frames = {k: end[f'percepnet_frames_total{{outcome="{k}"}}'] for k in FRAME_OUTCOMES}
        print(
            f"frames failed {frames['failed']:.0f}, passed through late "
            f"{frames['bypassed']:.0f}, processed {frames['processed']:.0f}"
        )
        print(
            f"leaked: tasks {left['tasks'] - base['tasks']:+.0f}, "
            f"fds {left['fds'] - base['fds']:+.0f}, streams still active {left['active']:.0f}"
        )
        if args.out:
            write_json(args.out, {"base": base, "after": left, "churn": churn, "samples": samples})
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
    return 0


# -- abandoned offers, in process ----------------------------------------------------------
def live_objects() -> dict[str, int]:
    gc.collect()
    counts = dict.fromkeys(TRACKED, 0)
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in counts:
            counts[name] += 1
    return counts


def malloc_trim() -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.malloc_trim(0))


async def abandoned(args: argparse.Namespace) -> int:
    from aiohttp import web

    from percepnet.enhancer import Enhancer
    from server.app import MANAGER_KEY, create_app
    from server.ops.config import Config

    config = Config(
        host="127.0.0.1",
        port=0,
        max_streams=args.offers + 4,
        max_pending=args.offers + 4,
        max_pending_per_client=args.offers + 4,
        connect_timeout_s=args.connect_timeout,
    )
    app = create_app(config, Enhancer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    url = f"http://127.0.0.1:{port}"
    manager = app[MANAGER_KEY]
    offer = await candidate_less_offer()
    tracemalloc.start()
    pid = os.getpid()
    rows = []

    def row(label: str) -> None:
        traced, _ = tracemalloc.get_traced_memory()
        rows.append({"after": label, "rss_mb": round(rss_mb(pid), 1),
                     "traced_mb": round(traced / 2**20, 2), **live_objects()})  # fmt: skip
        print(rows[-1], flush=True)

    async with aiohttp.ClientSession() as http:
        # one cycle first: code paths, caches and codecs are loaded once, not leaked
        await abandon(http, url, offer, args.offers)
        async with asyncio.timeout(args.connect_timeout + 10):
            await manager.wait_idle()
        await asyncio.sleep(0.5)  # the peer connections' close() calls finish
        row("warm-up cycle")
        for cycle in range(args.cycles):
            statuses = await abandon(http, url, offer, args.offers)
            assert statuses.count(200) == args.offers, statuses
            async with asyncio.timeout(args.connect_timeout + 10):
                await manager.wait_idle()
            await asyncio.sleep(0.5)
            row(f"cycle {cycle + 1}")
    trimmed = malloc_trim()
    rows.append({"after": "malloc_trim(0)" if trimmed else "(no malloc_trim)",
                 "rss_mb": round(rss_mb(pid), 1)})  # fmt: skip
    print(rows[-1])
    await runner.cleanup()
    if args.out:
        write_json(args.out, rows)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("soak", help="a worker under streams, churn and abandoned offers")
    s.add_argument("--streams", type=int, default=8)
    s.add_argument("--minutes", type=float, default=30.0)
    s.add_argument("--join-every", type=float, default=3.0, help="seconds between joins")
    s.add_argument("--abandon", type=int, default=64, help="abandoned offers per cycle")
    s.add_argument("--abandon-every", type=float, default=30.0)
    s.add_argument("--connect-timeout", type=float, default=10.0)
    s.add_argument("--sample-every", type=float, default=10.0)
    s.add_argument("--unity-gains", action="store_true", help="no model (DSP only)")
    s.add_argument("--out", help="write the samples as JSON here")
    a = sub.add_parser("abandoned", help="RSS, live objects and malloc_trim over cycles")
    a.add_argument("--cycles", type=int, default=8)
    a.add_argument("--offers", type=int, default=64)
    a.add_argument("--connect-timeout", type=float, default=2.0)
    a.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args()
    return asyncio.run(soak(args) if args.mode == "soak" else abandoned(args))


if __name__ == "__main__":
    sys.exit(main())
