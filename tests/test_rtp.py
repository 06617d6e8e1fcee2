"""Sidecar mode (server/sidecar/): plain Opus RTP in and out, driven by ffmpeg on both ends.

ffmpeg sends a noisy file as Opus RTP to the port the service allocates; a second
ffmpeg, given an SDP file, receives the cleaned stream into a WAV; the test measures
it. Only loopback addresses. The enhancer is a fixed -20 dB gain here (the model test
is at the bottom and skips while the trained model is absent), plus direct checks of
the sequence-number logic, loss concealment and the HTTP API with a Python sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from aiortc.rtp import RtpPacket

from percepnet.constants import SAMPLE_RATE
from percepnet.enhancer import Enhancer
from percepnet.runtime import DEFAULT_MODEL, load_enhancer_factory
from server.client import lag_of
from server.clips import mix_at_snr, speech_like, white_noise
from server.media.opus import OpusPayloadDecoder as OpusDecoder
from server.media.opus import OpusPayloadEncoder as OpusEncoder
from server.reorder import Reorderer
from server.sidecar.request import RtpSettings, RtpSetupError, parse_request
from server.sidecar.service import RTP_KEY
from tests.test_server import GAIN_DB, Served, envelope_db, fixed_gain_enhancer, serve

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(
    FFMPEG is None, reason="ffmpeg not installed (apt-get install ffmpeg)"
)
LOOPBACK = "127.0.0.1"
SECONDS = 3.0


# -- helpers ---------------------------------------------------------------------------
def free_port_pair() -> int:
    """An even UDP port whose successor is free too (ffmpeg binds RTP and RTCP)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind((LOOPBACK, 0))
            port = a.getsockname()[1]
            if port % 2 or port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                try:
                    b.bind((LOOPBACK, port + 1))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free UDP port pair")


@contextlib.asynccontextmanager
async def sidecar(factory: Callable[[], Enhancer], **overrides: Any) -> AsyncIterator[Served]:
    async with serve(factory, **overrides) as srv:
        srv.app[RTP_KEY].settings = RtpSettings(bind_host=LOOPBACK)
        yield srv


async def open_session(srv: Served, **body: Any) -> dict[str, Any]:
    status, text, headers = await srv.request("POST", "/v1/rtp-sessions", json=body)
    assert status == 201, text
    info: dict[str, Any] = json.loads(text)
    assert headers["Location"] == f"/v1/rtp-sessions/{info['session']}"
    return info


