"""Load benchmark of the WebRTC service (a script, not a test).

Starts `percepnet-server` in its own process, then for each stream count N and each
mode (pass-through: no DSP at all; enhance: the enhancer) connects N client peers from
separate client processes, lets them run, and measures over a fixed window:

- server CPU (all its processes, from /proc) per stream, in % of one core;
- per-frame processing time p50/p99 (from the server's histogram);
- event-loop lag p50/p99, and how many of its 50 ms wake-ups were over 20 ms late;
- steal: the share of the server's core that the hypervisor gave to something else
  (a VM's /proc/stat; 0 on bare metal), so a stall can be told from our own work;
- frames bypassed (late) / failed on the server; frames lost at the clients
  (expected 50 packets/s per peer, minus what came back);
- proc%: CPU per stream spent in the stream's processor (downmix, enhancer, metrics),
  from the per-stream gauges; the rest of cpu/str% is WebRTC media (Opus, SRTP, RTP);
- with --offload batch (the server's default): the mean number of streams per model
  run (batch) and the p99 of the time a packet waited for its batch (wait p99).

    python -m bench.service_load --streams 2,4,8 --seconds 10 --workers 1

Uses the shipped model when models/percepnet-int8.onnx exists, otherwise the DSP
with unity gains (--unity-gains), which costs nearly the same minus inference.
Results as a table and as JSON (--out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from bench.common import (
    delta,
    free_port,
    noisy_speech,
    quantile,
    scrape,
    server_command,
    start_server,
    wait_ready,
)

PACKETS_PER_S = 50  # 20 ms Opus packets
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- server side measurement -------------------------------------------------------------
def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    total = 0.0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    return total


def steal_seconds(cpus: set[int] | None) -> float:
    """Time the hypervisor ran something else while these CPUs (None: all) had work: the
    steal column of /proc/stat, in seconds (0 on bare metal)."""
    wanted = {"cpu"} if cpus is None else {f"cpu{c}" for c in cpus}
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name in wanted:
            total += int(fields[7])  # user nice system idle iowait irq softirq steal
    return total / CLK_TCK


# -- clients (separate processes) --------------------------------------------------------
def client_main(
    url: str,
    n: int,
    mode: str,
    seed: int,
    conn: multiprocessing.connection.Connection,
    cpus: set[int] | None = None,
    inline_codecs: bool = True,
) -> None:
    from server.media import aiortc_hooks

    if cpus:
        os.sched_setaffinity(0, cpus)
    aiortc_hooks.install(inline_codecs=inline_codecs)
    asyncio.run(_client(url, n, mode, seed, conn))


async def _client(
    url: str, n: int, mode: str, seed: int, conn: multiprocessing.connection.Connection
) -> None:
    from server.client import ClientPeer, ClipTrack

    clip = noisy_speech(4.0, seed=seed)
    loop = asyncio.get_running_loop()
    peers = []
    try:
        for _ in range(n):
            peers.append(await ClientPeer.connect(url, ClipTrack(clip, loop=True), mode=mode))
        async with asyncio.timeout(30):
            for p in peers:
                await p.wait_received(0.5)
        conn.send("ready")
        assert await loop.run_in_executor(None, conn.recv) == "start"
        start = [len(p.received.chunks) for p in peers]
        t0 = time.monotonic()
        assert await loop.run_in_executor(None, conn.recv) == "stop"
        elapsed = time.monotonic() - t0
        got = [len(p.received.chunks) - s for p, s in zip(peers, start, strict=True)]
        conn.send({"received": got, "elapsed": elapsed})
    except Exception as exc:
        conn.send({"error": repr(exc)})
    finally:
        for p in peers:
            await p.close()


@dataclass
class Row:
    mode: str
    streams: int
    cpu_per_stream_pct: float
    server_cpu_pct: float
    frame_p50_ms: float
    frame_p99_ms: float
    loop_lag_p50_ms: float
    loop_lag_p99_ms: float
    bypassed: int
    failed: int
    lost_pct: float
    processing_cpu_pct: float = float("nan")
    repeat: int = 0
    batch_mean_streams: float = float("nan")
    batch_wait_p99_ms: float = float("nan")
    batch_wait_mean_ms: float = float("nan")
    gc_pauses_over_10ms: int = 0
    steal_pct: float = float("nan")  # of the server's core(s): the host ran something else
    lags_over_20ms: int = 0  # event-loop wake-ups (every 50 ms) more than 20 ms late
    error: str = ""


def run_point(
    url: str,
    server_pid: int,
    mode: str,
    n: int,
    seconds: float,
    clients: int,
    client_cpus: set[int] | None = None,
    inline_codecs: bool = True,
    server_cpus: set[int] | None = None,
) -> Row:
    ctx = multiprocessing.get_context("spawn")
    k = max(1, min(clients, n))
    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    pipes, procs = [], []
    for i, share in enumerate(shares):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=client_main,
            args=(url, share, mode, 10 * i, child, client_cpus, inline_codecs),
        )
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for p in pipes:
            if not p.poll(60):
                raise RuntimeError("client did not connect in 60 s")
            msg = p.recv()
            if msg != "ready":
                raise RuntimeError(f"client failed: {msg}")
        time.sleep(1.0)  # settle
        m0, c0, s0 = scrape(url), cpu_seconds(server_pid), steal_seconds(server_cpus)
        for p in pipes:
            p.send("start")
        t0 = time.monotonic()
        time.sleep(seconds)
        m1, c1, s1 = scrape(url), cpu_seconds(server_pid), steal_seconds(server_cpus)
        wall = time.monotonic() - t0
        for p in pipes:
            p.send("stop")
        results = [p.recv() for p in pipes]
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    errors = [r["error"] for r in results if "error" in r]
    received = sum(sum(r["received"]) for r in results if "received" in r)
    expected = sum(
        PACKETS_PER_S * r["elapsed"] * len(r["received"]) for r in results if "received" in r
    )
    server_cpu = 100.0 * (c1 - c0) / wall
    return Row(
        mode=mode,
        streams=n,
        cpu_per_stream_pct=server_cpu / n,
        server_cpu_pct=server_cpu,
        frame_p50_ms=1e3 * quantile(m0, m1, "percepnet_frame_processing_seconds", 0.5),
        frame_p99_ms=1e3 * quantile(m0, m1, "percepnet_frame_processing_seconds", 0.99),
        loop_lag_p50_ms=1e3 * quantile(m0, m1, "percepnet_event_loop_lag_seconds", 0.5),
        loop_lag_p99_ms=1e3 * quantile(m0, m1, "percepnet_event_loop_lag_seconds", 0.99),
        bypassed=int(delta(m0, m1, 'percepnet_frames_total{outcome="bypassed"}')),
        failed=int(delta(m0, m1, 'percepnet_frames_total{outcome="failed"}')),
        lost_pct=100.0 * max(0.0, 1.0 - received / expected) if expected else float("nan"),
        processing_cpu_pct=100.0 * stream_cpu_delta(m0, m1) / wall / n,
        batch_mean_streams=histogram_mean(m0, m1, "percepnet_batch_streams"),
        batch_wait_p99_ms=1e3 * quantile(m0, m1, "percepnet_batch_wait_seconds", 0.99),
        batch_wait_mean_ms=1e3 * histogram_mean(m0, m1, "percepnet_batch_wait_seconds"),
        gc_pauses_over_10ms=int(gc_pauses_over(m0, m1, 0.01)),
        steal_pct=100.0 * (s1 - s0) / wall / len(server_cpus or os.sched_getaffinity(0)),
        lags_over_20ms=int(histogram_over(m0, m1, "percepnet_event_loop_lag_seconds", 0.02)),
        error="; ".join(errors),
    )


def histogram_mean(before: dict[str, float], after: dict[str, float], metric: str) -> float:
    """Mean of a histogram's observations between two scrapes (nan if none)."""
    count = delta(before, after, metric + "_count")
    return delta(before, after, metric + "_sum") / count if count else float("nan")


