"""Service configuration: one frozen record, built once from flags and PERCEPNET_* variables.

Precedence: command-line flag > environment variable > default. Library code raises
ConfigError; only main() turns it into an exit status.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

ENV_PREFIX = "PERCEPNET_"
PACKAGE_STATIC = Path(__file__).resolve().parents[1] / "static"

Offload = Literal["batch", "inline", "thread"]
LogFormat = Literal["text", "json"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

STREAMS_PER_CORE = 10
"""Default capacity per worker (one per core): enhanced streams one core held without
loss in the load sweeps (README, results/service_load.md). --max-streams overrides it."""
OPUS_MIN_COMPLEXITY = 0
OPUS_MAX_COMPLEXITY = 10
"""libopus encoder complexity range; the highest is also libopus's default (aiortc's)."""
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")


class ConfigError(ValueError):
    """An unusable setting (bad number, malformed ICE server URL...)."""


class ListenError(ConfigError):
    """The listening address cannot be used (in use, no permission...). Defined here, not
    in server/__main__.py, so that `python -m server` (where that module is __main__)
    and the router catch the same class."""


@dataclass(frozen=True)
class IceServer:
    """One STUN/TURN server, as handed to aiortc and to the browser page."""

    urls: str
    username: str | None = None
    credential: str | None = None

    def as_json(self) -> dict[str, str]:
        out = {"urls": self.urls}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 8080
    model: Path | None = None
    """ONNX model; None: the package default (models/percepnet-int8.onnx)."""
    unity_gains: bool = False
    """Run the full DSP with unity gains and no model (tests, benchmarks, wiring checks)."""
    max_streams: int = 64
    """Concurrent streams across all workers; beyond it offers get 503 + Retry-After
    (load_config's default: STREAMS_PER_CORE per worker)."""
    workers: int = 1
    """Worker processes, each with its own event loop; >1 puts a router in front."""
    ice_servers: tuple[IceServer, ...] = ()
    """Empty by default: no public STUN on a closed network."""
    auth_token: str | None = None
    """Operator token: when set, 'Authorization: Bearer TOKEN' is required on signalling,
    the stream list, /metrics and the RTP sidecar (each session's own endpoints need
    the session's capability URL as well)."""
    rtp_allow: tuple[str, ...] = ()
    """CIDR networks the RTP sidecar may send to; empty: loopback only. Multicast and
    broadcast destinations are refused whatever this says."""
    max_pending: int = 16
    """Sessions per worker admitted but not yet connected (ICE/DTLS, or no RTP yet)."""
    max_pending_per_client: int = 4
    """...of which one client address may hold this many (more: 429)."""
    forwarded_client: bool = False
    """Take the client address from the router's X-PercepNet-Client header (set for
    workers behind the router only, which listen on a private Unix socket)."""
    offload: Offload = "batch"
    """Where the enhancer runs: on the event loop, each stream's packets batched with the
    other streams' for the model (batch, the cheapest), one by one (inline), or in one
    thread (thread)."""
    batch_window_ms: float = 20.0
    """batch: the longest a packet waits for other streams' packets to share its model run."""
    frame_deadline_ms: float = 60.0
    """A frame that waited longer than this after decoding passes through (with aiortc's
    decoder threads: a frame with more than this much audio queued behind it)."""
    inline_codecs: bool = True
    """Opus decode and encode of audio on the event loop, not in aiortc's threads (the
    hand-offs cost more than the codec; server/media/aiortc_hooks.py)."""
    receive_buffer: str = "relay"
    """WebRTC audio in: relay (each packet decoded as it arrives in order; only a gap holds
    the packet after it, 20 ms) or aiortc (its playout buffer: every packet waits four more, 80 ms;
    server/media/aiortc_hooks.py item 4)."""
    opus_complexity: int = 5
    """libopus encoder complexity for what WebRTC peers get back (aiortc's default is the
    highest, OPUS_MAX_COMPLEXITY; at its 96 kbit/s, 5 costs about a third less CPU at the
    same measured quality, results/opus_complexity.md). The RTP sidecar's 32 kbit/s mono
    encoder keeps the highest."""
    max_body_bytes: int = 64 * 1024
    """Largest signalling body accepted (an SDP offer is a few kB)."""
    drain_timeout_s: float = 30.0
    """On SIGTERM: wait this long for streams to end before closing them."""
    retry_after_s: int = 5
    connect_timeout_s: float = 10.0
    """A session whose peer has not connected (or sent RTP) by then is closed."""
    idle_timeout_s: float = 10.0
    """A connected session that has received no audio for this long is closed."""
    stats_interval_s: float = 0.1
    """Period of the voice-activity/stats messages on the data channel."""
    per_stream_metrics_limit: int = 64
    """At most this many per-stream Prometheus series per worker (the rest: /streams only)."""
    static_dir: Path = field(default=PACKAGE_STATIC)
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    """text: one human-readable line per record; json: one JSON object per line, for log
    pipelines (server/__main__.py, JsonFormatter)."""
    tls_cert: Path | None = None
    """PEM certificate chain; with tls_key the server speaks HTTPS itself. Browsers give
    a page from another machine the microphone only in a secure context (HTTPS)."""
    tls_key: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port out of range: {self.port}")
        if self.max_streams < 1:
            raise ConfigError("max streams must be at least 1")
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if self.workers > self.max_streams:
            raise ConfigError("more workers than max streams")
        if self.offload not in ("batch", "inline", "thread"):
            raise ConfigError(f"offload must be batch, inline or thread, not {self.offload!r}")
        if self.receive_buffer not in ("relay", "aiortc"):
            raise ConfigError(
                f"receive buffer must be relay or aiortc, not {self.receive_buffer!r}"
            )
        if not 0 <= self.batch_window_ms <= 20:
            raise ConfigError(f"batch window must be 0-20 ms, not {self.batch_window_ms}")
        if not OPUS_MIN_COMPLEXITY <= self.opus_complexity <= OPUS_MAX_COMPLEXITY:
            raise ConfigError(
                f"Opus complexity must be {OPUS_MIN_COMPLEXITY}-{OPUS_MAX_COMPLEXITY}, "
                f"not {self.opus_complexity}"
            )
        if self.frame_deadline_ms <= 0 or self.max_body_bytes <= 0 or self.drain_timeout_s < 0:
            raise ConfigError("deadline, body size and drain timeout must be positive")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(
                f"log level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log format must be text or json, not {self.log_format!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if self.max_pending < 1 or self.max_pending_per_client < 1:
            raise ConfigError("pending session limits must be at least 1")
        if not 0 < self.connect_timeout_s <= 300:
            raise ConfigError(
                f"connect timeout must be in (0, 300] s, not {self.connect_timeout_s}"
            )
        for network in self.rtp_networks:
            if network.is_multicast:
                raise ConfigError(f"RTP allowlist: {network} is a multicast network")

    @property
    def rtp_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The sidecar's allowed destination networks (loopback when none is configured)."""
        specs = self.rtp_allow or LOOPBACK_NETWORKS
        out = []
        for spec in specs:
            try:
                out.append(ipaddress.ip_network(spec.strip(), strict=False))
            except ValueError as exc:
                raise ConfigError(f"RTP allowlist: not a CIDR network: {spec!r}") from exc
        return tuple(out)

    def worker_capacity(self, index: int) -> int:
        """Streams worker `index` may hold: max_streams split as evenly as possible."""
        base, extra = divmod(self.max_streams, self.workers)
        return base + (1 if index < extra else 0)

    def for_worker(self, index: int) -> Config:
        return replace(
            self, workers=1, max_streams=self.worker_capacity(index), forwarded_client=True
        )


DEFAULTS = Config()
"""Every setting at its default: what the flags' help strings quote."""


def parse_ice_server(spec: str) -> IceServer:
    """`turn:host:3478?transport=udp` or `turns:user:secret@host:5349` or `stun:host:3478`.

    Credentials for TURN are given as `scheme:username:credential@host:port`.
    """
    spec = spec.strip()
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in ("stun", "turn", "turns") or not rest:
        raise ConfigError(f"ICE server must start with stun:, turn: or turns:, got {spec!r}")
    if "@" in rest:
        creds, _, hostpart = rest.rpartition("@")
        user, sep, secret = creds.partition(":")
        if not sep or not user or not hostpart:
            raise ConfigError(f"ICE server credentials must be user:secret@host, got {spec!r}")
        return IceServer(urls=f"{scheme}:{hostpart}", username=user, credential=secret)
    if scheme != "stun":
        raise ConfigError(f"TURN server needs user:secret@host, got {spec!r}")
    return IceServer(urls=spec)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    """The flags; each help names Config's default (read from it, not restated)."""
    p = argparse.ArgumentParser(
        prog="percepnet-server",
        description="PercepNet WebRTC speech-enhancement service. Every flag also reads "
        "PERCEPNET_<FLAG> from the environment (e.g. PERCEPNET_MAX_STREAMS).",
    )
    p.add_argument("--host", help=f"listen address (default: {DEFAULTS.host})")
    p.add_argument("--port", type=int, help=f"listen port (default: {DEFAULTS.port})")
    p.add_argument("--model", help="ONNX model path (default: models/percepnet-int8.onnx)")
    p.add_argument(
        "--unity-gains",
        action="store_const",
        const="1",
        help="no model: run the DSP with unity gains, for tests and benchmarks (default: off)",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        help=f"concurrent streams, all workers (default: {STREAMS_PER_CORE} per worker)",
    )
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument(
        "--ice-server",
        action="append",
        dest="ice_servers",
        help="stun:host:port or turn:user:secret@host:port; repeatable "
        "(env: comma-separated PERCEPNET_ICE_SERVERS) (default: none)",
    )
    p.add_argument(
        "--auth-token",
        help="operator token: require 'Authorization: Bearer TOKEN' on signalling, the "
        "stream list, /metrics and the RTP sidecar (default: off)",
    )
    p.add_argument(
        "--rtp-allow",
        action="append",
        help="CIDR the RTP sidecar may send to; repeatable (env: comma-separated "
        "PERCEPNET_RTP_ALLOW; default: loopback only). Multicast and broadcast never",
    )
    p.add_argument(
        "--max-pending",
        type=int,
        help=f"not-yet-connected sessions per worker (default: {DEFAULTS.max_pending})",
    )
    p.add_argument(
        "--max-pending-per-client",
        type=int,
        help="not-yet-connected sessions of one client address per worker "
        f"(default: {DEFAULTS.max_pending_per_client})",
    )
    p.add_argument(
        "--connect-timeout",
        dest="connect_timeout_s",
        type=float,
        help="seconds a session may take to connect or send its first RTP "
        f"(default: {DEFAULTS.connect_timeout_s:g})",
    )
    p.add_argument(
        "--offload",
        choices=["batch", "inline", "thread"],
        help="where the enhancer runs: on the loop with streams batched for the model "
        f"(batch), on the loop one by one (inline), or in a thread (default: {DEFAULTS.offload})",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        help="batch: longest wait for other streams to share a model run; 0: only "
        f"packets that arrive together (default: {DEFAULTS.batch_window_ms:g})",
    )
    p.add_argument(
        "--frame-deadline-ms",
        type=float,
        help="frames that waited longer than this after decoding pass through "
        f"(default: {DEFAULTS.frame_deadline_ms:g})",
    )
    p.add_argument(
        "--inline-codecs",
        choices=["on", "off"],
        help="Opus decode/encode on the event loop (on) or in aiortc's threads (default: on)",
    )
    p.add_argument(
        "--receive-buffer",
        choices=["relay", "aiortc"],
        help="WebRTC audio in: decoded in order as it arrives (relay) or after "
        f"aiortc's 80 ms playout buffer (aiortc) (default: {DEFAULTS.receive_buffer})",
    )
    p.add_argument(
        "--opus-complexity",
        type=int,
        help=f"libopus complexity {OPUS_MIN_COMPLEXITY}-{OPUS_MAX_COMPLEXITY} of the audio sent "
        f"back to WebRTC peers; aiortc's is {OPUS_MAX_COMPLEXITY} "
        f"(default: {DEFAULTS.opus_complexity})",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        help=f"largest signalling body in bytes (default: {DEFAULTS.max_body_bytes})",
    )
    p.add_argument(
        "--drain-timeout",
        dest="drain_timeout_s",
        type=float,
        help="on SIGTERM, seconds to wait for streams to end "
        f"(default: {DEFAULTS.drain_timeout_s:g})",
    )
    p.add_argument(
        "--static-dir", help="directory of the browser page (default: the packaged server/static)"
    )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="least severe level logged; aioice's per-candidate INFO lines show only at "
        f"DEBUG (default: {DEFAULTS.log_level})",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text lines, or one JSON object per line for log pipelines "
        f"(default: {DEFAULTS.log_format})",
    )
    p.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="certificate chain: serve HTTPS, which a page opened from another machine "
        "needs for the microphone (default: plain HTTP)",
    )
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert (default: none)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    return p


