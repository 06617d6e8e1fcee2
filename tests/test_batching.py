"""Many streams through one model run: runtime.gains_for_many and the server's BatchRunner."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamTrack

from percepnet.analysis import Frames
from percepnet.constants import FRAME_SIZE, LATENCY_SAMPLES, NB_BANDS
from percepnet.enhancer import Enhancer, GainPair
from percepnet.runtime import MODELS_DIR, OnnxModel, OnnxSource, gains_for_many
from server.media.aiortc_hooks.inline_codecs import arrival_clock
from server.media.convert import to_stereo_s16
from server.media.processor import StreamProcessor, StreamStats, process_many
from server.media.runners import RECENT_S, BatchRunner
from server.media.track import EnhancedTrack
from server.ops.prometheus import Metrics
from tests.signals import add_noise, speechlike

FLOAT_MODEL = MODELS_DIR / "percepnet.onnx"
INT8_MODEL = MODELS_DIR / "percepnet-int8.onnx"
PACKET = 2 * FRAME_SIZE


def signals(n: int, seconds: float = 0.6) -> list[np.ndarray]:
    """Speech-like noisy signals, plus the hard cases: silence and clipped loud noise."""
    rng = np.random.default_rng(11)
    out = [add_noise(speechlike(seconds, rng), snr, rng) for snr in (0.0, 5.0, 15.0)]
    out.append(np.zeros(int(seconds * 48000)))
    out.append(np.clip(rng.standard_normal(int(seconds * 48000)) * 3.0, -1.0, 1.0))
    return out[:n]


def analysed(enhancer: Enhancer, x: np.ndarray, frames_per_block: list[int]) -> list[Frames]:
    blocks, pos = [], 0
    for k in frames_per_block:
        blocks.append(enhancer.analyse_frames(x[pos : pos + k * FRAME_SIZE]))
        pos += k * FRAME_SIZE
    return blocks


def gains_alone_and_batched(
    path: Path, n_streams: int, frames_per_block: list[int]
) -> tuple[list[list[GainPair]], list[list[GainPair]]]:
    model = OnnxModel(path)
    sigs = signals(n_streams)
    blocks = [analysed(Enhancer(), x, frames_per_block) for x in sigs]
    alone = []
    for stream_blocks in blocks:
        src = OnnxSource(model)
        alone.append([src(b) for b in stream_blocks])
    sources = [OnnxSource(model) for _ in sigs]
    batched: list[list[GainPair]] = [[] for _ in sigs]
    for j in range(len(frames_per_block)):
        # streams with blocks of different lengths in one call: 1, 2 or 3 frames
        for s, pair in enumerate(gains_for_many(sources, [b[j] for b in blocks])):
            batched[s].append(pair)
    return alone, batched


def test_streams_bringing_different_frame_counts_to_one_call_match_each_alone() -> None:
    # The service's usual call has every stream bring one packet (2 frames); a stream
    # that brings more or fewer frames takes the general path, which this covers.
    model = OnnxModel(FLOAT_MODEL)
    lengths = [[2, 1, 3], [1, 3, 2], [3, 2, 1]]  # per stream, per call
    sigs = signals(3)
    blocks = [analysed(Enhancer(), x, n) for x, n in zip(sigs, lengths, strict=True)]
    sources = [OnnxSource(model) for _ in sigs]
    batched: list[list[GainPair]] = [[] for _ in sigs]
    for j in range(3):
        assert sorted({len(b[j]) for b in blocks}) == [1, 2, 3]  # uneven in every call
        for s, pair in enumerate(gains_for_many(sources, [b[j] for b in blocks])):
            assert not isinstance(pair, Exception)
            batched[s].append(pair)
    for s, stream_blocks in enumerate(blocks):
        alone = OnnxSource(model)
        for b, (gb, rb) in zip(stream_blocks, batched[s], strict=True):
            ga, ra = alone(b)
            assert gb.shape == ga.shape == (len(b), NB_BANDS)
            assert ra is not None and rb is not None
            np.testing.assert_allclose(gb, ga, atol=1e-5)
            np.testing.assert_allclose(rb, ra, atol=1e-5)


def test_float_model_batched_equals_each_stream_alone() -> None:
    assert OnnxModel(FLOAT_MODEL).batch_axes is not None  # the shipped graph batches
    alone, batched = gains_alone_and_batched(FLOAT_MODEL, 5, [2, 1, 3, 2, 2, 2])
    for a_stream, b_stream in zip(alone, batched, strict=True):
        for (ga, ra), (gb, rb) in zip(a_stream, b_stream, strict=True):
            assert ga.shape == gb.shape and ga.shape[1] == NB_BANDS
            assert ra is not None and rb is not None
            np.testing.assert_allclose(gb, ga, atol=1e-5)
            np.testing.assert_allclose(rb, ra, atol=1e-5)


def test_int8_batching_moves_gains_within_quantisation_noise() -> None:
    # Dynamic int8 quantises each activation tensor with one scale for the whole batch,
    # so other streams (silence, clipped noise) change a stream's rounding a little.
    alone, batched = gains_alone_and_batched(INT8_MODEL, 5, [2] * 25)
    worst = max(
        float(np.abs(gb - ga).max())
        for a_stream, b_stream in zip(alone, batched, strict=True)
        for (ga, _), (gb, _) in zip(a_stream, b_stream, strict=True)
    )
    assert worst < 0.05, worst


def test_bound_runs_give_exactly_what_plain_runs_give() -> None:
    # gains_for_many runs equal-length blocks through BoundRuns (preallocated buffers,
    # two IOBindings); plain session runs with each stream's state carried by hand must
    # give the same numbers, through batches of changing size and reused bindings.
    model = OnnxModel(INT8_MODEL)
    sigs = signals(3)
    enhancers = [Enhancer() for _ in sigs]
    sources = [OnnxSource(model) for _ in sigs]
    plain = [model.initial_state() for _ in sigs]
    for j, members in enumerate([[0], [0, 1, 2], [0], [1, 2], [0, 1, 2], [2]]):
        packet = slice(j * PACKET, (j + 1) * PACKET)
        blocks = [enhancers[s].analyse_frames(sigs[s][packet]) for s in members]
        results = gains_for_many([sources[s] for s in members], blocks)
        joined = model.stack([plain[s] for s in members])
        for t in range(2):
            feats = np.stack([b.features[t] for b in blocks]).astype(np.float32)
            g, r, joined = model.step(feats, joined)
            for k, result in enumerate(results):
                assert not isinstance(result, Exception)
                np.testing.assert_array_equal(result[0][t], g[k])
                assert result[1] is not None
                np.testing.assert_array_equal(result[1][t], r[k])
        for s, state in zip(members, model.unstack(joined, len(members)), strict=True):
            plain[s] = state
            np.testing.assert_array_equal(sources[s].state["state"], state["state"])
        assert sources[members[0]].state["state"].any()
    # a state handed back is the source's own, not a view of the bound buffers
    for buffers in model.bound(1).states + model.bound(3).states:
        assert not any(np.shares_memory(src.state["state"], buffers["state"]) for src in sources)


# -- the server side -----------------------------------------------------------------------
def processors(n: int, path: Path, metrics: Metrics) -> list[StreamProcessor]:
    model = OnnxModel(path)
    return [StreamProcessor(Enhancer(OnnxSource(model)), metrics, StreamStats()) for _ in range(n)]


def test_process_many_equals_process_one_by_one() -> None:
    metrics = Metrics()
    sigs = signals(4)
    one, many = processors(4, FLOAT_MODEL, metrics), processors(4, FLOAT_MODEL, metrics)
    n_packets = len(sigs[0]) // PACKET
    for i in range(n_packets):
        xs = [x[i * PACKET : (i + 1) * PACKET] for x in sigs]
        singles = [p.process(x, False) for p, x in zip(one, xs, strict=True)]
        together = process_many([(p, x, False) for p, x in zip(many, xs, strict=True)])
        for a, b in zip(singles, together, strict=True):
            np.testing.assert_allclose(b, a, atol=1e-6)
    for p in many:
        assert p.stats.frames_processed == 2 * n_packets and p.stats.frames_failed == 0
        assert p.stats.cpu_seconds > 0  # the shared model run is charged to the streams


def hist(metrics: Metrics, name: str) -> tuple[float, float]:
    """(count, sum) of a histogram."""
    count = metrics.registry.get_sample_value(f"{name}_count") or 0.0
    total = metrics.registry.get_sample_value(f"{name}_sum") or 0.0
    return count, total


class Clock:
    """Packet arrival times for the runner, set by the test (its timer runs in real time)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_runner_batches_streams_whose_packets_arrive_together() -> None:
    metrics = Metrics()
    procs = processors(3, INT8_MODEL, metrics)
    clock = Clock()
    runner = BatchRunner(metrics, window_s=1.0, clock=clock)
    x = signals(1)[0]
    # the first packets teach the runner the three streams' arrival times
    await asyncio.gather(*(runner.run(p, x[:PACKET], False) for p in procs))
    count0, streams0 = hist(metrics, "percepnet_batch_streams")
    for i in range(1, 11):
        clock.t += 0.02
        chunk = x[i * PACKET : (i + 1) * PACKET]
        start = time.perf_counter()
        outs = await asyncio.gather(*(runner.run(p, chunk, False) for p in procs))
        # the last stream in completes the batch: nobody waits for the 1 s window
        assert time.perf_counter() - start < 0.5
        assert all(len(y) == PACKET for y in outs)
    count, streams = hist(metrics, "percepnet_batch_streams")
    assert count - count0 == 10 and streams - streams0 == 30
    assert all(p.stats.frames_processed == 22 for p in procs)


