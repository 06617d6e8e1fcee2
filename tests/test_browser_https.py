"""The page as a user on another machine meets it: served over HTTPS by
`percepnet-server --tls-cert/--tls-key` itself, opened from a non-localhost origin
(https://percepnet.test:PORT, mapped to 127.0.0.1 inside Chromium only), and a whole
session: Join, cleaned audio back, Leave (issue 18).

The certificate is self-signed and made by the test; Chromium is told to accept it for
this run only. Over plain HTTP from such an origin the page is not a secure context and
gets no microphone; that is checked too.

Also the page's own hygiene: no request fails or gets an error status (no 404 for
/favicon.ico, no aborted DELETE on Leave), and Leave resets the views and ends the session
on the server.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile as sf

from percepnet.constants import SAMPLE_RATE
from server.clips import mix_at_snr, speech_like, white_noise
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, HAVE_CHROMIUM
from tests.test_server_logs import LISTENING, ServerProcess
from tests.tls import TEST_HOSTNAME, client_context, make_self_signed

pytestmark = pytest.mark.browser

RECORD_S = 2.0


def decode(result: dict[str, Any]) -> np.ndarray:
    assert result["sampleRate"] == SAMPLE_RATE
    raw = base64.b64decode(str(result["pcm16"]))
    return np.frombuffer(raw, dtype=np.int16).astype(np.float64) / 32768.0


async def launch(playwright_api: Any, wav: Path, insecure_ok: bool) -> Any:
    args = [
        *CHROMIUM_FLAGS,
        f"--use-file-for-fake-audio-capture={wav}",
        # the test's hostname resolves to loopback in this browser only (no DNS, no /etc/hosts)
        f"--host-resolver-rules=MAP {TEST_HOSTNAME} 127.0.0.1",
    ]
    if insecure_ok:
        args.append("--ignore-certificate-errors")  # the test's own self-signed certificate
    p = await playwright_api.async_playwright().start()
    browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=args)
    return p, browser


async def test_page_over_https_from_another_origin_runs_a_session(tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    if not HAVE_CHROMIUM:
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    speech = speech_like(3.0, seed=21, level=0.3)
    wav = tmp_path / "mic.wav"
    noisy = mix_at_snr(speech, white_noise(3.0, 1.0, seed=22), snr_db=10.0)
    sf.write(wav, np.clip(noisy, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    cert, key = make_self_signed(tmp_path)
    # The shipped model, as a user runs it; a generous frame deadline because Chromium,
    # the server and the test share this machine's two cores.
    server = await ServerProcess.start(
        "--workers", "1", "--frame-deadline-ms", "1000", "--tls-cert", str(cert),
        "--tls-key", str(key),
    )  # fmt: skip
    p = browser = None
    try:
        local = (await server.wait_for(LISTENING)).group(1)
        port = local.rsplit(":", 1)[1]
        origin = f"https://{TEST_HOSTNAME}:{port}"
        p, browser = await launch(playwright_api, wav, insecure_ok=True)
        page = await browser.new_page()
        errors: list[str] = []
        bad: list[str] = []
        deletes: list[int] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: bad.append(f"{r.method} {r.url}: {r.failure}"))

        def on_response(r: Any) -> None:
            if r.status >= 400:
                bad.append(f"{r.request.method} {r.url}: HTTP {r.status}")
            if r.request.method == "DELETE":
                deletes.append(r.status)

        page.on("response", on_response)
        await page.goto(origin + "/")
        assert await page.evaluate("[window.isSecureContext, location.origin]") == [
            True,
            origin,
        ]
        await page.click("#join")
        await page.wait_for_function("window.percepnet.connected()", timeout=20_000)
        await page.wait_for_function(
            "document.getElementById('frames').textContent !== '–'", timeout=10_000
        )
        heard = decode(await page.evaluate(f"window.percepnet.record({RECORD_S})"))
        session = await page.text_content("#session")
        key = await page.evaluate("window.percepnet.state.session")  # the owner's capability
        https = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(cert)))
        async with https:
            async with https.get(f"{local}/streams") as r:
                assert (await r.json())["active"] == 1
            async with https.get(f"{local}/streams/{key}") as r:
                mine = await r.json()
            assert mine["id"] == session, mine
            assert mine["frames_processed"] > 100
            spectrogram_drawn = await page.evaluate(CANVAS_INK, "spec-out")
            await page.click("#leave")
            await page.wait_for_function(
                "document.getElementById('session').textContent === '–'", timeout=5_000
            )
            async with asyncio.timeout(5):
                while True:  # the DELETE ended the session (no idle timeout waited for)
                    async with https.get(f"{local}/streams") as r:
                        if (await r.json())["active"] == 0:
                            break
                    await asyncio.sleep(0.1)
        views = await page.evaluate(VIEWS)
        hang_up = await page.evaluate("window.percepnet.state.hangUp")
        ink = [await page.evaluate(CANVAS_INK, c) for c in ("spec-in", "spec-out", "vad")]
        await asyncio.sleep(0.5)  # a late stats message or RTT poll would show up here
        views_later = await page.evaluate(VIEWS)
        await page.goto(origin + "/")  # a second load: nothing fails
        icon = await page.evaluate(ICON_SIZE)
    finally:
        if browser is not None:
            await browser.close()
        if p is not None:
            await p.stop()
        code = await server.stop() if server.proc.returncode is None else server.proc.returncode
        await server.kill()
    assert errors == [] and bad == [], (errors, bad)
    assert deletes in ([200], [204]) and hang_up["status"] == deletes[0], (deletes, hang_up)
    # Headless Chromium asks for no favicon at all, so a missing one would not show as a
    # 404 above: check that the page declares an inline icon (browsers then request no
    # /favicon.ico) and that it decodes.
    assert icon["href"].startswith("data:image/svg+xml,") and icon["width"] > 0, icon
    assert code == 0
    levels = 10 * np.log10(np.mean(heard.reshape(-1, 960) ** 2, axis=1) + 1e-12)
    assert np.percentile(levels, 90) > -40, "nothing came back"
    assert spectrogram_drawn > 0
    assert ink == [0, 0, 0], ink  # the spectrograms and voice activity are blank again
    assert views == views_later
    assert set(views["stats"].values()) == {"–"}, views
    assert views["levels"] == ["–", "–"] and views["meters"] == [-80, -80]
    assert views["join_enabled"] and views["status"] == "idle"
    log = "\n".join(server.lines)
    assert f"session {session} ended" in log


async def test_plain_http_from_another_origin_says_https_is_needed(tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    if not HAVE_CHROMIUM:
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    wav = tmp_path / "mic.wav"
    sf.write(wav, np.zeros(SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    server = await ServerProcess.start("--workers", "1", "--unity-gains")
    p = browser = None
    try:
        port = (await server.wait_for(LISTENING)).group(1).rsplit(":", 1)[1]
        p, browser = await launch(playwright_api, wav, insecure_ok=False)
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(f"http://{TEST_HOSTNAME}:{port}/")
        secure = await page.evaluate("window.isSecureContext")
        status = await page.text_content("#status")
        join_disabled = await page.is_disabled("#join")
    finally:
        if browser is not None:
            await browser.close()
        if p is not None:
            await p.stop()
        if server.proc.returncode is None:
            await server.stop()
        await server.kill()
    assert secure is False
    assert errors == []  # the page explains instead of throwing
    assert join_disabled and status is not None and "HTTPS" in status, status


# Non-blank pixels of a canvas (alpha > 0), by element id.
CANVAS_INK = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
}"""

# The page's declared icon: its href and the width it decodes to (0: broken).
ICON_SIZE = """async () => {
  const link = document.querySelector('link[rel~="icon"]');
  if (!link) return {href: '', width: 0};
  const img = new Image();
  img.src = link.href;
  try { await img.decode(); } catch (e) { return {href: link.href, width: 0}; }
  return {href: link.href, width: img.naturalWidth};
}"""

VIEWS = """() => {
  const t = (id) => document.getElementById(id).textContent;
  const ids = ['latency', 'rtt', 'playout', 'loss', 'cpu', 'frames', 'session', 'vad-value'];
  return {
    stats: Object.fromEntries(ids.map((id) => [id, t(id)])),
    levels: [t('level-in'), t('level-out')],
    meters: [document.getElementById('meter-in').value, document.getElementById('meter-out').value],
    join_enabled: !document.getElementById('join').disabled,
    status: t('status'),
  };
}"""
