"""The service with the shipped model: noise goes down through real WebRTC peers.

Skipped only while models/percepnet-int8.onnx does not exist. Speech is a real
recording from the shared data (PERCEPNET_DATA) when it is there, else synthetic.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from percepnet.constants import LATENCY_SAMPLES
from percepnet.runtime import DEFAULT_MODEL, load_enhancer_factory
from server.client import ClientPeer, ClipTrack, lag_of
from server.clips import mix_at_snr, real_speech, speech_like, white_noise
from tests.test_server import envelope_db, serve

pytestmark = pytest.mark.skipif(
    not DEFAULT_MODEL.exists(), reason=f"needs the trained model: {DEFAULT_MODEL} is absent"
)
SECONDS = 4.0


def clip_pair() -> tuple[np.ndarray, np.ndarray]:
    speech = real_speech(SECONDS)
    if speech is None:
        speech = speech_like(SECONDS, seed=21)
    return speech, mix_at_snr(speech, white_noise(SECONDS, 1.0, seed=22), snr_db=5.0)


def pause_and_speech_levels(out: np.ndarray, clean: np.ndarray, lag: int) -> tuple[float, float]:
    """Mean level (dB) of the output where the clean speech is quietest / loudest (the
    15 % least and 20 % most energetic 10 ms frames of the clean reference)."""
    aligned = out[lag : lag + len(clean)]
    n = min(len(aligned), len(clean))
    e_out, e_clean = envelope_db(aligned[:n]), envelope_db(clean[:n])
    pauses = e_clean <= np.percentile(e_clean, 15)
    loud = e_clean >= np.percentile(e_clean, 80)
    assert pauses.sum() > 10 and loud.sum() > 10
    power = 10 ** (e_out / 10)
    return float(10 * np.log10(power[pauses].mean())), float(10 * np.log10(power[loud].mean()))


@pytest.mark.parametrize("limit_db", [None, 6.0])
async def test_model_reduces_noise_through_webrtc(limit_db: float | None) -> None:
    clean, noisy = clip_pair()
    factory = load_enhancer_factory(DEFAULT_MODEL)
    async with serve(factory) as srv:
        enhanced = await ClientPeer.connect(srv.url, ClipTrack(noisy))
        baseline = await ClientPeer.connect(srv.url, ClipTrack(noisy), mode="passthrough")
        if limit_db is not None:
            await srv.request(
                "POST",
                f"/streams/{enhanced.session_id}/control",
                json={"attenuation_limit_db": limit_db},
            )
        async with asyncio.timeout(30):
            await enhanced.wait_received(SECONDS + 0.3)
            await baseline.wait_received(SECONDS + 0.3)
        await enhanced.close()
        await baseline.close()
    out_b = baseline.received_audio()
    lag_b = lag_of(out_b, noisy)
    noise_b, speech_b = pause_and_speech_levels(out_b, clean, lag_b)
    noise_e, speech_e = pause_and_speech_levels(
        enhanced.received_audio(), clean, lag_b + LATENCY_SAMPLES
    )
    reduction = noise_b - noise_e
    if limit_db is None:
        # mean noise power in the pauses; a crude stationary suppressor manages ~5 dB here
        assert reduction > 6.0, (noise_b, noise_e)
    else:
        assert 2.0 < reduction < limit_db + 2.0, (noise_b, noise_e)
    assert speech_b - speech_e < 4.0, (speech_b, speech_e)  # speech kept
