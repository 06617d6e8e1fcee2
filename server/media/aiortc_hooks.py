"""Replacements for hot spots of aiortc, installed by each worker (`install`).

1. The audio level. aiortc's RTCRtpSender computes the RFC 6465 level of every outgoing
   audio frame with `aiortc.rtp.compute_audio_level_dbov`, a pure-Python loop over each
   sample (1920 per 20 ms stereo packet) run on the event loop: measured at about
   0.3-0.5 ms per packet. `numpy_audio_level_dbov` computes the same integer from the same
   bytes (tests/test_server_cli.py checks equality against the original).

2. The Opus codec threads (`inline_codecs`). aiortc decodes each receiver's audio in a
   thread of its own and hands every frame back with `run_coroutine_threadsafe`, and
   encodes each sender's frames in the loop's default executor. For 20 ms of Opus
   audio the codec work is tens of microseconds; the hand-offs (queue condition
   variables, a self-pipe write to wake the loop, GIL switches between threads that share
   one core anyway) cost more than the work. With inline codecs, an audio receiver
   decodes in the event loop as each frame completes, and an audio sender encodes in
   the event loop. Video is left as aiortc has it.

3. The Opus encoder's complexity (`opus_complexity`, 0-10). aiortc leaves libopus at its
   default, 10, the most expensive setting, at 96 kbit/s. For 20 ms of speech at that
   rate, complexity 5 cost 31 % less encoder CPU here for the same quality (PESQ-WB of
   an Opus round trip of 8 LJSpeech clips: 4.570 at 10, 4.567 at 5;
   results/opus_complexity.md).

4. The audio receive buffer (`relay_buffer`). aiortc gives each audio receiver a
   JitterBuffer(capacity=16, prefetch=4): a packet is decoded only once four later ones
   have arrived, 80 ms after it came in. After a single lost packet it waits until 16
   packets are queued, drops the four before the gap, and from then on every packet
   waits 14 others out: 280 ms for the rest of the call (aiortc issue #543). That
   buffer is meant for playout; this service relays, and its peer plays out through a
   jitter buffer of its own. `RelayJitterBuffer` only puts packets back in order
   (server/reorder.py): a packet in sequence is decoded as it arrives, and only a gap
   holds the packets behind it, at most RELAY_MAX_HELD of them.

5. Data-channel input (`_data_channel_receive`). aiortc decodes a text message with
   `bytes.decode("utf8")` inside its SCTP transport: invalid UTF-8 raised there and
   ended the whole connection. The guard hands such a message on as bytes (our control
   parser then counts and ignores it), and a malformed channel-open message is logged
   and dropped instead of raised.

All of these replace private aiortc internals. They were written against aiortc
1.16.0 (pyproject pins 1.16.x), and `install` patches only after `contract_problems()`
finds nothing: the exact version in TESTED_AIORTC, the parameters of every function
replaced or wrapped as recorded in HOOKED_SIGNATURES, and the source shapes the hooks
rely on. Otherwise nothing is patched (stock aiortc: codec threads, its jitter
buffer) and a warning names what did not fit. On 1.15.0, for instance, aiortc's
decoder thread is called with three arguments, not four: hooked blindly, no audio was
decoded at all. `install` patches once per process; later calls only change the
settings the hooks read.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import aiortc
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import aiortc.rtcsctptransport
import aiortc.rtp
import numpy as np
from aiortc.codecs import get_decoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RtpPacket
from av import AudioFrame

from server.ops.config import OPUS_MAX_COMPLEXITY
from server.reorder import Reorderer, ReorderStats

log = logging.getLogger(__name__)

_MAX_SAMPLE = 32767
_MIN_LEVEL = -127
_original = aiortc.rtp.compute_audio_level_dbov


def numpy_audio_level_dbov(frame: AudioFrame) -> int:
    """RFC 6465 Appendix A level, as aiortc defines it (all plane-0 int16 values)."""
    pcm = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16).astype(np.float64)
    rms = math.sqrt(float(np.dot(pcm, pcm)) / (frame.samples * _MAX_SAMPLE * _MAX_SAMPLE))
    if rms <= 0:
        return _MIN_LEVEL
    return round(min(0.0, max(20 * math.log10(rms), _MIN_LEVEL)))


arrival_clock = time.monotonic
"""The clock of the arrival stamps InlineDecoder leaves in each frame's `opaque`."""


