"""`percepnet-server`: parse the configuration, load the model, serve until SIGTERM.

With one worker the worker itself listens on host:port. With more, a router listens
there and forwards signalling to worker processes (one event loop per core) over
Unix sockets; media flows directly between each peer and its worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from percepnet.enhancer import Enhancer, warm_up
from percepnet.runtime import ModelError, load_enhancer_factory
from server.app import MANAGER_KEY, create_app
from server.config import Config, ConfigError, load_config
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


async def serve_worker(
    config: Config,
    factory: Callable[[], Enhancer],
    *,
    worker_index: int = 0,
    unix_path: Path | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve one worker app until SIGTERM/SIGINT, then drain and exit. It listens on
    `sock` when given (bound by main(), before the model load), else on unix_path,
    else on config.host:port."""
    app = create_app(config, factory, worker_index=worker_index)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site: web.BaseSite
    if sock is not None:
        site = web.SockSite(runner, sock)
    elif unix_path is not None:
        site = web.UnixSite(runner, str(unix_path))
    else:
        site = web.TCPSite(runner, config.host, config.port)
    # Everything is loaded and warmed: exempt it from the collector, so no full
    # collection stalls the streams' event loop (server/gcwatch.py).
    log.info("worker %d: %d start-up objects frozen", worker_index, freeze_startup_heap())
    await site.start()
    log.info("worker %d listening on %s", worker_index, site.name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("worker %d draining (up to %.0f s)", worker_index, config.drain_timeout_s)
        await app[MANAGER_KEY].drain(config.drain_timeout_s)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log.info("worker %d stopped", worker_index)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )


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
    except ConfigError as exc:
        print(f"percepnet-server: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        sock = listen(config.host, config.port)
    except OSError as exc:
        print(
            f"percepnet-server: cannot listen on {config.host}:{config.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    with sock:
        try:
            factory = build_enhancer_factory(config)
        except ModelError as exc:
            print(
                f"percepnet-server: cannot load the model: {exc}\n"
                "  give one with --model PATH (PERCEPNET_MODEL), or --unity-gains to run "
                "the DSP without a model",
                file=sys.stderr,
            )
            return 2
        if config.workers == 1:
            asyncio.run(serve_worker(config, factory, sock=sock))
            return 0
        # Loaded above only to fail fast with a clear message; each worker loads its own.
        del factory
        from server.router import serve_router

        return asyncio.run(serve_router(config, sock))


if __name__ == "__main__":
    sys.exit(main())