def gc_pauses_over(before: dict[str, float], after: dict[str, float], seconds: float) -> float:
    """Garbage collections (any generation) longer than `seconds` in between."""
    return histogram_over(before, after, "percepnet_gc_pause_seconds", seconds)


def histogram_over(
    before: dict[str, float], after: dict[str, float], name: str, seconds: float
) -> float:
    """Observations of histogram `name` above the bucket bound `seconds`, in between."""
    total = inside = 0.0
    for key, value in after.items():
        if key.startswith(name + "_count"):
            total += value - before.get(key, 0.0)
        elif key.startswith(name + "_bucket") and f'le="{seconds}"' in key:
            inside += value - before.get(key, 0.0)
    return total - inside


def stream_cpu_delta(before: dict[str, float], after: dict[str, float]) -> float:
    """CPU seconds the streams' processors (downmix, enhancer, metrics) used in between:
    the per-stream gauges, for streams present at both scrapes (updated once per stats
    interval, so a short window undercounts by up to one interval)."""
    name = "percepnet_stream_cpu_seconds{"
    return sum(
        value - before[key]
        for key, value in after.items()
        if key.startswith(name) and key in before
    )


def main() -> int:
    from server.ops.config import Config

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--streams", default="1,2,4,8", help="comma-separated stream counts")
    ap.add_argument("--seconds", type=float, default=8.0, help="measurement window per point")
    ap.add_argument("--workers", type=int, default=1, help="server worker processes")
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--offload", choices=["batch", "inline", "thread"], default="batch")
    ap.add_argument("--batch-window-ms", type=float, default=Config.batch_window_ms)
    ap.add_argument("--model", help="ONNX model (default: shipped model, else unity gains)")
    ap.add_argument("--modes", default="passthrough,enhance")
    ap.add_argument("--repeats", type=int, default=1, help="sweeps over --streams")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="server on core 0, clients on the other cores (--workers 1): the server's core "
        "does nothing else, so 'streams held' measures one core",
    )
    ap.add_argument(
        "--inline-codecs",
        choices=["on", "off"],
        default="on",
        help="server and clients: Opus on the event loop (on) or in aiortc's threads",
    )
    ap.add_argument(
        "--opus-complexity",
        type=int,
        default=Config.opus_complexity,
        help="the server's Opus encoder complexity (clients keep aiortc's 10)",
    )
    ap.add_argument(
        "--stock-baseline",
        action="store_true",
        help="also run a second server with stock aiortc media (--inline-codecs off "
        "--opus-complexity 10 --receive-buffer aiortc) and measure its pass-through at "
        "each N: mode stock-pass",
    )
    ap.add_argument("--out", help="write results as JSON here")
    args = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    from percepnet.runtime import DEFAULT_MODEL

    model = Path(args.model) if args.model else DEFAULT_MODEL
    cmd = server_command(port, "--max-streams", "256", "--offload", args.offload,
                         "--batch-window-ms", str(args.batch_window_ms),
                         "--inline-codecs", args.inline_codecs,
                         "--opus-complexity", str(args.opus_complexity),
                         "--log-level", "WARNING", workers=args.workers)  # fmt: skip
    cmd += ["--model", str(model)] if model.exists() else ["--unity-gains"]
    enhancer = str(model) if model.exists() else "unity gains (no model)"
    cores = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = ({cores[0]}, set(cores[1:])) if args.pin else (None, None)
    if args.pin and (args.workers != 1 or not client_cpus):
        print("--pin needs --workers 1 and at least 2 cores", file=sys.stderr)
        return 2

    servers = {"main": (url, start_server(cmd, server_cpus))}
    if args.stock_baseline:
        stock_port = free_port()
        stock_cmd = [*cmd, "--port", str(stock_port), "--inline-codecs", "off",
                     "--opus-complexity", "10", "--receive-buffer", "aiortc"]  # fmt: skip
        servers["stock"] = (f"http://127.0.0.1:{stock_port}", start_server(stock_cmd, server_cpus))
    modes = args.modes.split(",") + (["stock-pass"] if args.stock_baseline else [])
    rows: list[Row] = []
    try:
        for name, (server_url, proc) in servers.items():
            if not wait_ready(server_url, proc) and proc.poll() is not None:
                print(f"{name} server failed to start", file=sys.stderr)
                return 1
        print(f"server: {args.workers} worker(s), offload={args.offload} "
              f"(window {args.batch_window_ms:g} ms), enhancer: {enhancer}; "
              f"{os.cpu_count()} cores, {args.clients} client processes"
              f"{'; server on core 0, clients on the rest' if args.pin else ''}")  # fmt: skip
        header = (f"{'mode':<12}{'N':>4}{'cpu/str%':>10}{'srv cpu%':>10}{'fr p50':>8}{'fr p99':>8}"
                  f"{'lag p50':>9}{'lag p99':>9}{'byp':>6}{'fail':>5}{'lost%':>7}"
                  f"{'proc%':>7}{'batch':>6}{'wait':>6}{'wait99':>7}{'gc>10':>6}"
                  f"{'lag>20':>7}{'steal%':>7}")  # fmt: skip
        print(header)
        # Modes alternate at each N, and the whole sweep repeats: machine drift then
        # shows up as spread between repeats instead of as a difference between modes.
        for rep, n, mode in (
            (rep, int(n), mode)
            for rep in range(args.repeats)
            for n in args.streams.split(",")
            for mode in modes
        ):
            target_url, target = servers["stock" if mode == "stock-pass" else "main"]
            row = run_point(
                target_url, target.pid, "passthrough" if mode == "stock-pass" else mode, n,
                args.seconds, args.clients, client_cpus,
                inline_codecs=args.inline_codecs == "on", server_cpus=server_cpus,
            )  # fmt: skip
            row.mode = mode
            row.repeat = rep
            rows.append(row)
            print(f"{row.mode:<12}{row.streams:>4}{row.cpu_per_stream_pct:>10.2f}"
                  f"{row.server_cpu_pct:>10.1f}{row.frame_p50_ms:>8.3f}{row.frame_p99_ms:>8.3f}"
                  f"{row.loop_lag_p50_ms:>9.2f}{row.loop_lag_p99_ms:>9.2f}{row.bypassed:>6}"
                  f"{row.failed:>5}{row.lost_pct:>7.2f}{row.processing_cpu_pct:>7.2f}"
                  f"{row.batch_mean_streams:>6.2f}{row.batch_wait_mean_ms:>6.2f}"
                  f"{row.batch_wait_p99_ms:>7.2f}{row.gc_pauses_over_10ms:>6}"
                  f"{row.lags_over_20ms:>7}{row.steal_pct:>7.2f}"
                  f" {row.error}", flush=True)  # fmt: skip
            time.sleep(1.0)
    finally:
        for _, proc in servers.values():
            proc.send_signal(signal.SIGTERM)
        for _, proc in servers.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    summary = summarise(rows)
    for line in cast(list[str], summary["lines"]):
        print(line)
    if args.out:
        Path(args.out).write_text(
            json.dumps({"rows": [asdict(r) for r in rows], **summary}, indent=2)
        )
    return 0


