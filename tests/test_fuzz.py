"""Fuzzing the signalling endpoints with hypothesis: no input gets a 5xx, none ends a
session it does not own, the worker keeps answering.

The worker runs in a thread of its own (its own event loop) for the whole module; each
example is one plain HTTP request from the test's thread. Bounded: MAX_EXAMPLES examples
per endpoint group, no per-example deadline, no example database (nothing written).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from percepnet.enhancer import Enhancer
from server.app import MANAGER_KEY, create_app
from server.ops.config import Config
from server.sessions import manager as session_module
from server.sidecar.request import RtpSettings
from server.sidecar.service import RTP_KEY
from tests.test_security import candidate_less_offer

MAX_EXAMPLES = 120
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass
class Live:
    port: int
    loop: asyncio.AbstractEventLoop
    app: web.Application
    offer: str
    whip: str  # the Location of a WHIP session that stays pending
    rtp: str  # the key of an RTP session

    def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-worker", daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    config = Config(
        host="127.0.0.1",
        port=0,
        connect_timeout_s=300.0,  # the two sessions below must outlive the fuzzing
        max_pending=64,
        max_pending_per_client=8,
    )

    async def start() -> tuple[web.AppRunner, int, web.Application]:
        app = create_app(config, Enhancer)
        app[RTP_KEY].settings = RtpSettings(bind_host="127.0.0.1")
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, int(site._server.sockets[0].getsockname()[1]), app  # type: ignore[union-attr]

    runner, port, app = run(start())
    offer = run(candidate_less_offer())
    live = Live(port, loop, app, offer, "", "")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session_module, "PATCH_BURST", 10**9)  # fuzz the parser, not the limit
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/whip", body=offer, headers={"Content-Type": "application/sdp"})
        response = conn.getresponse()
        response.read()
        assert response.status == 201
        live.whip = response.headers["Location"]
        conn.request(
            "POST",
            "/v1/rtp-sessions",
            body=json.dumps({"host": "127.0.0.1", "port": 9}),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert response.status == 201
        live.rtp = json.loads(response.read())["session"]
        conn.close()
        try:
            yield live
        finally:
            run(runner.cleanup())
            run(_cancel_the_rest())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


async def _cancel_the_rest() -> None:
    """End what closed peer connections leave running (aiortc's connect tasks)."""
    await asyncio.sleep(0.1)
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=25,
)
our_keys = st.sampled_from(
    [
        "sdp",
        "type",
        "mode",
        "host",
        "port",
        "source_host",
        "payload_type",
        "ssrc",
        "enabled",
        "attenuation_limit_db",
    ]
)
plausible = st.dictionaries(our_keys, json_values, max_size=6)
json_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v)),
    plausible.map(lambda v: json.dumps(v)),
    # nesting: around our limit, and past the interpreter's recursion limit (1000)
    st.one_of(st.sampled_from([16, 17, 1001, 1500, 3000]), st.integers(1, 3000)).map(_deep),
    st.integers(1, 6000).map(lambda n: '{"port": ' + "9" * n + ', "host": "127.0.0.1"}'),
    st.text(max_size=300),
).map(lambda text: text.encode("utf-8", "surrogatepass"))
raw_bodies = st.binary(max_size=3000)
candidate_lines = st.builds(
    lambda foundation, ip, port, typ: f"a=candidate:{foundation} 1 udp 1 {ip} {port} typ {typ}",
    st.text(alphabet="0123456789abc", min_size=1, max_size=4),
    st.one_of(st.ip_addresses().map(str), st.text(max_size=20)),
    st.integers(-5, 100_000),
    st.sampled_from(["host", "srflx", "relay", "x"]),
)
fragments = st.lists(
    st.one_of(
        candidate_lines,
        st.sampled_from(["a=mid:0", "a=ice-ufrag:zz", "a=end-of-candidates", "a=candidate:"]),
        st.text(max_size=60),
    ),
    max_size=12,
).map(lambda lines: "\r\n".join(lines).encode("utf-8", "surrogatepass"))
content_types = st.sampled_from(
    ["application/json", "application/sdp", "application/trickle-ice-sdpfrag", "text/plain", None]
)


def _sdp_mutations(offer: str) -> st.SearchStrategy[bytes]:
    lines = offer.splitlines()

    def mutate(index: int, extra: list[str], drop: bool) -> bytes:
        out = list(lines)
        i = index % len(out)
        if drop:
            del out[i]
        out[i:i] = extra
        return "\r\n".join(out).encode("utf-8", "surrogatepass")

    return st.builds(
        mutate,
        st.integers(0, 200),
        st.lists(st.one_of(candidate_lines, st.text(max_size=80)), max_size=5),
        st.booleans(),
    )


def _assert_alive(live: Live) -> None:
    """The worker answers, and the two sessions made before the fuzzing are still there."""
    assert live.request("GET", "/healthz") == 200
    assert live.request("GET", live.whip.replace("/whip/", "/streams/")) == 200
    assert live.request("GET", f"/v1/rtp-sessions/{live.rtp}") == 200


@FUZZ
@given(body=st.one_of(json_bodies, raw_bodies), content_type=content_types, data=st.data())
def test_fuzz_json_endpoints_never_5xx(
    live: Live, body: bytes, content_type: str | None, data: st.DataObject
) -> None:
    path = data.draw(
        st.sampled_from(
            [
                "/offer",
                "/v1/rtp-sessions",
                live.whip.replace("/whip/", "/streams/") + "/control",
                f"/streams/{live.rtp}/control",
                "/streams/0-00000000.x/control",
            ]
        )
    )
    status = live.request("POST", path, body, content_type)
    assert status < 500, (path, body[:120], status)


@FUZZ
@given(data=st.data())
def test_fuzz_whip_offers_and_patches_never_5xx(live: Live, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["offer", "patch", "other"]))
    if kind == "offer":
        body = data.draw(st.one_of(_sdp_mutations(live.offer), raw_bodies))
        status = live.request("POST", "/whip", body, data.draw(content_types))
    elif kind == "patch":
        body = data.draw(st.one_of(fragments, raw_bodies))
        status = live.request("PATCH", live.whip, body, "application/trickle-ice-sdpfrag")
    else:
        method = data.draw(st.sampled_from(["GET", "POST", "PATCH", "DELETE", "OPTIONS", "PUT"]))
        tail = data.draw(st.text(alphabet="abc019-._~%/", max_size=40))
        path = data.draw(st.sampled_from(["/whip/", "/streams/", "/v1/rtp-sessions/", "/"]))
        status = live.request(method, path + tail, data.draw(raw_bodies), "application/json")
    assert status < 500, (kind, status)


def test_after_fuzzing_the_worker_and_its_sessions_are_alive(live: Live) -> None:
    _assert_alive(live)
    manager = live.app[MANAGER_KEY]
    assert manager.active >= 2
