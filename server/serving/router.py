"""Multi-core serving: a thin HTTP router in front of one worker process per core.

One Python process saturates near one core, and every peer's ICE/DTLS/SRTP shares its
event loop, so streams are spread over worker processes. Each worker is the ordinary
single-worker app listening on a Unix socket; media flows directly between a peer and
its worker (aiortc binds its own UDP ports), so the router only relays signalling:

- new sessions (POST /offer, /whip) go to the least-loaded ready worker; a worker that
  answers 503 (full, draining) is skipped; all full -> 503 + Retry-After;
- session ids are "<worker>-<token>", so /whip/{id} and /streams/{id}... route by id;
- /streams and /metrics gather every worker's answer (metrics get a `worker` label);
- SIGTERM: stop accepting, forward SIGTERM, wait for the workers to drain and exit.

A worker that dies is restarted (its sessions are lost; clients reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from server.httputil import CLIENT_HEADER
from server.ops.appkeys import CONFIG_KEY
from server.ops.config import Config
from server.ops.logs import setup_logging
from server.serving.worker import build_enhancer_factory, listening_url, serve_worker, start_site
from server.sessions.ids import worker_of
from server.signalling.http import CORS_HEADERS, body_text, error_response, guard
from server.signalling.page import client_config, index
from server.signalling.webrtc import whip_options as options

log = logging.getLogger(__name__)

FORWARD_REQUEST_HEADERS = ("Authorization", "Content-Type", "If-Match")
FORWARD_RESPONSE_HEADERS = (
    "Content-Type",
    "Location",
    "ETag",
    "Link",
    "Retry-After",
    "Accept-Post",
)
STARTUP_TIMEOUT_S = 60.0
MONITOR_INTERVAL_S = 1.0


def _worker_main(config: Config, index: int, socket_path: str) -> None:
    """Entry point of a worker process (spawned: fresh interpreter, own model session)."""
    setup_logging(config.log_level, config.log_format)
    factory = build_enhancer_factory(config)
    asyncio.run(serve_worker(config, factory, worker_index=index, unix_path=Path(socket_path)))


class Worker:
    def __init__(self, config: Config, index: int, socket_dir: Path) -> None:
        self.config = config.for_worker(index)
        self.index = index
        self.socket_path = socket_dir / f"worker-{index}.sock"
        self.process: multiprocessing.process.BaseProcess | None = None
        self.http: aiohttp.ClientSession | None = None

    def spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        ctx = multiprocessing.get_context("spawn")
        self.process = ctx.Process(
            target=_worker_main,
            args=(self.config, self.index, str(self.socket_path)),
            name=f"percepnet-worker-{self.index}",
            daemon=False,
        )
        self.process.start()
        log.info("worker %d started (pid %s)", self.index, self.process.pid)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def session(self) -> aiohttp.ClientSession:
        if self.http is None or self.http.closed:
            self.http = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket_path)),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self.http

    async def request(
        self, method: str, path: str, *, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        async with self.session().request(
            method, "http://worker" + path, headers=headers, data=body
        ) as r:
            kept = {k: r.headers[k] for k in FORWARD_RESPONSE_HEADERS if k in r.headers}
            return r.status, kept, await r.read()

    async def wait_ready(self, limit_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while loop.time() < deadline:
            if not self.alive:
                code = self.process.exitcode if self.process else None
                raise RuntimeError(f"worker {self.index} exited during startup (code {code})")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                status, _, _ = await self.request("GET", "/healthz", headers={})
                if status == 200:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"worker {self.index} did not start within {limit_s:.0f} s")

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()


class Router:
    def __init__(self, config: Config, socket_dir: Path) -> None:
        self.config = config
        self.workers = [Worker(config, i, socket_dir) for i in range(config.workers)]
        self.draining = False
        self._next = 0  # round-robin tie-break between equally loaded workers

    def _forward_headers(self, request: web.Request) -> dict[str, str]:
        """The client's headers a worker needs, and the client's address (workers count
        pending sessions per client; what a client sends as that header is dropped)."""
        headers = {k: request.headers[k] for k in FORWARD_REQUEST_HEADERS if k in request.headers}
        headers[CLIENT_HEADER] = request.remote or "unknown"
        return headers

    async def _load(self, worker: Worker) -> int | None:
        """Active streams of a ready worker, or None when it is not taking sessions."""
        if not worker.alive:
            return None
        try:
            status, _, body = await worker.request("GET", "/readyz", headers={})
        except (aiohttp.ClientError, OSError):
            return None
        if status != 200:
            return None
        return int(json.loads(body)["active"])

    async def new_session(self, request: web.Request) -> web.Response:
        if self.draining:
            return error_response(
                503, "server is draining", {"Retry-After": str(self.config.retry_after_s)}
            )
        body = (await body_text(request)).encode()
        loads = await asyncio.gather(*(self._load(w) for w in self.workers))
        n = len(self.workers)
        order = sorted(
            (i for i in range(n) if loads[i] is not None),
            key=lambda i: (loads[i], (i - self._next) % n),
        )
        self._next = (self._next + 1) % n
        path = request.path_qs
        headers = self._forward_headers(request)
        for i in order:
            try:
                status, out_headers, payload = await self.workers[i].request(
                    "POST", path, headers=headers, body=body
                )
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("worker %d unreachable: %s", i, exc)
                continue
            if status == 503:
                continue
            return web.Response(status=status, body=payload, headers=out_headers)
        return error_response(
            503, "no free stream slot", {"Retry-After": str(self.config.retry_after_s)}
        )

    def _owner(self, session_id: str) -> Worker:
        index = worker_of(session_id)
        if index is None or index >= len(self.workers):
            raise web.HTTPNotFound(text=f"no session {session_id!r}")
        return self.workers[index]

    async def by_session(self, request: web.Request) -> web.Response:
        worker = self._owner(request.match_info["id"])
        body = await request.read() if request.can_read_body else None
        try:
            status, headers, payload = await worker.request(
                request.method, request.path_qs, headers=self._forward_headers(request), body=body
            )
        except (aiohttp.ClientError, OSError) as exc:
            return error_response(502, f"worker {worker.index} unreachable: {exc}")
        return web.Response(status=status, body=payload, headers=headers)

    async def _gather(self, path: str, headers: dict[str, str]) -> list[tuple[int, bytes] | None]:
        async def one(w: Worker) -> tuple[int, bytes] | None:
            try:
                status, _, body = await w.request("GET", path, headers=headers)
            except (aiohttp.ClientError, OSError):
                return None
            return status, body

        return list(await asyncio.gather(*(one(w) for w in self.workers)))

    async def streams(self, request: web.Request) -> web.Response:
        merged: dict[str, Any] = {"active": 0, "capacity": 0, "draining": self.draining}
        merged["streams"] = []
        for i, got in enumerate(await self._gather("/streams", self._forward_headers(request))):
            if got is None or got[0] != 200:
                continue
            part = json.loads(got[1])
            merged["active"] += part["active"]
            merged["capacity"] += part["capacity"]
            for s in part.get("streams", []):
                s["worker"] = i
                merged["streams"].append(s)
        if not self.config.auth_token:
            del merged["streams"]  # per-stream records only for the operator
        return web.json_response(merged)

    async def metrics(self, request: web.Request) -> web.Response:
        texts = [
            (i, got[1].decode())
            for i, got in enumerate(await self._gather("/metrics", self._forward_headers(request)))
            if got is not None and got[0] == 200
        ]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_MergedCollector(merge_metrics(texts)))
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        alive = [w.alive for w in self.workers]
        status = 200 if any(alive) else 503
        return web.json_response({"status": "ok" if status == 200 else "down", "workers": alive})

    async def readyz(self, request: web.Request) -> web.Response:
        loads = await asyncio.gather(*(self._load(w) for w in self.workers))
        ready = not self.draining and any(x is not None for x in loads)
        headers = None if ready else {"Retry-After": str(self.config.retry_after_s)}
        body = {"ready": ready, "draining": self.draining, "workers": loads}
        return web.json_response(body, status=200 if ready else 503, headers=headers)

    async def monitor(self) -> None:
        """Restart workers that died while we are not draining."""
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            if self.draining:
                continue
            for w in self.workers:
                if not w.alive:
                    code = w.process.exitcode if w.process else None
                    log.error("worker %d died (exit code %s); restarting", w.index, code)
                    w.spawn()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[guard], client_max_size=self.config.max_body_bytes)
        app[CONFIG_KEY] = self.config
        r = app.router
        r.add_post("/offer", self.new_session)
        r.add_post("/whip", self.new_session)
        r.add_route("OPTIONS", "/whip", options)
        r.add_route("OPTIONS", "/whip/{id}", options)
        for method in ("PATCH", "DELETE"):
            r.add_route(method, "/whip/{id}", self.by_session)
        r.add_get("/streams", self.streams)
        r.add_get("/streams/{id}", self.by_session)
        r.add_delete("/streams/{id}", self.by_session)
        r.add_post("/streams/{id}/control", self.by_session)
        r.add_post("/v1/rtp-sessions", self.new_session)  # sidecar (server/sidecar/)
        r.add_get("/v1/rtp-sessions/{id}", self.by_session)
        r.add_delete("/v1/rtp-sessions/{id}", self.by_session)
        r.add_get("/metrics", self.metrics)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/config.json", client_config)
        r.add_get("/", index)
        if self.config.static_dir.is_dir():
            r.add_static("/static/", self.config.static_dir)
        return app


def merge_metrics(texts: Iterable[tuple[int, str]]) -> list[Metric]:
    """Parse each worker's exposition and merge families, adding a `worker` label."""
    families: dict[str, Metric] = {}
    for worker, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            for s in family.samples:
                labels = {**s.labels, "worker": str(worker)}
                merged.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))
    return list(families.values())