def enhance_ratios(by: dict[tuple[str, int, int], Row], base: str) -> dict[tuple[int, int], float]:
    """Enhanced CPU per stream over mode `base`'s, per (N, repeat) with no bypassed frames."""
    return {
        (n, rep): row.cpu_per_stream_pct / by[(base, n, rep)].cpu_per_stream_pct
        for (mode, n, rep), row in by.items()
        if mode == "enhance" and (base, n, rep) in by and row.bypassed == 0
    }


def median_by_n(ratios: dict[tuple[int, int], float]) -> dict[int, float]:
    return {
        n: statistics.median(v for (m, _), v in ratios.items() if m == n)
        for n in sorted({n for n, _ in ratios})
    }


def summarise(rows: list[Row]) -> dict[str, object]:
    """Enhancement overhead over pass-through (median over N and repeats; and per N) and
    the largest clean N."""
    by = {(r.mode, r.streams, r.repeat): r for r in rows if not r.error}
    pairs = enhance_ratios(by, "passthrough")
    ratios = list(pairs.values())
    per_n = median_by_n(pairs)
    stock_per_n = median_by_n(enhance_ratios(by, "stock-pass"))
    clean_rows = [r for r in rows if r.mode == "enhance" and not r.error and r.lost_pct < 1.0
                  and r.bypassed == 0 and r.failed == 0 and r.frame_p99_ms < 10.0]  # fmt: skip
    # N is held when every repeat at N was clean
    tried = {r.streams for r in rows if r.mode == "enhance"}
    clean = [
        n for n in sorted(tried)
        if all(r in clean_rows for r in rows if r.mode == "enhance" and r.streams == n)
    ]  # fmt: skip
    # CPU per stream only from points that kept up (bypassed frames cost ~nothing); the
    # capacity figure is the most loaded clean point's, where the core is busy as in
    # production (at low N an idle core wakes cold for every packet and costs more)
    top = max(clean) if clean else 0
    enh = [r.cpu_per_stream_pct for r in clean_rows if r.streams == top]
    lines = []
    if ratios:
        ratio = statistics.median(ratios)
        lines.append(f"enhance / pass-through CPU per stream: median {ratio:.2f}x (target <= 1.5x)")
        lines.append("  by N: " + ", ".join(f"{n}: {v:.2f}x" for n, v in per_n.items()))
    if stock_per_n:
        lines.append("enhance / stock aiortc pass-through (same run): "
                     + ", ".join(f"{n}: {v:.2f}x" for n, v in stock_per_n.items()))  # fmt: skip
    if enh:
        per_core = 100.0 / statistics.median(enh)
        lines.append(f"enhanced streams per core (100 % / median CPU per stream at N={top}, the "
                     f"most loaded clean point): {per_core:.1f} (target >= 8)")  # fmt: skip
    lines.append(
        f"most enhanced streams without loss/bypass and p99 < 10 ms in every repeat: {top}"
    )
    return {"lines": lines, "ratio_median": statistics.median(ratios) if ratios else None,
            "ratio_by_streams": per_n, "max_clean_streams": top,
            "streams_per_core": 100.0 / statistics.median(enh) if enh else None,
            "stock_ratio_by_streams": stock_per_n}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
