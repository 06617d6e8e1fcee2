"""One worker: load the model, serve the app on a socket until SIGTERM, then drain.

`percepnet-server` runs one of these itself (one worker) or one per process behind the
router (server/serving/router.py); both import it from here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from percepnet.streaming import (
    Enhancer,
    load_enhancer_factory,
    unity_enhancer_factory,
    warm_up,
)
from server.app import MANAGER_KEY, create_app
from server.ops.config import Config, ConfigError, ListenError
from server.ops.gcwatch import freeze_startup_heap

log = logging.getLogger("server")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def build_enhancer_factory(config: Config) -> Callable[[], Enhancer]:
    """The per-stream Enhancer factory: the ONNX model, or unity gains when asked.

    Raises ModelError for a missing or corrupt model. The compiled DSP kernels are
    loaded (or compiled, the first time) here, before any stream arrives.
    """
    factory: Callable[[], Enhancer] = (
        unity_enhancer_factory() if config.unity_gains else load_enhancer_factory(config.model)
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
    # collection stalls the streams' event loop (server/ops/gcwatch.py).
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