async def test_streams_out_of_phase_by_more_than_the_window_do_not_wait() -> None:
    metrics = Metrics()
    a, b = processors(2, INT8_MODEL, metrics)
    clock = Clock()
    runner = BatchRunner(metrics, window_s=0.004, clock=clock)
    chunk = signals(1)[0][:PACKET]
    start = time.perf_counter()
    for _ in range(10):  # a at 0 ms, b at 10 ms, every 20 ms
        await runner.run(a, chunk, False)
        clock.t += 0.010
        await runner.run(b, chunk, False)
        clock.t += 0.010
    # each ran at once: b is not due within a's 4 ms window, nor a within b's
    assert time.perf_counter() - start < 10 * 0.004
    assert hist(metrics, "percepnet_batch_streams") == (20, 20)
    # 2 ms apart, inside the window: they run together, the first waiting for the second
    runner = BatchRunner(metrics, window_s=0.004, clock=clock)
    for _ in range(3):
        clock.t += 0.018
        first = asyncio.create_task(runner.run(a, chunk, False))
        await asyncio.sleep(0)
        clock.t += 0.002
        await runner.run(b, chunk, False)
        await first
    # the first round meets b unannounced (alone, alone), then two batches of two
    count, streams = hist(metrics, "percepnet_batch_streams")
    assert (count - 20, streams - 20) == (4, 6)


