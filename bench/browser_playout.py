"""The browser's own playout buffer behind the service (a script, not a test).

Serves the page with the shipped model, opens it in headless Chromium with a fake
microphone playing a noisy clip, joins, and reads the page's "Playout buffer (this
browser)" once a second: the mean time the samples Chromium played in that second
spent in its jitter buffer (WebRTC stats: jitterBufferDelay / jitterBufferEmittedCount).
Once with each server receive buffer, so their effect on the browser's side shows.

    python -m bench.browser_playout [--seconds 20] [--repeats 2]

The two buffers alternate, and their order flips each repeat.

Needs Debian's chromium (or PERCEPNET_CHROMIUM) and playwright, as tests/test_browser.py
does.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from aiohttp.test_utils import TestServer

from bench.common import CHROMIUM, CHROMIUM_FLAGS, noisy_speech
from percepnet.constants import SAMPLE_RATE
from percepnet.runtime import load_enhancer_factory
from server.app import create_app
from server.ops.config import Config

SETTLED_AFTER_S = 8
"""Readings from this second on count as the settled figure."""


async def playout_ms(buffer: str, seconds: int, wav: Path) -> list[float]:
    from playwright.async_api import async_playwright

    config = Config(host="127.0.0.1", port=0, receive_buffer=buffer)
    server = TestServer(create_app(config, load_enhancer_factory()), host="127.0.0.1")
    await server.start_server()
    readings: list[float] = []
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(CHROMIUM),
                args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={wav}"],
            )
            try:
                page = await browser.new_page()
                await page.goto(str(server.make_url("/")))
                await page.click("#join")
                await page.wait_for_function("window.percepnet.connected()", timeout=15_000)
                for _ in range(seconds):
                    await asyncio.sleep(1.0)
                    text = (await page.text_content("#playout")) or ""
                    readings.append(float(text.split()[0]) if text.endswith(" ms") else np.nan)
            finally:
                await browser.close()
    finally:
        await server.close()
    return readings


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if not CHROMIUM.exists():
        print(f"no Chromium at {CHROMIUM}", file=sys.stderr)
        return 1
    wav = Path(tempfile.mkdtemp()) / "noisy.wav"
    noisy = noisy_speech(4.0, seed=11, snr_db=5.0, level=0.3)
    sf.write(wav, np.clip(noisy, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    settled: dict[str, list[float]] = {"relay": [], "aiortc": []}
    for r in range(args.repeats):
        order = ["relay", "aiortc"] if r % 2 == 0 else ["aiortc", "relay"]
        for buffer in order:
            ms = asyncio.run(playout_ms(buffer, args.seconds, wav))
            late = [m for m in ms[SETTLED_AFTER_S:] if np.isfinite(m)]
            settled[buffer].append(statistics.median(late) if late else np.nan)
            print(f"repeat {r + 1}, server receive buffer {buffer}: playout buffer by second, ms")
            print("  " + " ".join(f"{m:.0f}" for m in ms))
    for buffer, values in settled.items():
        cells = ", ".join(f"{v:.1f}" for v in values)
        print(f"{buffer}: median from second {SETTLED_AFTER_S + 1} on, per repeat: {cells} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
