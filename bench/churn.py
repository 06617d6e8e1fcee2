"""Do peers joining and leaving disturb the streams already running? (a script, not a test)

Starts `percepnet-server` (one worker), connects N enhanced peers that stay for the
whole run, and measures windows of --seconds each, alternating:

- quiet: nothing else happens;
- churn: another client joins a pass-through peer, keeps it 1 s, closes it, waits 1 s,
  and so on through the window.

For each window it prints the frames the steady streams passed through late
(pass-through peers never count as late, so every late frame is a steady stream's), the
event-loop lag p99 and the largest lag the server saw. With --pin the server runs
on core 0 and both clients on core 1, as bench.service_load --pin does.

    python -m bench.churn --streams 8 --seconds 20 --repeats 2 --pin
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from bench.common import (
    REPO,
    delta,
    free_port,
    noisy_speech,
    quantile,
    scrape,
    server_command,
    start_server,
    wait_ready,
)

LATE = 'percepnet_frames_total{outcome="bypassed"}'
PROCESSED = 'percepnet_frames_total{outcome="processed"}'
LAG = "percepnet_event_loop_lag_seconds"


async def churn(url: str, until: float) -> int:
    """Join, hold 1 s, leave, wait 1 s, until `until` (monotonic): the peers it made."""
    from server.client import ClientPeer, ClipTrack

    clip = noisy_speech(4.0, seed=3)
    made = 0
    while time.monotonic() < until - 2.0:
        peer = await ClientPeer.connect(url, ClipTrack(clip, loop=True), mode="passthrough")
        await asyncio.sleep(1.0)
        await peer.close()
        made += 1
        await asyncio.sleep(1.0)
    return made


def churn_main(url: str, seconds: float) -> None:
    """Entry point of the churn client process: prints how many peers it made."""
    print(asyncio.run(churn(url, time.monotonic() + seconds)), flush=True)


async def steady_windows(args: argparse.Namespace, url: str) -> list[dict[str, object]]:
    from server.client import ClientPeer, ClipTrack

    clip = noisy_speech(4.0, seed=1)
    peers = [
        await ClientPeer.connect(url, ClipTrack(clip, loop=True), mode="enhance")
        for _ in range(args.streams)
    ]
    await asyncio.sleep(2.0)  # past the joins of the steady peers themselves
    rows: list[dict[str, object]] = []
    try:
        for repeat in range(args.repeats):
            for kind in ("quiet", "churn"):
                before = scrape(url)
                churner = None
                if kind == "churn":
                    churner = await asyncio.create_subprocess_exec(
                        *(["nice", "-n", str(args.churn_nice)] if args.churn_nice else []),
                        sys.executable, "-m", "bench.churn", "--churn-client", url,
                        str(args.seconds),
                        stdout=asyncio.subprocess.PIPE, cwd=REPO,
                    )  # fmt: skip
                await asyncio.sleep(args.seconds)
                after = scrape(url)
                made = 0
                if churner is not None:
                    out, _ = await asyncio.wait_for(churner.communicate(), 30)
                    made = int(out.decode().strip() or 0)
                row: dict[str, object] = {
                    "repeat": repeat,
                    "window": kind,
                    "peers_joined_and_left": made,
                    "late_frames": delta(before, after, LATE),
                    "frames": delta(before, after, PROCESSED) + delta(before, after, LATE),
                    "lag_p99_ms": 1e3 * quantile(before, after, LAG, 0.99),
                    "lag_max_ms": 1e3 * after.get("percepnet_event_loop_lag_max_seconds", 0.0),
                }
                rows.append(row)
                print(
                    f"{kind:6s} repeat {repeat}: {made:2d} joins, late frames "
                    f"{row['late_frames']:.0f} of {row['frames']:.0f}, loop lag p99 "
                    f"{row['lag_p99_ms']:.1f} ms, last window max {row['lag_max_ms']:.1f} ms",
                    flush=True,
                )
                await asyncio.sleep(2.0)  # let the last churn peer's teardown finish
    finally:
        for peer in peers:
            await peer.close()
    return rows


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--churn-client":
        churn_main(sys.argv[2], float(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pin", action="store_true", help="server on core 0, clients on core 1")
    ap.add_argument(
        "--churn-nice",
        type=int,
        default=0,
        help="run the churn client at this nice value, so that on a shared core it cannot "
        "delay the steady peers' client",
    )
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = server_command(port, "--max-streams", "64", "--log-level", "ERROR")
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) < 2:
        print("--pin needs 2 cores", file=sys.stderr)
        return 2
    server = start_server(cmd, {cores[0]} if args.pin else None)
    if args.pin:
        os.sched_setaffinity(0, set(cores[1:]))  # this process and the churn client
    try:
        if not wait_ready(url, server, tries=300):
            print("server did not become ready", file=sys.stderr)
            return 1
        rows = asyncio.run(steady_windows(args, url))
    finally:
        server.terminate()
        server.wait(30)
    for kind in ("quiet", "churn"):
        late = [r["late_frames"] for r in rows if r["window"] == kind]
        print(f"{kind}: late frames per window {late}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
