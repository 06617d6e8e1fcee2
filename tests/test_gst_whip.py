"""An independent WebRTC stack as a client: GStreamer's webrtcbin publishes over WHIP
(tests/gst_whip_client.py, run by Debian's python3) and records what the service sends
back on the same connection (issue 18).

The WHIP client is GStreamer's own: its ICE agent (libnice), DTLS/SRTP (OpenSSL via
gst-plugins-bad) and RTP stack, nothing of aiortc. The test checks that the service
enhanced the frames and that the audio coming back is cleaned: its noise floor against
the same client's pass-through run. Needs Debian's python3-gst-1.0,
gir1.2-gst-plugins-bad-1.0, gstreamer1.0-nice, gstreamer1.0-plugins-{good,bad}; skipped,
saying what is missing, without them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from percepnet.constants import SAMPLE_RATE
from percepnet.runtime import DEFAULT_MODEL, load_enhancer_factory
from server.clips import mix_at_snr, speech_like, white_noise
from tests.test_server import serve

SYSTEM_PYTHON = Path("/usr/bin/python3")
CLIENT = Path(__file__).resolve().parent / "gst_whip_client.py"
SECONDS = 6.0
CALL_S = 5.0
PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); "
    "gi.require_version('GstSdp', '1.0'); from gi.repository import Gst; Gst.init(None); "
    "missing = [e for e in ('webrtcbin', 'nicesrc', 'dtlssrtpdec', 'opusenc', 'opusdec', "
    "'rtpopuspay', 'rtpopusdepay', 'wavparse') if Gst.ElementFactory.find(e) is None]; "
    "print(','.join(missing))"
)


def gstreamer_missing() -> str | None:
    """Why the GStreamer client cannot run here, or None."""
    if not SYSTEM_PYTHON.exists():
        return f"no {SYSTEM_PYTHON}"
    probe = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", PROBE], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        return "python3-gst-1.0 / gir1.2-gst-plugins-bad-1.0 missing: " + probe.stderr[-200:]
    if probe.stdout.strip():
        return "GStreamer elements missing: " + probe.stdout.strip()
    return None


MISSING = gstreamer_missing()
pytestmark = [
    pytest.mark.skipif(
        MISSING is not None,
        reason=f"{MISSING}: apt-get install -y python3-gst-1.0 gir1.2-gst-plugins-bad-1.0 "
        "gstreamer1.0-nice gstreamer1.0-plugins-good gstreamer1.0-plugins-bad",
    ),
    pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason=f"needs the model {DEFAULT_MODEL}"),
]


def frame_levels_db(x: np.ndarray, hop: int = 960) -> np.ndarray:
    n = len(x) // hop
    return 10 * np.log10(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)


async def gst_call(url: str, wav: Path, out: Path) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        str(SYSTEM_PYTHON), str(CLIENT), url, str(wav), str(out), str(CALL_S),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(CALL_S + 30):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    result: dict[str, object] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def test_gstreamer_webrtcbin_publishes_over_whip_and_gets_cleaned_audio(
    tmp_path: Path,
) -> None:
    clean = speech_like(SECONDS, seed=41)
    noisy = mix_at_snr(clean, white_noise(SECONDS, 1.0, seed=42), snr_db=5.0)
    wav = tmp_path / "noisy.wav"
    sf.write(wav, np.clip(noisy, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    heard: dict[str, np.ndarray] = {}
    async with serve(load_enhancer_factory(DEFAULT_MODEL), frame_deadline_ms=1000.0) as srv:
        for mode in ("enhance", "passthrough"):
            out = tmp_path / f"{mode}.raw"
            result = await gst_call(f"{srv.url}/whip?mode={mode}", wav, out)
            assert result["status"] == 201 and result["connection"] == "connected", result
            assert result["delete_status"] == 200 and result.get("receiving") is True, result
            heard[mode] = np.fromfile(out, dtype="<i2").astype(np.float64) / 32768.0
            if mode == "enhance":
                processed = await srv.metric("percepnet_frames_total", outcome="processed")
        assert srv.manager.active == 0  # the DELETE ended each session
    # 480-sample frames: at least 3 s of the call enhanced
    assert processed > 3.0 * SAMPLE_RATE / 480, processed
    floors = {}
    for mode, y in heard.items():
        levels = frame_levels_db(y)
        audible = np.flatnonzero(levels > -45.0)
        assert audible.size > 2.5 * SAMPLE_RATE / 960, f"{mode}: little audio came back"
        levels = levels[audible[0] :]  # from the first audio back (the call set-up before)
        floors[mode] = (float(np.percentile(levels, 10)), float(np.percentile(levels, 95)))
    (noise_on, speech_on), (noise_off, speech_off) = floors["enhance"], floors["passthrough"]
    print(
        f"GStreamer WHIP client: floor {noise_off:.1f} dB pass-through, {noise_on:.1f} dB "
        f"enhanced; loud frames {speech_off:.1f} / {speech_on:.1f} dB"
    )
    assert noise_off - noise_on > 6.0, floors
    assert speech_off - speech_on < 6.0, floors  # the speech itself comes back