def _package_version() -> str:
    # Imported here: the streaming API loads the DSP and the model runtime, which
    # parsing flags does not need.
    from percepnet.streaming import package_version

    return package_version()


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag_or_env(value: object, env: Mapping[str, str], name: str) -> str | None:
    if value is not None:
        return str(value)
    return env.get(ENV_PREFIX + name.upper())


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Parse flags (argv without the program name) over PERCEPNET_* variables over defaults."""
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    kw: dict[str, object] = {}

    def get(name: str) -> str | None:
        return _flag_or_env(getattr(args, name), env, name)

    def number(name: str, kind: type[int] | type[float]) -> None:
        raw = get(name)
        if raw is not None:
            try:
                kw[name] = kind(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}: not a number: {raw!r}") from exc

    for name in ("host", "auth_token", "offload", "receive_buffer", "log_level", "log_format"):
        raw = get(name)
        if raw is not None and raw != "":
            kw[name] = raw
    for name in (
        "port",
        "max_streams",
        "workers",
        "max_body_bytes",
        "opus_complexity",
        "max_pending",
        "max_pending_per_client",
    ):
        number(name, int)
    for name in ("frame_deadline_ms", "drain_timeout_s", "batch_window_ms", "connect_timeout_s"):
        number(name, float)
    if (raw := get("model")) is not None and raw:
        kw["model"] = Path(raw)
    for name in ("static_dir", "tls_cert", "tls_key"):
        if (raw := get(name)) is not None and raw:
            kw[name] = Path(raw)
    for name in ("unity_gains", "inline_codecs"):
        if (raw := get(name)) is not None:
            if raw.lower() not in _TRUE | _FALSE:
                raise ConfigError(f"{name}: expected a boolean, got {raw!r}")
            kw[name] = raw.lower() in _TRUE
    if args.ice_servers:
        specs: list[str] = list(args.ice_servers)
    else:
        specs = [s for s in env.get(ENV_PREFIX + "ICE_SERVERS", "").split(",") if s.strip()]
    kw["ice_servers"] = tuple(parse_ice_server(s) for s in specs)
    if args.rtp_allow:
        allow: list[str] = [a for spec in args.rtp_allow for a in spec.split(",")]
    else:
        allow = env.get(ENV_PREFIX + "RTP_ALLOW", "").split(",")
    kw["rtp_allow"] = tuple(a.strip() for a in allow if a.strip())
    if "workers" not in kw:
        cores = default_workers()
        kw["workers"] = min(cores, int(kw.get("max_streams", STREAMS_PER_CORE * cores)))  # type: ignore[call-overload]
    if "max_streams" not in kw:
        kw["max_streams"] = STREAMS_PER_CORE * int(kw["workers"])  # type: ignore[call-overload]
    return Config(**kw)  # type: ignore[arg-type]
