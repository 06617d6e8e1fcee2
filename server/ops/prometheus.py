"""Prometheus metrics of one worker, in a registry of its own (never the process default).

Per-stream series carry a `stream` label; they are created for at most
`per_stream_limit` streams at a time and removed when the stream ends, so the label
set stays bounded. Everything per stream is also in /streams.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from server.reorder import OUTCOMES

# Per-frame processing time: 0.1 ms .. 50 ms (seconds).
FRAME_BUCKETS = (
    0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075,
    0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05,
)  # fmt: skip
# How long a packet waited for others to join its model batch (seconds).
BATCH_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# Garbage-collection pauses (seconds): a frozen start-up heap keeps them under 1 ms.
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
# Event-loop lag: how late a periodic wake-up ran (seconds).
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


SESSION_OUTCOMES = (
    "accepted",
    "rejected_full",
    "rejected_draining",
    "rejected_pending",  # the client already has max_pending_per_client connecting (429)
    "evicted_pending",  # a not-yet-connected session closed to admit another one
    "timed_out",  # never connected (or never sent RTP) within connect_timeout_s
    "failed",
    "closed",
)


class Metrics:
    def __init__(self, per_stream_limit: int = 64) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.per_stream_limit = per_stream_limit
        self._labelled: set[str] = set()

        self.active_streams = Gauge(
            "percepnet_active_streams", "Streams with a live peer connection", registry=r
        )
        self.capacity = Gauge(
            "percepnet_stream_capacity", "Streams this worker accepts", registry=r
        )
        self.sessions = Counter(
            "percepnet_sessions", "Sessions by outcome", ["outcome"], registry=r
        )
        self.frames = Counter(
            "percepnet_frames",
            "10 ms enhancer frames by outcome: processed (enhanced or runtime-bypassed by "
            "the enhancer), bypassed (late: passed through), failed (error: passed through)",
            ["outcome"],
            registry=r,
        )
        self.frame_seconds = Histogram(
            "percepnet_frame_processing_seconds",
            "Processing time per 10 ms enhancer frame (conversion included)",
            buckets=FRAME_BUCKETS,
            registry=r,
        )
        self.batch_wait = Histogram(
            "percepnet_batch_wait_seconds",
            "Time a packet waited for other streams' packets to share its model run",
            buckets=BATCH_WAIT_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            "percepnet_gc_pause_seconds",
            "Duration of each Python garbage collection (the event loop stalls for it)",
            ["generation"],
            buckets=GC_BUCKETS,
            registry=r,
        )
        for generation in ("0", "1", "2"):  # series from the start, so rate() has a base
            self.gc_pause.labels(generation)
        self.batch_streams = Histogram(
            "percepnet_batch_streams",
            "Streams whose packets went through the model together, per batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.added_latency = Gauge(
            "percepnet_added_latency_seconds",
            "Delay the service adds to the audio (algorithmic + buffering + batch wait): "
            "the largest of the worker's enhancing streams",
            registry=r,
        )
        self.loop_lag = Histogram(
            "percepnet_event_loop_lag_seconds",
            "Lateness of a periodic event-loop wake-up",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "percepnet_event_loop_lag_max_seconds",
            "Largest event-loop lag over the last monitoring window",
            registry=r,
        )
        self.control_messages = Counter(
            "percepnet_control_messages",
            "Control messages (data channel and HTTP) by outcome",
            ["outcome"],
            registry=r,
        )
        self.stream_cpu = Gauge(
            "percepnet_stream_cpu_seconds",
            "CPU seconds of one stream's enhancement and format conversion "
            "(Opus, SRTP and ICE work inside aiortc not included)",
            ["stream"],
            registry=r,
        )
        self.stream_voice_activity = Gauge(
            "percepnet_stream_voice_activity",
            "Voice-activity estimate 0..1",
            ["stream"],
            registry=r,
        )
        self.received_packets = Counter(
            "percepnet_webrtc_audio_packets",
            "WebRTC audio packets the receive buffer did not pass on in order: lost (given "
            "up on after RELAY_MAX_HELD later packets), late (arrived after that), duplicate",
            ["outcome"],
            registry=r,
        )
        self.draining = Gauge("percepnet_draining", "1 while draining on SIGTERM", registry=r)
        self.loop_tasks = Gauge(
            "percepnet_event_loop_tasks",
            "Unfinished asyncio tasks on the worker's loop (sampled with the loop lag); "
            "with no session it returns to its idle count, or tasks leak",
            registry=r,
        )
        # process_resident_memory_bytes, process_open_fds...: RSS and fds for leak checks
        ProcessCollector(registry=r)
        for outcome in ("processed", "bypassed", "failed"):
            self.frames.labels(outcome)
        for outcome in SESSION_OUTCOMES:
            self.sessions.labels(outcome)
        self.rejected_requests = Counter(
            "percepnet_rejected_requests",
            "Requests refused by the input checks, by reason: body (malformed or too "
            "deep JSON, bad numbers), candidates (too many, or not unicast), rate "
            "(PATCH rate limit), error (unexpected handler exception, answered 500)",
            ["reason"],
            registry=r,
        )
        for reason in ("body", "candidates", "rate", "error"):
            self.rejected_requests.labels(reason)
        for outcome in ("applied", "ignored"):
            self.control_messages.labels(outcome)
        for outcome in OUTCOMES:
            self.received_packets.labels(outcome)

    def stream_started(self, stream_id: str) -> bool:
        """Reserve per-stream series for `stream_id`; False when the cap is reached."""
        if len(self._labelled) >= self.per_stream_limit:
            return False
        self._labelled.add(stream_id)
        self.stream_cpu.labels(stream_id).set(0.0)
        self.stream_voice_activity.labels(stream_id).set(0.0)
        return True

    def stream_update(self, stream_id: str, cpu_seconds: float, voice_activity: float) -> None:
        if stream_id in self._labelled:
            self.stream_cpu.labels(stream_id).set(cpu_seconds)
            self.stream_voice_activity.labels(stream_id).set(voice_activity)

    def stream_ended(self, stream_id: str) -> None:
        if stream_id in self._labelled:
            self._labelled.discard(stream_id)
            self.stream_cpu.remove(stream_id)
            self.stream_voice_activity.remove(stream_id)
