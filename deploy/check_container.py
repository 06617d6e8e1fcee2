"""End-to-end check of a running service from outside its container.

    python3 deploy/check_container.py http://127.0.0.1:18080

Health and readiness, one WebRTC session (an aiortc peer from server/client.py sends
3 s of a noisy speech-like clip and must get 3 s of audio back), the stream visible in
/streams while it runs, and the metrics the dashboards read. Exit status 0 when all pass.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import numpy as np

from percepnet.constants import SAMPLE_RATE
from server.client import ClientPeer, ClipTrack
from server.clips import mix_at_snr, speech_like, white_noise

SECONDS = 3.0
DASHBOARD_METRICS = (
    "percepnet_active_streams",
    "percepnet_stream_capacity",
    "percepnet_frame_processing_seconds_bucket",
    "percepnet_frames_total",
    "percepnet_event_loop_lag_seconds_bucket",
    "percepnet_sessions_total",
)


async def check(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(base + path) as r:
                assert r.status == 200, (path, r.status, await r.text())
        clean = speech_like(SECONDS, seed=31)
        noisy = mix_at_snr(clean, white_noise(SECONDS, 1.0, seed=32), snr_db=5.0)
        peer = await ClientPeer.connect(base, ClipTrack(noisy))
        try:
            async with asyncio.timeout(30):
                await peer.wait_received(SECONDS)
            async with http.get(base + "/streams") as r:
                streams = await r.json()
            assert streams["active"] >= 1, streams
            async with http.get(base + "/metrics") as r:
                metrics = await r.text()
        finally:
            await peer.close()
    y = peer.received_audio()
    assert len(y) >= SECONDS * SAMPLE_RATE, len(y)
    level = 20 * np.log10(np.std(y) + 1e-12)
    assert level > -60, f"silence came back ({level:.1f} dBFS)"
    missing = [m for m in DASHBOARD_METRICS if m not in metrics]
    assert not missing, f"metrics missing: {missing}"
    print(f"webrtc: {len(y) / SAMPLE_RATE:.2f} s back at {level:.1f} dBFS; metrics present")


def main() -> int:
    base = (sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080").rstrip("/")
    try:
        asyncio.run(check(base))
    except (AssertionError, aiohttp.ClientError, TimeoutError) as exc:
        print(f"check failed: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