class _MergedCollector:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


async def serve_router(
    config: Config,
    sock: socket.socket | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Start the workers and the router on `sock` (bound by the caller, so a port in use
    fails before any worker exists); run until SIGTERM/SIGINT, then drain. Whatever
    happens, no worker outlives this call.

    With `ssl_context` the router serves HTTPS; workers behind it stay on Unix sockets."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="percepnet-") as tmp:
        router = Router(config, Path(tmp))
        runner = web.AppRunner(router.app(), handle_signals=False, access_log=None)
        await runner.setup()
        drain_limit = 5.0
        try:
            for w in router.workers:
                w.spawn()
            ready: asyncio.Future[Any] = asyncio.ensure_future(
                asyncio.gather(*(w.wait_ready(STARTUP_TIMEOUT_S) for w in router.workers))
            )
            stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            await asyncio.wait([ready, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():  # SIGTERM while the workers start
                ready.cancel()
                with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                    await ready
                log.info("stopped during start-up")
                return 0
            stopped.cancel()
            try:
                ready.result()
            except RuntimeError as exc:
                log.error("%s", exc)
                return 1
            site: web.BaseSite
            if sock is not None:
                site = web.SockSite(runner, sock, ssl_context=ssl_context)
            else:
                site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
            await start_site(site, config)
            log.info(
                "listening on %s (%d workers, %d stream slots)",
                listening_url("https" if ssl_context else "http", runner),
                len(router.workers),
                config.max_streams,
            )
            monitor = asyncio.create_task(router.monitor())
            await stop.wait()
            log.info(
                "stopping: draining %d workers, up to %.0f s",
                len(router.workers),
                config.drain_timeout_s,
            )
            router.draining = True
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            drain_limit = config.drain_timeout_s + 10.0
        finally:
            await _stop_workers(router, drain_limit)
            await runner.cleanup()
            for w in router.workers:
                await w.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return 0


async def _stop_workers(router: Router, limit_s: float) -> None:
    """SIGTERM every worker (they drain), wait, then kill stragglers."""
    for w in router.workers:
        if w.alive and w.process is not None and w.process.pid is not None:
            os.kill(w.process.pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    for w in router.workers:
        if w.process is not None:
            remaining = max(0.0, deadline - loop.time())
            await asyncio.to_thread(w.process.join, remaining)
    for w in router.workers:
        if w.alive and w.process is not None:
            log.warning("worker %d did not drain in time; killing it", w.index)
            w.process.kill()
        if w.process is not None:
            w.process.join(timeout=5)


__all__ = ["CORS_HEADERS", "Router", "merge_metrics", "serve_router"]