async def ffmpeg(*args: str) -> asyncio.subprocess.Process:
    assert FFMPEG is not None
    return await asyncio.create_subprocess_exec(
        FFMPEG,
        "-hide_banner",
        "-nostats",
        "-nostdin",
        "-loglevel",
        "error",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_until_stable(path: Path, quiet_s: float = 0.6, limit_s: float = 8.0) -> None:
    """Until the receiver's output file has stopped growing for `quiet_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    size, since = -1, loop.time()
    while loop.time() < deadline:
        now_size = await asyncio.to_thread(lambda: path.stat().st_size if path.exists() else 0)
        if now_size != size:
            size, since = now_size, loop.time()
        elif size > 0 and loop.time() - since >= quiet_s:
            return
        await asyncio.sleep(0.1)


async def ffmpeg_round_trip(srv: Served, noisy: np.ndarray, tmp: Path, **body: Any) -> np.ndarray:
    """ffmpeg -> sidecar -> ffmpeg; returns what the receiving ffmpeg wrote (mono float)."""
    src, out, sdp = tmp / "noisy.wav", tmp / "cleaned.wav", tmp / "cleaned.sdp"
    sf.write(src, noisy, SAMPLE_RATE, subtype="PCM_16")
    recv_port = free_port_pair()
    info = await open_session(srv, host=LOOPBACK, port=recv_port, payload_type=111, **body)
    sdp.write_text(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cleaned\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {recv_port} RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"
    )
    receiver = await ffmpeg(
        "-protocol_whitelist", "file,udp,rtp", "-i", str(sdp),
        "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-y", str(out),
    )  # fmt: skip
    await asyncio.sleep(0.5)  # let it bind before packets arrive
    sender = await ffmpeg(
        "-re", "-i", str(src),
        "-c:a", "libopus", "-b:a", "64k", "-application", "voip", "-frame_duration", "20",
        "-ac", "1", "-payload_type", "111", "-ssrc", "4660",
        "-f", "rtp", f"rtp://{LOOPBACK}:{info['port']}",
    )  # fmt: skip
    try:
        async with asyncio.timeout(SECONDS + 20):
            _, err = await sender.communicate()
        assert sender.returncode == 0, err.decode()
        await wait_until_stable(out)  # the last packets through the sidecar and ffmpeg
        status, _, _ = await srv.request("GET", f"/v1/rtp-sessions/{info['session']}")
        assert status == 200
        # Two SIGINTs: the first asks ffmpeg to stop after the next packet, the second
        # interrupts the waiting read; it still finishes the WAV file.
        receiver.send_signal(signal.SIGINT)
        await asyncio.sleep(0.2)
        receiver.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            _, err = await receiver.communicate()
        assert receiver.returncode in (0, 255), err.decode()
    finally:
        for p in (sender, receiver):
            if p.returncode is None:
                p.kill()
                await p.wait()
    y, rate = sf.read(out, dtype="float64")
    assert rate == SAMPLE_RATE
    return np.asarray(y)


def pauses_and_speech(clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """10 ms frames where the clean speech is silent / loud."""
    e = envelope_db(clean)
    return e < e.max() - 60, e > e.max() - 15


def levels(y: np.ndarray, clean: np.ndarray, lag: int) -> tuple[float, float]:
    """Mean level (dB) of `y` (delayed by `lag`) in the pauses and in the loud speech."""
    seg = np.zeros(len(clean))
    part = y[lag : lag + len(clean)]
    seg[: len(part)] = part
    pauses, loud = pauses_and_speech(clean)
    power = 10 ** (envelope_db(seg) / 10)
    n = len(power)
    return (
        float(10 * np.log10(power[pauses[:n]].mean())),
        float(10 * np.log10(power[loud[:n]].mean())),
    )


def test_clip_has_pauses() -> None:
    pauses, loud = pauses_and_speech(speech_like(SECONDS, seed=5))
    assert pauses.sum() > 20 and loud.sum() > 20


# -- ffmpeg on both ends ---------------------------------------------------------------
@needs_ffmpeg
async def test_ffmpeg_round_trip_fixed_gain(tmp_path: Path) -> None:
    clean = speech_like(SECONDS, seed=5)
    noisy = mix_at_snr(clean, white_noise(SECONDS, 1.0, seed=6), snr_db=10.0)
    async with sidecar(fixed_gain_enhancer) as srv:
        y = await ffmpeg_round_trip(srv, noisy, tmp_path)
        streams = (await srv.get("/streams"))[1]
        assert streams["active"] == 1
        assert [s.kind for s in srv.manager.sessions.values()] == ["rtp"]
        assert await srv.metric("percepnet_rtp_packets_total", outcome="lost") == 0
        assert await srv.metric("percepnet_rtp_packets_total", outcome="sent") >= SECONDS * 50 - 2
    # duration right: the sidecar sends every 20 ms slot (counted above); the receiving
    # ffmpeg writes ~0.27 s less here (3.02 s sent, 2.73 s in its WAV)
    assert abs(len(y) / SAMPLE_RATE - SECONDS) < 0.3, len(y) / SAMPLE_RATE
    lag = lag_of(y, noisy)
    assert 1440 <= lag < 4800, lag  # 30 ms enhancer + two Opus passes, under 100 ms
    noise_in, speech_in = levels(noisy, clean, 0)
    noise_out, speech_out = levels(y, clean, lag)
    assert abs((noise_out - noise_in) - GAIN_DB) < 2.0, (noise_in, noise_out)
    assert abs((speech_out - speech_in) - GAIN_DB) < 2.0, (speech_in, speech_out)


@needs_ffmpeg
@pytest.mark.skipif(
    not DEFAULT_MODEL.exists(), reason=f"needs the trained model: {DEFAULT_MODEL} is absent"
)
@pytest.mark.xfail(
    strict=True,
    reason="issue 15: the shipped model (v7 step 1063) takes this synthetic speech down by "
    "5.0 dB, every run, where 4 dB is allowed (v3: 3.9 dB); on dev calls it cuts speech "
    "band-frames 5.7 dB against the ideal gains' 0.6 (results/diagnose_dev_v7.md); noise "
    "reduction itself passes (26.4 dB in pauses)",
)
async def test_ffmpeg_round_trip_model_reduces_noise(tmp_path: Path) -> None:
    clean = speech_like(SECONDS, seed=7)
    noisy = mix_at_snr(clean, white_noise(SECONDS, 1.0, seed=8), snr_db=5.0)
    async with sidecar(load_enhancer_factory(DEFAULT_MODEL)) as srv:
        y = await ffmpeg_round_trip(srv, noisy, tmp_path)
    assert abs(len(y) / SAMPLE_RATE - SECONDS) < 0.3
    lag = lag_of(y, noisy)
    noise_in, speech_in = levels(noisy, clean, 0)
    noise_out, speech_out = levels(y, clean, lag)
    print(
        f"sidecar noise reduction in pauses: {noise_in - noise_out:.1f} dB, "
        f"speech level change: {speech_out - speech_in:+.1f} dB"
    )
    assert noise_in - noise_out > 6.0, (noise_in, noise_out)
    assert speech_in - speech_out < 4.0, (speech_in, speech_out)


# -- sequence numbers, loss, API -------------------------------------------------------
def rtp(seq: int, ts: int = 0, payload: bytes = b"x", pt: int = 111) -> RtpPacket:
    return RtpPacket(
        payload_type=pt, sequence_number=seq & 0xFFFF, timestamp=ts, ssrc=1, payload=payload
    )


def seqs(packets: list[RtpPacket]) -> list[int]:
    return [p.sequence_number for p in packets]


def test_reorderer_reorders_drops_and_gives_up() -> None:
    r = Reorderer(max_held=2)
    assert seqs(r.push(rtp(65534))) == [65534]
    assert seqs(r.push(rtp(0))) == []  # 65535 missing: wait
    assert seqs(r.push(rtp(65535))) == [65535, 0]  # across the wrap
    assert seqs(r.push(rtp(0))) == [] and r.stats.late == 1
    assert seqs(r.push(rtp(2))) == []
    assert seqs(r.push(rtp(2))) == [] and r.stats.duplicate == 1
    assert seqs(r.push(rtp(3))) == []
    assert seqs(r.push(rtp(4))) == [2, 3, 4] and r.stats.lost == 1  # 3 held > 2: give up on 1
    assert seqs(r.push(rtp(6))) == []
    assert seqs(r.flush()) == [6] and r.stats.lost == 2  # timer: give up on 5
    assert seqs(r.push(rtp(5000))) == [5000] and r.stats.restarts == 1


@pytest.mark.parametrize(
    "body",
    [
        {"port": 5000},
        {"host": "example.org", "port": 5000},
        {"host": "127.0.0.1", "port": 0},
        {"host": "127.0.0.1", "port": 5000, "payload_type": 128},
        {"host": "127.0.0.1", "port": 5000, "ssrc": -1},
        {"host": "127.0.0.1", "port": 5000, "mode": "loud"},
        {"host": "127.0.0.1", "port": 5000, "attenuation_limit_db": "x"},
        {"host": "127.0.0.1", "port": 5000, "extra": 1},
    ],
)
def test_bad_requests_rejected(body: dict[str, Any]) -> None:
    with pytest.raises(RtpSetupError):
        parse_request(json.dumps(body))


def test_settings_from_env() -> None:
    s = RtpSettings.from_env({"PERCEPNET_RTP_PORTS": "40000-40099"}, "0.0.0.0")
    assert (s.port_min, s.port_max, s.public_host) == (40000, 40099, None)
    with pytest.raises(ValueError):
        RtpSettings.from_env({"PERCEPNET_RTP_PORTS": "5-1"}, "0.0.0.0")


async def test_loss_reorder_and_duplicates_keep_the_output_clock() -> None:
    """A Python sender: packet 10 lost, 20/21 swapped, 30 sent
    again after it was played (late). The output keeps the input's clock: one packet
    per 20 ms slot received, sequence numbers by one, timestamps by 960, and by 1920
    across the lost packet, whose slot stays empty (one packet in, at most one out)."""
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(60 * 960) / SAMPLE_RATE)
    enc = OpusEncoder(64_000)
    payloads = enc.encode(tone)
    async with sidecar(Enhancer) as srv:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind((LOOPBACK, 0))
            sink.setblocking(False)
            info = await open_session(srv, host=LOOPBACK, port=sink.getsockname()[1])
            order = [i for i in range(len(payloads)) if i != 10]
            order[19], order[20] = order[20], order[19]  # 20 and 21 (10 is gone)
            order.insert(30, 30)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as src:
                for i in order:
                    packet = rtp(1000 + i, 5000 + 960 * i, payloads[i])
                    src.sendto(packet.serialize(), (LOOPBACK, info["port"]))
                    await asyncio.sleep(0.002)
            got: list[RtpPacket] = []
            loop = asyncio.get_running_loop()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    while len(got) < len(payloads):
                        got.append(RtpPacket.parse(await loop.sock_recv(sink, 2048)))
            status, state, _ = await srv.get(f"/v1/rtp-sessions/{info['session']}")
    assert status == 200
    assert (state["packets_lost"], state["packets_late"]) == (1, 1), state
    assert state["concealed_ms"] == 0
    assert len(got) == len(payloads) - 1 == state["packets_sent"]  # the lost slot is not
    assert state["packets_received"] == len(order)  # 60, with the late duplicate
    assert all(p.payload_type == 111 for p in got)
    assert np.all(np.diff([p.sequence_number for p in got]) % 65536 == 1)
    steps = np.diff([p.timestamp for p in got]) % 2**32
    assert sorted(set(steps.tolist())) == [960, 1920] and np.sum(steps == 1920) == 1, steps
    dec = OpusDecoder()
    y = np.concatenate([dec.decode(p.payload) for p in got])
    assert len(y) == (len(payloads) - 1) * 960
    e = envelope_db(y)
    assert np.median(e) > -20  # the tone came through


async def test_a_burst_of_packets_is_enhanced_not_passed_through() -> None:
    """12 packets (240 ms) sent at once after a first one: each is due at once and waits
    a few ms for the ones before it, so none is late. (Judged by the audio queued behind
    it, the first 8 of the burst would have passed through.)"""
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(13 * 960) / SAMPLE_RATE)
    payloads = OpusEncoder(64_000).encode(tone)
    async with sidecar(Enhancer) as srv:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind((LOOPBACK, 0))
            sink.setblocking(False)
            info = await open_session(srv, host=LOOPBACK, port=sink.getsockname()[1])
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as src:

                def send(i: int) -> None:
                    packet = rtp(2000 + i, 960 * i, payloads[i])
                    src.sendto(packet.serialize(), (LOOPBACK, info["port"]))

                send(0)  # one packet first: the stream is set up and warm
                async with asyncio.timeout(5):
                    await loop.sock_recv(sink, 2048)
                for i in range(1, len(payloads)):
                    send(i)
                got = 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3):
                        while got < len(payloads):
                            await loop.sock_recv(sink, 2048)
                            got += 1
            status, state, _ = await srv.get(f"/v1/rtp-sessions/{info['session']}")
    assert status == 200 and got == len(payloads)
    assert state["frames_processed"] == 2 * len(payloads), state
    assert state["frames_bypassed"] == 0, state
    assert 0 <= state["queue_wait_ms"] < 60


async def test_limits_auth_controls_and_delete() -> None:
    async with sidecar(Enhancer, max_streams=1, auth_token="s3cret") as srv:
        auth = {"Authorization": "Bearer s3cret"}
        body = {"host": LOOPBACK, "port": 9, "attenuation_limit_db": 6}
        status, _, _ = await srv.request("POST", "/v1/rtp-sessions", json=body, headers={})
        assert status == 401
        status, text, _ = await srv.request("POST", "/v1/rtp-sessions", json=body, headers=auth)
        assert status == 201, text
        sid = json.loads(text)["session"]
        assert json.loads(text)["attenuation_limit_db"] == 6
        status, _, headers = await srv.request("POST", "/v1/rtp-sessions", json=body, headers=auth)
        assert status == 503 and headers["Retry-After"]
        status, text, _ = await srv.request(
            "POST", f"/streams/{sid}/control", json={"enabled": False}, headers=auth
        )
        assert status == 200 and json.loads(text)["enabled"] is False
        assert srv.manager.get(sid).enhancer.enabled is False
        status, _, _ = await srv.request("DELETE", f"/v1/rtp-sessions/{sid}", headers=auth)
        assert status == 200
        status, _, _ = await srv.request("DELETE", f"/v1/rtp-sessions/{sid}", headers=auth)
        assert status == 404
        assert srv.manager.active == 0
        assert await srv.metric("percepnet_sessions_total", outcome="rejected_full") == 1