async def test_single_stream_never_waits_and_output_is_unchanged() -> None:
    metrics = Metrics()
    batched, inline = processors(2, INT8_MODEL, metrics)
    runner = BatchRunner(metrics, window_s=1.0)
    x = signals(1)[0]
    start = time.perf_counter()
    for i in range(len(x) // PACKET):
        chunk = x[i * PACKET : (i + 1) * PACKET]
        y = await runner.run(batched, chunk, False)
        np.testing.assert_allclose(y, inline.process(chunk, False), atol=1e-9)
    assert time.perf_counter() - start < 1.0  # never held for the 1 s window
    assert (
        metrics.registry.get_sample_value("percepnet_batch_wait_seconds_bucket", {"le": "0.0005"})
        == hist(metrics, "percepnet_batch_wait_seconds")[0]
    )


async def test_a_silent_stream_holds_others_for_one_window_at_most() -> None:
    metrics = Metrics()
    a, b = processors(2, INT8_MODEL, metrics)
    window = 0.03
    clock = Clock()
    runner = BatchRunner(metrics, window_s=window, clock=clock)
    chunk = signals(1)[0][:PACKET]
    await runner.run(a, chunk, False)
    await runner.run(b, chunk, False)
    # b stops sending: a waits for it for one window, while b is still due
    clock.t += 0.02
    start = time.perf_counter()
    await runner.run(a, chunk, False)
    waited = time.perf_counter() - start
    assert window * 0.8 <= waited < window + 0.5, waited
    clock.t += RECENT_S  # b is no longer active: a runs at once
    start = time.perf_counter()
    await runner.run(a, chunk, False)
    assert time.perf_counter() - start < window * 0.5


async def test_cancelled_packet_is_dropped_and_the_rest_of_the_batch_runs() -> None:
    metrics = Metrics()
    a, b, c = processors(3, INT8_MODEL, metrics)
    clock = Clock()
    runner = BatchRunner(metrics, window_s=1.0, clock=clock)
    chunk = signals(1)[0][:PACKET]
    for p in (a, b, c):
        await runner.run(p, chunk, False)
    clock.t += 0.02
    gone = asyncio.create_task(runner.run(a, chunk, False))
    await asyncio.sleep(0)  # a waits: b and c are due
    gone.cancel()  # the peer vanished while its packet waited
    with pytest.raises(asyncio.CancelledError):
        await gone
    outs = await asyncio.gather(runner.run(b, chunk, False), runner.run(c, chunk, False))
    assert all(len(y) == PACKET for y in outs)
    assert a.stats.frames_processed == 2 and b.stats.frames_processed == 4
    runner.close()


class Failing:
    """A GainSource that fails on its third call; unity gains otherwise."""

    def __init__(self) -> None:
        self.calls = 0

    def reset(self) -> None:
        pass

    def __call__(self, frames: Frames) -> GainPair:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("model run failed")
        return np.ones((len(frames), NB_BANDS)), None


async def test_failed_gains_pass_the_packet_through_and_the_stream_goes_on() -> None:
    metrics = Metrics()
    model = OnnxModel(INT8_MODEL)
    bad = StreamProcessor(Enhancer(Failing()), metrics, StreamStats())
    good = StreamProcessor(Enhancer(OnnxSource(model)), metrics, StreamStats())
    clock = Clock()
    runner = BatchRunner(metrics, window_s=1.0, clock=clock)
    x = signals(1)[0]
    outs: list[np.ndarray] = []
    for i in range(6):
        chunk = x[i * PACKET : (i + 1) * PACKET]
        y_bad, _ = await asyncio.gather(
            runner.run(bad, chunk, False), runner.run(good, chunk, False)
        )
        outs.append(y_bad)
    assert bad.stats.frames_failed == 2 and bad.stats.frames_processed == 10
    assert good.stats.frames_failed == 0 and good.stats.frames_processed == 12
    # the failed packet (the third) went out as the input delayed by the enhancer's latency
    start = 2 * PACKET - LATENCY_SAMPLES
    np.testing.assert_allclose(outs[2], x[start : start + PACKET], atol=1e-12)


# -- the deadline: a burst is not late, a frame that waited is ---------------------------
class QueueSource(MediaStreamTrack):
    """A remote track as aiortc makes one: decoded frames wait in `_queue`."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[av.AudioFrame] = asyncio.Queue()

    async def recv(self) -> av.AudioFrame:
        return await self._queue.get()


def decoded_frame(i: int, arrived: float | None) -> av.AudioFrame:
    x = 0.1 * np.sin(np.arange(PACKET) * 2 * np.pi * 300 / 48000)
    frame = to_stereo_s16(x, i * PACKET, Fraction(1, 48000))
    if arrived is not None:
        frame.opaque = arrived  # what InlineDecoder stamps
    return frame


@pytest.mark.parametrize(
    ("age_s", "stamped", "expect_bypassed"),
    [
        (0.0, True, 0),  # a burst of 8 packets decoded just now: all enhanced
        (0.1, True, 16),  # the same 8, each waited 100 ms: all late
        (0.0, False, 8),  # unstamped burst: judged by the queue behind each: 7..4 behind late
    ],
    ids=["fresh-burst", "stale", "unstamped-burst"],
)
async def test_deadline_is_the_wait_since_decoding_not_the_queue(
    age_s: float, stamped: bool, expect_bypassed: int, caplog: pytest.LogCaptureFixture
) -> None:
    stats = StreamStats()
    processor = StreamProcessor(Enhancer(), Metrics(), stats)
    source = QueueSource()
    track = EnhancedTrack(source, processor, deadline_s=0.06)
    now = arrival_clock()
    for i in range(8):
        source._queue.put_nowait(decoded_frame(i, now - age_s if stamped else None))
    outs = [await track.recv() for _ in range(8)]
    assert all(f.samples == PACKET and f.format.name == "s16" for f in outs)
    assert stats.frames_bypassed == expect_bypassed
    assert stats.frames_processed == 16 - expect_bypassed
    if stamped:
        assert stats.queue_wait_ms == pytest.approx(1e3 * age_s, abs=50)
    # falling behind is logged, once per interval, with how long the frame waited
    warnings = [r.getMessage() for r in caplog.records if "falling behind" in r.getMessage()]
    assert len(warnings) == (1 if expect_bypassed else 0), warnings
    if stamped and expect_bypassed:
        assert "waited 1" in warnings[0] and "deadline 60 ms" in warnings[0]


async def test_a_packet_is_held_at_most_window_plus_slack_after_it_arrived() -> None:
    """A packet that already waited 25 ms in its stream's queue may wait only 5 ms more
    (20 ms window + 10 ms slack from its arrival), so it does not wait for a stream due
    in 10 ms; one whose time is up runs in the next loop iteration."""
    a, b = (StreamProcessor(Enhancer(), Metrics(), StreamStats()) for _ in range(2))
    x = np.zeros(PACKET)
    a.process(x, False), b.process(x, False)  # warm: compiled code loaded

    async def a_waits(arrived_ago: float | None, after_b: float) -> float:
        runner = BatchRunner(Metrics(), window_s=0.02)
        await runner.run(b, x, False)  # b is now expected every 20 ms
        await asyncio.sleep(after_b)
        t0 = time.monotonic()
        await runner.run(a, x, False, arrived=None if arrived_ago is None else t0 - arrived_ago)
        return time.monotonic() - t0

    assert await a_waits(None, 0.01) > 0.008  # no arrival time: a waits for b, due in 10 ms
    assert await a_waits(0.025, 0.01) < 0.006  # 5 ms left: b is not due before then
    assert await a_waits(0.05, 0.0) < 0.004  # its time is up: it runs at once


async def test_packets_that_are_behind_still_share_a_batch() -> None:
    """Under load every packet is past its time when it enters; those ready in the same
    loop iteration still go through the model together, not one by one."""
    metrics = Metrics()
    runner = BatchRunner(metrics, window_s=0.02)
    procs = [StreamProcessor(Enhancer(), Metrics(), StreamStats()) for _ in range(4)]
    x = np.zeros(PACKET)
    old = time.monotonic() - 0.05
    await asyncio.gather(*(runner.run(p, x, False, arrived=old) for p in procs))
    assert [p.stats.frames_processed for p in procs] == [2, 2, 2, 2]
    assert hist(metrics, "percepnet_batch_streams") == (1, 4)  # one run of 4 streams