def arrival_time(frame: Any) -> float | None:
    """When an inline-decoded frame was decoded (arrival_clock), or None if unstamped."""
    stamp = getattr(frame, "opaque", None)
    return stamp if isinstance(stamp, float) else None


class InlineDecoder:
    """Takes the place of an audio receiver's decoder queue: decodes each frame as aiortc
    puts it in, on the caller's thread (the event loop), and hands the decoded frames
    straight to the track's queue, each stamped with its arrival time in `opaque` (so
    a consumer can tell how long a frame waited, whatever came in with it). `put(None)`
    ends the track, as aiortc's worker does."""

    def __init__(self) -> None:
        self._output: asyncio.Queue[Any] | None = None
        self._error: threading.Event | None = None
        self._decoder: Any = None
        self._codec_name: str | None = None

    def attach(self, output: asyncio.Queue[Any], error: threading.Event) -> None:
        self._output, self._error = output, error

    def put(self, task: Any) -> None:
        if self._output is None:  # receive() never ran: nothing to decode for
            return
        if task is None:
            self._output.put_nowait(None)
            self._decoder = None
            return
        codec, encoded_frame = task
        for one in expand(encoded_frame):
            try:
                if codec.name != self._codec_name:
                    self._decoder, self._codec_name = get_decoder(codec), codec.name
                frames = self._decoder.decode(one)
            except Exception as exc:  # keep the decoder state, as aiortc does; never raise
                # into aiortc's packet handler, which runs the whole transport
                log.warning("failed to decode %s frame: %s", codec.name, exc)
                if self._error is not None:
                    self._error.set()
                continue
            arrived = arrival_clock()
            for frame in frames:
                frame.opaque = arrived  # when it was ready for us (the track's deadline)
                self._output.put_nowait(frame)


RELAY_MAX_HELD = 1
"""Packets an audio receiver holds behind a missing one before giving it up as lost: a
packet may arrive one place late (swapped with its neighbour). A loss then delays the
packet after it by one packet time (20 ms); each packet more held would add 20 ms to the
next one too (bench/latency.py --loss-every). One reordered further arrives after its
place was given up and is dropped as late."""


class RelayFrame(JitterFrame):
    """An encoded frame and those that became due with it, as (RTP timestamp offset from
    this one, data): aiortc's receiver takes one frame per packet from its buffer, and the
    packet that fills a gap (or gives up on it) releases the ones held behind the gap."""

    def __init__(self, data: bytes, timestamp: int, following: list[tuple[int, bytes]]) -> None:
        super().__init__(data=data, timestamp=timestamp)
        self.following = following


def expand(frame: JitterFrame) -> list[JitterFrame]:
    """The frames a RelayFrame carries, each timestamped on the receiver's mapped clock
    like the first; any other frame alone."""
    following: list[tuple[int, bytes]] = getattr(frame, "following", [])
    return [frame, *(JitterFrame(data=d, timestamp=frame.timestamp + dt) for dt, d in following)]


class RelayJitterBuffer:
    """Takes the place of an audio receiver's aiortc JitterBuffer (same `add`): packets
    in sequence order, each as soon as it is due (see the module doc, item 4)."""

    def __init__(self, max_held: int = RELAY_MAX_HELD) -> None:
        self.reorderer = Reorderer(max_held)

    @property
    def stats(self) -> ReorderStats:
        return self.reorderer.stats

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """(PLI wanted: never, for audio; the frame now due or None)."""
        due = self.reorderer.push(packet)
        if not due:
            return False, None
        first, *rest = due
        following = [((p.timestamp - first.timestamp) & 0xFFFFFFFF, _data(p)) for p in rest]
        return False, RelayFrame(_data(first), first.timestamp, following)


