"""A real headless Chromium against the service: fake microphone in, page records what
comes back, the test measures noise reduction on that recording.

Needs Debian's Chromium (`apt-get install -y chromium`) and the playwright PyPI
package (no `playwright install`: it is launched on /usr/bin/chromium). Run with
`pytest -m browser tests/test_browser.py`; skipped when either is missing.

Two enhancers: a classical stationary-noise suppressor as the gain source (always;
checks the whole page/WebRTC/enhancer path reduces noise) and the shipped model
(skipped while models/percepnet-int8.onnx does not exist).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from aiohttp.test_utils import TestServer

from bench.common import CHROMIUM, CHROMIUM_FLAGS
from percepnet.analysis import Frames
from percepnet.constants import SAMPLE_RATE
from percepnet.enhancer import Enhancer, GainPair
from percepnet.runtime import DEFAULT_MODEL, load_enhancer_factory
from server.app import MANAGER_KEY, create_app
from server.clips import mix_at_snr, speech_like, white_noise
from server.ops.config import Config

pytestmark = pytest.mark.browser

HAVE_CHROMIUM = CHROMIUM.exists()
RECORD_S = 4.0


class StationarySuppressor:
    """A classical noise suppressor as a GainSource: per-band noise floor by minimum
    tracking (falls at once, rises 2 % a frame), Wiener-like g = sqrt(1 - 2 N / E).
    The floor starts at the first frame with any energy (the stream opens on zeros)."""

    def __init__(self) -> None:
        self.noise: np.ndarray | None = None

    def reset(self) -> None:
        self.noise = None

    def __call__(self, frames: Frames) -> GainPair:
        E = np.asarray(frames.E_y)
        g = np.empty_like(E)
        for i, e in enumerate(E):
            if self.noise is None:
                if e.sum() <= 1e-8:
                    g[i] = 1.0
                    continue
                self.noise = e.copy()
            n = self.noise = np.minimum(e, self.noise * 1.02)
            g[i] = np.sqrt(np.clip(1.0 - 2.0 * n / (e + 1e-12), 0.01, 1.0))
        return g, None


def suppressor_enhancer() -> Enhancer:
    return Enhancer(StationarySuppressor())


def model_factory() -> Callable[[], Enhancer]:
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"needs the trained model: {DEFAULT_MODEL} is absent")
    return load_enhancer_factory(DEFAULT_MODEL)


def frame_levels_db(x: np.ndarray, hop: int = 960) -> np.ndarray:
    n = len(x) // hop
    return 10 * np.log10(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)


def decode(result: dict[str, object]) -> np.ndarray:
    assert result["sampleRate"] == SAMPLE_RATE
    raw = base64.b64decode(str(result["pcm16"]))
    return np.frombuffer(raw, dtype=np.int16).astype(np.float64) / 32768.0


@pytest.fixture
def noisy_wav(tmp_path: Path) -> Path:
    speech = speech_like(4.0, seed=11, level=0.3)
    noisy = mix_at_snr(speech, white_noise(4.0, 1.0, seed=12), snr_db=5.0)
    path = tmp_path / "noisy.wav"
    # 16-bit PCM 48 kHz mono, as Chromium's fake capture wants; it loops the file
    sf.write(path, np.clip(noisy, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    return path


@pytest.mark.parametrize("which", ["suppressor", "model"])
async def test_browser_page_reduces_noise(which: str, noisy_wav: Path, tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    if not HAVE_CHROMIUM:
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    factory = suppressor_enhancer if which == "suppressor" else model_factory()
    # A generous deadline: Chromium, the server and the test share two cores here, and
    # this test is about what the page hears, not about shedding load.
    app = create_app(Config(host="127.0.0.1", port=0, frame_deadline_ms=1000.0), factory)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/"))
    try:
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(CHROMIUM),
                args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={noisy_wav}"],
            )
            try:
                page = await browser.new_page(viewport={"width": 1040, "height": 760})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(url)
                await page.click("#join")
                await page.wait_for_function("window.percepnet.connected()", timeout=15_000)
                await asyncio.sleep(1.5)  # noise estimate settles, jitter buffers fill
                enhanced = decode(await page.evaluate(f"window.percepnet.record({RECORD_S})"))
                shot = Path(os.environ.get("PERCEPNET_SCREENSHOT_DIR", tmp_path))
                await page.screenshot(path=str(shot / f"page-{which}.png"), full_page=True)
                await page.click("#enabled")  # the page's own toggle, over the data channel
                await asyncio.sleep(0.5)
                bypassed = decode(await page.evaluate(f"window.percepnet.record({RECORD_S})"))
                session_text = await page.text_content("#session")
                vad_text = await page.text_content("#vad-value")
                loss_text = await page.text_content("#loss")
                playout_text = await page.text_content("#playout")
                manager = app[MANAGER_KEY]
                assert manager.active == 1
                # the page shows the public id; the key (the secret) stays in its state
                snap = manager.sessions[str(session_text)].snapshot()
                await page.click("#leave")
                await asyncio.sleep(0.5)
                assert errors == []
            finally:
                await browser.close()
    finally:
        await server.close()

    assert snap["enabled"] is False and snap["frames_processed"] > 500
    assert snap["frames_bypassed"] == 0 and snap["frames_failed"] == 0
    assert vad_text not in (None, "", "–")
    assert loss_text == "0 / 0"  # packets lost / late at the server's receive buffer
    assert re.fullmatch(r"\d+\.\d ms", playout_text or ""), playout_text  # the browser's own
    on, off = frame_levels_db(enhanced), frame_levels_db(bypassed)
    assert np.percentile(off, 95) > -40, "bypassed recording is (nearly) silent"
    floor_drop = np.percentile(off, 10) - np.percentile(on, 10)  # noise in the pauses
    speech_drop = np.percentile(off, 95) - np.percentile(on, 95)  # loud speech frames
    print(f"page: noise floor down {floor_drop:.1f} dB, loud speech down {speech_drop:.1f} dB")
    assert floor_drop > 6.0, (floor_drop, speech_drop)
    assert speech_drop < 4.0, (floor_drop, speech_drop)
    assert manager.active == 0
