"""A programmatic WebRTC client of the service (tests, load benchmark, smoke checks).

peer = await ClientPeer.connect("http://127.0.0.1:8080", ClipTrack(clip))
await peer.wait_received(seconds=2.0)
audio = peer.received_audio()      # mono float at 48 kHz, what came back
await peer.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.rtp import is_rtcp

from percepnet.streaming import INT16_SCALE, PACKET_SAMPLES, SAMPLE_RATE

TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
FloatArray = npt.NDArray[np.float64]


class ClipTrack(MediaStreamTrack):
    """Plays a mono float clip (48 kHz, [-1, 1]) as s16 stereo 20 ms frames in real time.

    After the clip it sends silence (a live microphone does not stop), unless
    `end=True`, when recv() raises MediaStreamError and the track ends.
    """

    kind = "audio"

    def __init__(self, clip: FloatArray, *, loop: bool = False, end: bool = False) -> None:
        super().__init__()
        self.clip = np.asarray(clip, dtype=np.float64)
        self.loop = loop
        self.end = end
        self.sent = 0  # frames sent
        self.started: float | None = None  # time.monotonic() of the first frame

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.started is None:
            self.started = time.monotonic()
        due = self.started + self.sent * PACKET_SAMPLES / SAMPLE_RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        begin = self.sent * PACKET_SAMPLES
        if self.loop and len(self.clip):
            idx = np.arange(begin, begin + PACKET_SAMPLES) % len(self.clip)
            chunk = self.clip[idx]
        else:
            if self.end and begin >= len(self.clip):
                self.stop()
                raise MediaStreamError
            chunk = np.zeros(PACKET_SAMPLES)
            part = self.clip[begin : begin + PACKET_SAMPLES]
            chunk[: len(part)] = part
        pcm = np.clip(np.rint(chunk * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2).reshape(1, -1), "s16", "stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = begin
        frame.time_base = TIME_BASE
        self.sent += 1
        return frame


@dataclass
class Received:
    pts: list[int] = field(default_factory=list)
    arrival: list[float] = field(default_factory=list)
    chunks: list[FloatArray] = field(default_factory=list)
    formats: set[tuple[str, str, int, int]] = field(default_factory=set)


def round_trip_ms(received: Received, track: ClipTrack) -> FloatArray:
    """For each frame that came back: milliseconds from when `track` sent the frame with
    that pts to when it came back (the service keeps the input's pts). The service's
    algorithmic delay is inside the audio, not in this time: lag_of measures that."""
    if track.started is None:
        return np.zeros(0)
    pts = np.asarray(received.pts, dtype=np.float64)
    return 1e3 * (np.asarray(received.arrival) - (track.started + pts / SAMPLE_RATE))


def lag_of(received: FloatArray, sent: FloatArray, max_lag: int = 9600) -> int:
    """Delay (samples) of `received` relative to `sent`, from the cross-correlation peak."""
    n = min(len(received), len(sent) + max_lag)
    a = np.zeros(2 * n)
    b = np.zeros(2 * n)
    a[: min(n, len(received))] = received[:n]
    b[: min(n, len(sent))] = sent[:n]
    xc = np.fft.irfft(np.fft.rfft(a) * np.conj(np.fft.rfft(b)))
    return int(np.argmax(xc[:max_lag]))


class ClientPeer:
    """One client peer connection: sends a track, records what comes back."""

    def __init__(self, pc: RTCPeerConnection, channel: RTCDataChannel | None) -> None:
        self.pc = pc
        self.channel = channel
        self.session_id: str | None = None
        self.location: str | None = None
        self.base_url = ""
        self.token: str | None = None
        self.received = Received()
        self.messages: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._got_track = asyncio.Event()
        self._channel_open = asyncio.Event()
        self._progress = asyncio.Event()  # set after each received frame

    @classmethod
    async def connect(
        cls,
        base_url: str,
        track: MediaStreamTrack,
        *,
        mode: str = "enhance",
        token: str | None = None,
        whip: bool = False,
        data_channel: bool = True,
        http: aiohttp.ClientSession | None = None,
    ) -> ClientPeer:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = pc.createDataChannel("control") if data_channel else None
        peer = cls(pc, channel)
        peer.base_url = base_url.rstrip("/")
        peer.token = token
        pc.addTransceiver(track, direction="sendrecv")
        if channel is not None:
            channel.on("open", peer._channel_open.set)
            channel.on("message", peer._on_message)

        @pc.on("track")
        def on_track(remote: MediaStreamTrack) -> None:
            if remote.kind == "audio" and peer._reader is None:
                peer._reader = asyncio.create_task(peer._read(remote))
                peer._got_track.set()

        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        try:
            answer = await peer._signal(mode, whip, http)
            await pc.setRemoteDescription(answer)
        except BaseException:
            await peer.close()
            raise
        return peer

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _signal(
        self, mode: str, whip: bool, http: aiohttp.ClientSession | None
    ) -> RTCSessionDescription:
        own = http is None
        session = http or aiohttp.ClientSession()
        try:
            local = self.pc.localDescription
            if whip:
                async with session.post(
                    f"{self.base_url}/whip?mode={mode}",
                    data=local.sdp,
                    headers={**self._headers(), "Content-Type": "application/sdp"},
                ) as r:
                    text = await r.text()
                    if r.status != 201:
                        raise SignallingError(r.status, text)
                    self.location = r.headers["Location"]
                    self.session_id = self.location.rsplit("/", 1)[-1]
                    return RTCSessionDescription(sdp=text, type="answer")
            async with session.post(
                f"{self.base_url}/offer",
                json={"sdp": local.sdp, "type": local.type, "mode": mode},
                headers=self._headers(),
            ) as r:
                if r.status != 200:
                    raise SignallingError(r.status, await r.text())
                body = await r.json()
                self.session_id = body["session"]
                self.location = body["location"]
                return RTCSessionDescription(sdp=body["sdp"], type=body["type"])
        finally:
            if own:
                await session.close()

    def _on_message(self, message: object) -> None:
        if isinstance(message, str):
            with contextlib.suppress(ValueError):
                self.messages.append(json.loads(message))

    async def _read(self, remote: MediaStreamTrack) -> None:
        rec = self.received
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await remote.recv()
                assert isinstance(frame, av.AudioFrame)
                rec.arrival.append(time.monotonic())
                rec.pts.append(int(frame.pts or 0))
                rec.formats.add(
                    (frame.format.name, frame.layout.name, frame.sample_rate, frame.samples)
                )
                data = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                rec.chunks.append(data.astype(np.float64).mean(axis=1) / INT16_SCALE)
                self._progress.set()

    async def wait_channel_open(self) -> None:
        """Until the data channel opens (wrap in asyncio.timeout)."""
        await self._channel_open.wait()

    async def wait_received(self, seconds: float) -> None:
        """Until `seconds` of audio came back (wrap in asyncio.timeout)."""
        frames = int(np.ceil(seconds * SAMPLE_RATE / PACKET_SAMPLES))
        while len(self.received.chunks) < frames:
            self._progress.clear()
            await self._progress.wait()

    def received_audio(self) -> FloatArray:
        chunks = self.received.chunks
        return np.concatenate(chunks) if chunks else np.zeros(0)

    def lose_outgoing_rtp(self, lost: Callable[[int], bool]) -> None:
        """From now on, drop each outgoing RTP packet n (1, 2, ... from now) for which
        lost(n) is true, as a lossy uplink would (RTCP still goes). Tests and benchmarks."""
        transport: Any = self.pc.getSenders()[0].transport
        send = transport._send_rtp  # aiortc's: every RTP and RTCP packet of this sender
        count = 0

        async def lossy(data: bytes) -> None:
            nonlocal count
            if not is_rtcp(data):
                count += 1
                if lost(count):
                    return
            await send(data)

        transport._send_rtp = lossy

    def send_control(self, message: str | bytes) -> None:
        assert self.channel is not None
        self.channel.send(message)

    async def close(self, *, hang_up: bool = True) -> None:
        """Close the connection; hang_up also DELETEs the session on the server."""
        if hang_up and self.location is not None:
            with contextlib.suppress(aiohttp.ClientError):
                async with (
                    aiohttp.ClientSession() as s,
                    s.delete(self.base_url + self.location, headers=self._headers()),
                ):
                    pass
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None


class SignallingError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"signalling failed: HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body


async def candidate_less_offer() -> str:
    """An audio offer SDP with no ICE candidates: a peer that will never connect (the
    lockout and abandoned-offer cases of the security tests and the soak benchmark)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    lines = [ln for ln in sdp.splitlines() if not ln.startswith(("a=candidate", "a=end-of"))]
    return "\r\n".join(lines) + "\r\n"