def _data(packet: RtpPacket) -> bytes:
    data = getattr(packet, "_data", b"")  # the depayloaded frame aiortc's receiver attached
    return data if isinstance(data, bytes) else b""


class ExpandingQueue(queue.Queue[Any]):
    """The decoder queue of an audio receiver that keeps aiortc's decoder thread: each
    RelayFrame goes in as the frames it carries."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # the end of the track
            super().put(item, block, timeout)
            return
        codec, frame = item
        for one in expand(frame):
            super().put((codec, one), block, timeout)


class InlineExecutorLoop:
    """The event loop as an audio sender sees it: `run_in_executor` (its encode call) runs
    the function at once and returns a finished future; everything else is the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        future = self._loop.create_future()
        try:
            future.set_result(func(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


_RECEIVER = aiortc.rtcrtpreceiver.RTCRtpReceiver
_SENDER = aiortc.rtcrtpsender.RTCRtpSender
_ORIGINAL: dict[str, Any] = {
    "receiver_init": _RECEIVER.__init__,
    "receiver_receive": _RECEIVER.receive,
    "sender_init": _SENDER.__init__,
    "decoder_worker": getattr(aiortc.rtcrtpreceiver, "decoder_worker", None),
    "get_encoder": aiortc.rtcrtpsender.get_encoder,
}
OPUS_DEFAULT_COMPLEXITY = OPUS_MAX_COMPLEXITY  # libopus's own default, which aiortc keeps
_opus_complexity = OPUS_DEFAULT_COMPLEXITY


def _get_encoder(codec: Any) -> Any:
    """aiortc's encoder for `codec`, with our Opus complexity (set before it opens)."""
    encoder = _ORIGINAL["get_encoder"](codec)
    if isinstance(encoder, OpusEncoder) and _opus_complexity != OPUS_DEFAULT_COMPLEXITY:
        options = dict(encoder.codec.options)
        options["compression_level"] = str(_opus_complexity)
        encoder.codec.options = options
    return encoder


_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_DECODER_ERROR = "_RTCRtpReceiver__decoder_error"
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_SENDER_LOOP = "_RTCRtpSender__loop"
_hooks = {"inline_codecs": False, "relay_buffer": False}
"""What _receiver_init puts in an audio receiver (set by install)."""


def _receiver_init(self: Any, kind: str, *args: Any, **kwargs: Any) -> None:
    _ORIGINAL["receiver_init"](self, kind, *args, **kwargs)
    if kind != "audio" or not hasattr(self, _DECODER_QUEUE):
        return
    if _hooks["inline_codecs"] and hasattr(self, _DECODER_ERROR):
        setattr(self, _DECODER_QUEUE, InlineDecoder())
    if _hooks["relay_buffer"] and hasattr(self, _JITTER_BUFFER):
        if not isinstance(getattr(self, _DECODER_QUEUE), InlineDecoder):
            setattr(self, _DECODER_QUEUE, ExpandingQueue())
        setattr(self, _JITTER_BUFFER, RelayJitterBuffer())


def receive_stats(receiver: Any) -> ReorderStats | None:
    """A receiver's packet counts (lost, late, duplicate) if it has a RelayJitterBuffer."""
    buffer = getattr(receiver, _JITTER_BUFFER, None)
    return buffer.stats if isinstance(buffer, RelayJitterBuffer) else None


async def _receiver_receive(self: Any, *args: Any, **kwargs: Any) -> None:
    await _ORIGINAL["receiver_receive"](self, *args, **kwargs)
    decoder = getattr(self, _DECODER_QUEUE, None)
    if isinstance(decoder, InlineDecoder) and self._track is not None:
        decoder.attach(self._track._queue, getattr(self, _DECODER_ERROR))


def _decoder_worker(loop: Any, input_q: Any, output_q: Any, decode_error: Any) -> None:
    if isinstance(input_q, InlineDecoder):
        return  # the receiver decodes in InlineDecoder.put; this thread ends at once
    _ORIGINAL["decoder_worker"](loop, input_q, output_q, decode_error)


def _sender_init(self: Any, track_or_kind: Any, *args: Any, **kwargs: Any) -> None:
    _ORIGINAL["sender_init"](self, track_or_kind, *args, **kwargs)
    loop = getattr(self, _SENDER_LOOP, None)
    audio = self.kind == "audio"
    if _hooks["inline_codecs"] and audio and isinstance(loop, asyncio.AbstractEventLoop):
        setattr(self, _SENDER_LOOP, InlineExecutorLoop(loop))


_SCTP = aiortc.rtcsctptransport.RTCSctpTransport
_ORIGINAL["sctp_receive"] = _SCTP._data_channel_receive


async def _data_channel_receive(self: Any, stream_id: int, pp_id: int, data: bytes) -> None:
    """aiortc's, except that bad input never raises into the SCTP transport."""
    if pp_id == aiortc.rtcsctptransport.WEBRTC_STRING and stream_id in self._data_channels:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            # as bytes: the control parser refuses it, counts it and the call goes on
            self._data_channels[stream_id].emit("message", bytes(data))
            return
    try:
        await _ORIGINAL["sctp_receive"](self, stream_id, pp_id, data)
    except Exception as exc:  # a malformed channel-open or -ack message
        log.warning("dropped a malformed data-channel message (ppid %d): %r", pp_id, exc)


TESTED_AIORTC = ("1.16.0",)
"""aiortc releases the hooks were written and tested against (pyproject pins these)."""

HOOKED_SIGNATURES: dict[str, tuple[Callable[..., Any] | None, tuple[str, ...]]] = {
    # what is replaced or wrapped -> (aiortc's function, the parameters the hooks assume)
    "rtp.compute_audio_level_dbov": (_original, ("frame",)),
    "rtcrtpsender.get_encoder": (_ORIGINAL["get_encoder"], ("codec",)),
    "RTCRtpReceiver.__init__": (_ORIGINAL["receiver_init"], ("self", "kind", "transport")),
    "RTCRtpReceiver.receive": (_ORIGINAL["receiver_receive"], ("self", "parameters")),
    "RTCRtpReceiver._handle_rtp_packet": (
        _RECEIVER._handle_rtp_packet,
        ("self", "packet", "arrival_time_ms"),
    ),
    "rtcrtpreceiver.decoder_worker": (
        _ORIGINAL["decoder_worker"],
        ("loop", "input_q", "output_q", "decode_error"),
    ),
    "RTCRtpSender.__init__": (_ORIGINAL["sender_init"], ("self", "trackOrKind", "transport")),
    "RTCRtpSender._next_encoded_frame": (_SENDER._next_encoded_frame, ("self", "codec")),
    "RTCSctpTransport._data_channel_receive": (
        _ORIGINAL["sctp_receive"],
        ("self", "stream_id", "pp_id", "data"),
    ),
}


def _parameters(func: Callable[..., Any] | None) -> tuple[str, ...] | None:
    if func is None:
        return None
    try:
        return tuple(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None


def contract_problems(
    version: str | None = None,
    signatures: dict[str, tuple[Callable[..., Any] | None, tuple[str, ...]]] | None = None,
) -> list[str]:
    """Why the hooks do not fit this aiortc (empty: they do). `version` and `signatures`
    default to the installed aiortc's; tests pass others."""
    version = aiortc.__version__ if version is None else version
    signatures = HOOKED_SIGNATURES if signatures is None else signatures
    problems = []
    if version not in TESTED_AIORTC:
        problems.append(f"aiortc {version} is not a tested version ({', '.join(TESTED_AIORTC)})")
    for name, (func, expected) in signatures.items():
        found = _parameters(func)
        if found != expected:
            problems.append(f"{name}{found or '(missing)'} is not {name}{expected}")
    return problems


def _source_fits() -> list[str]:
    """The source shapes the hooks rely on (a second check beside the signatures)."""
    try:
        receive_src = inspect.getsource(_ORIGINAL["receiver_receive"])
        next_frame_src = inspect.getsource(_SENDER._next_encoded_frame)
        handle_src = inspect.getsource(_RECEIVER._handle_rtp_packet)
        init_src = inspect.getsource(_ORIGINAL["receiver_init"])
    except (OSError, TypeError):  # no source to check (a .pyc-only install)
        return ["aiortc's source is not available to check"]
    from aiortc.rtcrtpreceiver import RemoteStreamTrack

    shapes = {
        "receive() starts decoder_worker": "decoder_worker" in receive_src,
        "the sender encodes in an executor": "self.__loop.run_in_executor" in next_frame_src,
        "the receiver's JitterBuffer": "self.__jitter_buffer = JitterBuffer(" in init_src,
        "the receiver's decoder error event": "self.__decoder_error = threading.Event()"
        in init_src,
        "one add(packet) per packet": "self.__jitter_buffer.add(packet)" in handle_src,
        "frames go to the decoder queue": "self.__decoder_queue.put((codec, encoded_frame))"
        in handle_src,
        "remote tracks have an asyncio queue": isinstance(
            getattr(RemoteStreamTrack(kind="audio"), "_queue", None), asyncio.Queue
        ),
    }
    return [f"source shape missing: {what}" for what, ok in shapes.items() if not ok]


_state = {"installed": False, "fits": False}


def hooks_fit() -> bool:
    """Whether the installed aiortc is one the hooks fit (checked once per process)."""
    return not (contract_problems() or _source_fits())


def inline_codecs_supported() -> bool:
    return hooks_fit()


def relay_buffer_supported() -> bool:
    return hooks_fit()


def inline_codecs_installed() -> bool:
    return _RECEIVER.__init__ is _receiver_init and _hooks["inline_codecs"]


def relay_buffer_installed() -> bool:
    return _RECEIVER.__init__ is _receiver_init and _hooks["relay_buffer"]


def _patch() -> None:
    aiortc.rtp.compute_audio_level_dbov = numpy_audio_level_dbov
    aiortc.rtcrtpsender.get_encoder = _get_encoder
    _RECEIVER.__init__ = _receiver_init  # type: ignore[method-assign]
    _RECEIVER.receive = _receiver_receive  # type: ignore[method-assign]
    _SENDER.__init__ = _sender_init  # type: ignore[method-assign,assignment]
    aiortc.rtcrtpreceiver.decoder_worker = _decoder_worker
    _SCTP._data_channel_receive = _data_channel_receive  # type: ignore[method-assign]


def install(
    *,
    inline_codecs: bool = True,
    relay_buffer: bool = True,
    opus_complexity: int = OPUS_DEFAULT_COMPLEXITY,
) -> bool:
    """Patch aiortc (the first call, and only if `contract_problems` and the source
    shapes find nothing), then set what the hooks do for peer connections made from
    now on: inline codecs, the relay receive buffer, the Opus complexity. Returns
    whether inline codecs are on."""
    global _opus_complexity
    if not 0 <= opus_complexity <= 10:
        raise ValueError(f"Opus complexity must be 0-10, not {opus_complexity}")
    if not _state["installed"]:
        _state["installed"] = True
        problems = contract_problems() + _source_fits()
        if problems:
            log.warning(
                "aiortc %s: the speed-ups do not fit this version, aiortc runs as shipped "
                "(codec threads, its 80 ms jitter buffer): %s",
                aiortc.__version__,
                "; ".join(problems),
            )
        else:
            _patch()
            _state["fits"] = True
    fits = _state["fits"]
    _opus_complexity = opus_complexity
    _hooks.update(inline_codecs=inline_codecs and fits, relay_buffer=relay_buffer and fits)
    return _hooks["inline_codecs"]


def original_audio_level_dbov(frame: AudioFrame) -> int:
    return int(_original(frame))
