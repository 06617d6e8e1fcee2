"""Hooks into aiortc, installed by each worker (`install`): what is replaced, the check
that it fits the installed aiortc, and the switches. Hooks 1, 2 and 4 live in their own
modules (audio_level, inline_codecs, relay_buffer); 3 and 5 are the wrappers here.
Hook 4 is not a speed-up: it changes the latency of every received stream.

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
   (relay_buffer.py, server/reorder.py): a packet in sequence is decoded as it arrives,
   and only a gap holds the packets behind it, at most RELAY_MAX_HELD of them.

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
from collections.abc import Callable
from typing import Any

import aiortc
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import aiortc.rtcsctptransport
import aiortc.rtp
from aiortc.codecs.opus import OpusEncoder

from server.media.aiortc_hooks.audio_level import (
    numpy_audio_level_dbov,
    original_audio_level_dbov,
)
from server.media.aiortc_hooks.inline_codecs import (
    InlineDecoder,
    InlineExecutorLoop,
    arrival_clock,
    arrival_time,
)
from server.media.aiortc_hooks.relay_buffer import ExpandingQueue, RelayJitterBuffer, expand
from server.ops.config import OPUS_MAX_COMPLEXITY, OPUS_MIN_COMPLEXITY
from server.reorder import ReorderStats

__all__ = [
    "OPUS_DEFAULT_COMPLEXITY",
    "ExpandingQueue",
    "InlineDecoder",
    "InlineExecutorLoop",
    "RelayJitterBuffer",
    "arrival_clock",
    "arrival_time",
    "contract_problems",
    "expand",
    "install",
    "numpy_audio_level_dbov",
    "original_audio_level_dbov",
    "receive_stats",
]

log = logging.getLogger(__name__)

_original = aiortc.rtp.compute_audio_level_dbov
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
    if not OPUS_MIN_COMPLEXITY <= opus_complexity <= OPUS_MAX_COMPLEXITY:
        raise ValueError(
            f"Opus complexity must be {OPUS_MIN_COMPLEXITY}-{OPUS_MAX_COMPLEXITY}, "
            f"not {opus_complexity}"
        )
    if not _state["installed"]:
        _state["installed"] = True
        problems = contract_problems() + _source_fits()
        if problems:
            log.warning(
                "aiortc %s: the hooks do not fit this version, aiortc runs as shipped "
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
