"""`percepnet-server`: parse the configuration, load the model, serve until SIGTERM.

With one worker the worker itself listens on host:port. With more, a router listens
there and forwards signalling to worker processes (one event loop per core) over
Unix sockets; media flows directly between each peer and its worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from percepnet.enhancer import Enhancer, warm_up
from percepnet.runtime import ModelError, load_enhancer_factory
from server.app import MANAGER_KEY, create_app
from server.config import Config, ConfigError, ListenError, load_config
from server.gcwatch import freeze_startup_heap

log = logging.getLogger("server")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def build_enhancer_factory(config: Config) -> Callable[[], Enhancer]:
    """The per-stream Enhancer factory: the ONNX model, or unity gains when asked.

    Raises ModelError for a missing or corrupt model. The compiled DSP kernels are
    loaded (or compiled, the first time) here, before any stream arrives.
    """
    factory: Callable[[], Enhancer] = (
        Enhancer if config.unity_gains else load_enhancer_factory(config.model)
    )
    log.info("DSP kernels ready in %.1f s", warm_up(factory))
    return factory


async def start_site(site: web.BaseSite, config: Config) -> None:
    try:
        await site.start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f"cannot listen on {config.host}:{config.port}: {reason}") from exc


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context when --tls-cert/--tls-key are set; raises ConfigError
    for files that cannot be read or do not match."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate {config.tls_cert} / key {config.tls_key}: {exc}"
        ) from exc
    return context


def listening_url(scheme: str, runner: web.BaseRunner) -> str:
    """scheme://host:port of the runner's (first) TCP socket, with the port it really got
    (--port 0 binds a free one)."""
    host, port = runner.addresses[0][:2]
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


async def serve_worker(
    config: Config,
    factory: Callable[[], Enhancer],
    *,
    worker_index: int = 0,
    unix_path: Path | None = None,
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve one worker app until SIGTERM/SIGINT, then drain and exit. It listens on
    `sock` when given (bound by main(), before the model load), else on unix_path,
    else on config.host:port.

    On a Unix socket (behind the router) the worker speaks plain HTTP: the router holds
    the TLS context and the listening socket users see."""
    app = create_app(config, factory, worker_index=worker_index)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site: web.BaseSite
    if sock is not None:
        site = web.SockSite(runner, sock, ssl_context=ssl_context)
    elif unix_path is not None:
        site = web.UnixSite(runner, str(unix_path))
    else:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
    # Everything is loaded and warmed: exempt it from the collector, so no full
    # collection stalls the streams' event loop (server/gcwatch.py).
    log.debug("worker %d: %d start-up objects frozen", worker_index, freeze_startup_heap())
    try:
        await start_site(site, config)
    except ListenError:
        await runner.cleanup()
        raise
    if unix_path is not None:
        log.debug("worker %d on %s", worker_index, unix_path)
        log.info("worker %d ready", worker_index)
    else:
        log.info(
            "listening on %s (%d stream slots)",
            listening_url("https" if ssl_context else "http", runner),
            config.max_streams,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info(
            "worker %d stopping: draining %d stream(s), up to %.0f s",
            worker_index,
            app[MANAGER_KEY].active,
            config.drain_timeout_s,
        )
        await app[MANAGER_KEY].drain(config.drain_timeout_s)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log.info("worker %d stopped", worker_index)


TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
CHATTY_LOGGERS = ("aioice",)
"""Libraries that log routine events at INFO (aioice: each candidate pair's state, about
nine lines a session); kept at WARNING unless the service logs at DEBUG."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: what log pipelines (Loki, Elasticsearch,
    Cloud Logging...) parse without a grok pattern. Newlines in messages and tracebacks
    are escaped by json.dumps, so a record never spans lines."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Root handler on stderr at `level`, in `fmt` (text or json), replacing any other."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(
            numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
        )


def startup_failed(config: Config, message: str) -> int:
    """Report a start-up failure: a plain line on stderr, or with --log-format json one
    ERROR record, so a log pipeline sees it too. Returns the exit status (2)."""
    if config.log_format == "json":
        log.error("%s", message)
    else:
        print(f"percepnet-server: {message}", file=sys.stderr)
    return 2


def listen(host: str, port: int) -> socket.socket:
    """The service's listening TCP socket (OSError when the port is taken, the address
    is not local...). Bound first thing, so such a failure costs no model load and
    leaves no worker behind."""
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:  # no configuration yet, so no log format either
        print(f"percepnet-server: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    try:
        ssl_context = tls_context(config)
    except ConfigError as exc:
        return startup_failed(config, str(exc))
    try:
        sock = listen(config.host, config.port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return startup_failed(config, f"cannot listen on {config.host}:{config.port}: {reason}")
    with sock:
        try:
            factory = build_enhancer_factory(config)
        except ModelError as exc:
            return startup_failed(
                config,
                f"cannot load the model: {exc}\n"
                "  give one with --model PATH (PERCEPNET_MODEL), or --unity-gains to run "
                "the DSP without a model",
            )
        try:
            if config.workers == 1:
                asyncio.run(serve_worker(config, factory, sock=sock, ssl_context=ssl_context))
                code = 0
            else:
                # Loaded above only to fail fast with a clear message; each worker loads its
                # own.
                del factory
                from server.router import serve_router

                code = asyncio.run(serve_router(config, sock, ssl_context=ssl_context))
        except ListenError as exc:
            return startup_failed(config, str(exc))
    log.info("percepnet-server stopped (exit status %d)", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
