"""`percepnet-server`: parse the configuration, load the model, serve until SIGTERM.

With one worker the worker itself listens on host:port. With more, a router listens
there and forwards signalling to worker processes (one event loop per core) over
Unix sockets; media flows directly between each peer and its worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence

from percepnet.streaming import ModelError
from server.ops.config import Config, ConfigError, ListenError, load_config
from server.ops.logs import setup_logging
from server.serving.worker import build_enhancer_factory, serve_worker, tls_context

log = logging.getLogger("server")


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
                from server.serving.router import serve_router

                code = asyncio.run(serve_router(config, sock, ssl_context=ssl_context))
        except ListenError as exc:
            return startup_failed(config, str(exc))
    log.info("percepnet-server stopped (exit status %d)", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
