"""The hostile-client findings of issue 16, replayed: each must now be refused or harmless.

Only loopback addresses are ever sent to. A second client address is 127.0.0.2 (the
source of the connection; the target stays 127.0.0.1). Destinations outside loopback
appear only in requests that must be refused, never as a target of any packet.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from aioice.stun import Message as StunMessage
from aioice.stun import parse_message
from aiortc.rtp import RtpPacket

from percepnet.constants import SAMPLE_RATE
from percepnet.enhancer import Enhancer
from server.client import ClientPeer, ClipTrack, candidate_less_offer
from server.clips import speech_like
from server.media.opus import OpusPayloadEncoder as OpusEncoder
from server.ops.config import Config, ConfigError, load_config
from server.sessions.manager import (
    MAX_CANDIDATES_PER_PATCH,
    MAX_CANDIDATES_PER_SESSION,
    PATCH_BURST,
    SECRET_BYTES,
)
from server.sidecar.request import RtpSettings
from server.sidecar.service import RTP_KEY
from tests.test_server import Served, serve

LOOPBACK = "127.0.0.1"
OTHER_CLIENT = "127.0.0.2"  # a second source address on the loopback interface
CLIP = speech_like(1.0, seed=11)
TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}
SDP = {"Content-Type": "application/sdp"}


def _other_client_available() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((OTHER_CLIENT, 0))
        except OSError:
            return False
    return True


needs_second_address = pytest.mark.skipif(
    not _other_client_available(), reason=f"{OTHER_CLIENT} cannot be bound here"
)


@contextlib.asynccontextmanager
async def http_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose connections come from `address` (a loopback address)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def secret_bits(key: str) -> int:
    secret = key.rsplit(".", 1)[1]
    return 8 * len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)))


# -- 3. streams have owners --------------------------------------------------------------
async def test_another_clients_stream_cannot_be_listed_controlled_or_deleted() -> None:
    async with serve(stats_interval_s=0.05) as srv:
        victim = await ClientPeer.connect(srv.url, ClipTrack(CLIP, loop=True))
        other = await ClientPeer.connect(srv.url, ClipTrack(CLIP, loop=True), whip=True)
        async with asyncio.timeout(20):
            await victim.wait_received(0.5)
        assert victim.session_id is not None and other.session_id is not None
        public_id = srv.manager.get(victim.session_id).id
        # the capability: at least 128 bits from the CSPRNG, different per session
        assert SECRET_BYTES * 8 >= 128 and secret_bits(victim.session_id) >= 128
        assert victim.session_id.rsplit(".")[1] != other.session_id.rsplit(".")[1]
        assert other.location == f"/whip/{other.session_id}"

        # no listing or metric names a stream (no operator token is configured)
        status, listing, _headers = await srv.get("/streams")
        assert status == 200 and listing["active"] == 2 and "streams" not in listing
        _, metrics, _ = await srv.request("GET", "/metrics")
        assert public_id not in metrics and victim.session_id not in metrics
        assert "percepnet_stream_voice_activity{" not in metrics
        assert "stream=" not in metrics

        # the public id, a forged secret, another session's secret: all 404, all harmless
        other_secret = other.session_id.rsplit(".", 1)[1]
        for key in (public_id, f"{public_id}.", f"{public_id}.{'A' * 32}",
                    f"{public_id}.{other_secret}", "0-00000000"):  # fmt: skip
            for method, path in (
                ("POST", f"/streams/{key}/control"),
                ("DELETE", f"/streams/{key}"),
                ("DELETE", f"/whip/{key}"),
                ("GET", f"/streams/{key}"),
            ):
                status, _, _ = await srv.request(method, path, json={"enabled": False})
                assert status == 404, (method, path, status)
            status, _, _ = await srv.request(
                "PATCH", f"/whip/{key}", data="a=end-of-candidates\r\n", headers=TRICKLE
            )
            assert status == 404
        assert srv.manager.active == 2
        assert srv.manager.get(victim.session_id).controls.enabled is True
        n = len(victim.received.chunks)
        async with asyncio.timeout(10):
            await victim.wait_received((n + 25) * 960 / SAMPLE_RATE)  # the call goes on

        # the owner's own key works
        status, body, _ = await srv.request(
            "POST", f"/streams/{victim.session_id}/control", json={"enabled": False}
        )
        assert status == 200 and json.loads(body)["id"] == public_id
        await victim.close()
        await other.close()
        assert srv.manager.active == 0


async def test_operator_token_guards_stream_list_and_metrics() -> None:
    async with serve(auth_token="op3rator") as srv:
        for path in ("/streams", "/metrics"):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                status, _, h = await srv.request("GET", path, headers=headers)
                assert status == 401 and h["WWW-Authenticate"].startswith("Bearer"), path
        peer = await ClientPeer.connect(srv.url, ClipTrack(CLIP), token="op3rator")
        assert peer.session_id is not None
        public_id = srv.manager.get(peer.session_id).id
        status, listing, _ = await srv.get("/streams")  # Served sends the operator token
        assert status == 200 and [s["id"] for s in listing["streams"]] == [public_id]
        assert peer.session_id not in json.dumps(listing)  # the secret is never listed
        # the operator token alone does not open a session: its key is needed too
        status, _, _ = await srv.request("DELETE", f"/streams/{public_id}")
        assert status == 404
        # both together do
        status, _, _ = await srv.request("DELETE", f"/streams/{peer.session_id}")
        assert status == 200
        await peer.close(hang_up=False)


async def test_non_utf8_bearer_token_is_401_not_500() -> None:
    async with serve(auth_token="s3cret") as srv:
        port = srv.server.port
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(
            b"GET /streams HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer \xff\xfe\xc3(\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readline()
        writer.close()
        await writer.wait_closed()
        assert head.split()[1] == b"401", head


# -- 1. the RTP sidecar is no amplifier ----------------------------------------------------
@contextlib.asynccontextmanager
async def sidecar(**overrides: Any) -> AsyncIterator[Served]:
    async with serve(Enhancer, **overrides) as srv:
        srv.app[RTP_KEY].settings = RtpSettings(bind_host=LOOPBACK)
        yield srv


@pytest.mark.parametrize(
    "host",
    [
        "198.51.100.7",  # off the allowlist (loopback only by default)
        "224.0.0.1",  # multicast
        "255.255.255.255",  # broadcast
        "::ffff:224.0.0.1",  # multicast behind an IPv4-mapped IPv6 address
        "0.0.0.0",
        "ff02::1",
    ],
)
async def test_sidecar_refuses_destinations_off_the_allowlist(host: str) -> None:
    async with sidecar() as srv:
        status, body, _ = await srv.request(
            "POST", "/v1/rtp-sessions", json={"host": host, "port": 5004}
        )
        assert status == 403, body
        assert srv.manager.active == 0


async def test_sidecar_allowlist_is_configurable_but_never_broadcast() -> None:
    async with sidecar(rtp_allow=("10.0.0.0/24",)) as srv:
        for host, expected in (("10.0.0.255", 403), ("10.0.1.7", 403), (LOOPBACK, 403)):
            status, body, _ = await srv.request(
                "POST", "/v1/rtp-sessions", json={"host": host, "port": 5004}
            )
            assert status == expected, (host, body)
        # accepted, and nothing is ever sent there: no RTP comes from 10.0.0.7
        status, body, _ = await srv.request(
            "POST", "/v1/rtp-sessions", json={"host": "10.0.0.7", "port": 5004}
        )
        assert status == 201, body
        assert json.loads(body)["packets_sent"] == 0
    with pytest.raises(ConfigError):
        Config(rtp_allow=("224.0.0.0/4",))
    with pytest.raises(ConfigError):
        load_config(["--rtp-allow", "not-a-network"], {})
    env = {"PERCEPNET_RTP_ALLOW": "10.1.0.0/16, 192.168.0.0/24"}
    assert load_config([], env).rtp_allow == ("10.1.0.0/16", "192.168.0.0/24")


async def _replay(
    srv: Served, packets: list[RtpPacket], *, source: str = LOOPBACK, wait_s: float = 1.5
) -> tuple[dict[str, Any], int, int, int, int]:
    """Send `packets` to a new sidecar session from `source`; returns its state and the
    packets and bytes in and out."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind((LOOPBACK, 0))
        sink.setblocking(False)
        status, text, _ = await srv.request(
            "POST",
            "/v1/rtp-sessions",
            json={"host": LOOPBACK, "port": sink.getsockname()[1], "payload_type": 111},
        )
        assert status == 201, text
        info = json.loads(text)
        bytes_in = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as src:
            src.bind((source, 0))
            for p in packets:
                data = p.serialize()
                bytes_in += len(data)
                src.sendto(data, (LOOPBACK, info["port"]))
                await asyncio.sleep(0.001)
        got: list[bytes] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                while True:
                    got.append(await loop.sock_recv(sink, 2048))
        _, state, _ = await srv.get(f"/v1/rtp-sessions/{info['session']}")
    return state, len(packets), bytes_in, len(got), sum(len(g) for g in got)


def _packet(seq: int, ts: int, payload: bytes) -> RtpPacket:
    return RtpPacket(payload_type=111, sequence_number=seq, timestamp=ts, ssrc=7, payload=payload)


@pytest.mark.parametrize(
    ("payload", "jump_ms"),
    [
        (b"\xf8", 220),  # the finding: 13-byte packets, timestamps 220 ms apart
        (b"\xf8", 190),  # gaps just short of a jump: the concealment path
        (b"\x18", 190),  # each a 60 ms (SILK) frame: three 20 ms packets' worth
        (b"\x1b\x02", 100),  # code 3: two 60 ms frames, 120 ms of audio in 14 bytes
    ],
)
async def test_sidecar_never_sends_more_packets_than_it_receives(
    payload: bytes, jump_ms: int
) -> None:
    step = SAMPLE_RATE * jump_ms // 1000
    packets = [_packet(100 + i, 1000 + i * step, payload) for i in range(100)]
    async with sidecar() as srv:
        state, n_in, bytes_in, n_out, bytes_out = await _replay(srv, packets)
    print(
        f"sidecar {payload.hex()} every {jump_ms} ms: {n_in} packets / {bytes_in} B in, "
        f"{n_out} packets / {bytes_out} B out, {state['packets_withheld']} withheld"
    )
    assert state["packets_received"] == n_in
    assert n_out > 0  # it did answer: the bound, not silence, keeps it at or under n_in
    assert n_out <= n_in and state["packets_sent"] == n_out


async def test_sidecar_output_follows_real_audio_one_for_one_with_loss_and_jumps() -> None:
    tone = 0.3 * np.sin(2 * np.pi * 300 * np.arange(80 * 960) / SAMPLE_RATE)
    payloads = OpusEncoder(32_000).encode(tone)
    ts, packets = 0, []
    for i, payload in enumerate(payloads):
        if i % 7 == 3:
            continue  # lost
        ts_i = ts + 960 * i + (9600 if i > 40 else 0)  # and a 200 ms pause in the middle
        packets.append(_packet(500 + i, ts_i, payload))
    async with sidecar() as srv:
        _state, n_in, _, n_out, _ = await _replay(srv, packets)
    assert n_in - 1 <= n_out <= n_in  # one out for each in (lost slots stay empty)


async def test_sidecar_sends_only_after_rtp_from_the_expected_source() -> None:
    payloads = OpusEncoder(32_000).encode(np.zeros(10 * 960))
    packets = [_packet(i, 960 * i, p) for i, p in enumerate(payloads)]
    async with sidecar() as srv:
        if not _other_client_available():
            pytest.skip(f"{OTHER_CLIENT} cannot be bound here")
        # the session sends to 127.0.0.1, so RTP must come from 127.0.0.1
        state, n_in, _, n_out, _ = await _replay(srv, packets, source=OTHER_CLIENT, wait_s=0.5)
        assert (n_out, state["packets_sent"], state["packets_foreign"]) == (0, 0, n_in)
        assert state["state"] == "new"
        state, n_in, _, n_out, _ = await _replay(srv, packets, source=LOOPBACK)
        assert 0 < n_out <= n_in and state["packets_foreign"] == 0


# -- 2. no lockout without auth -----------------------------------------------------------
@needs_second_address
async def test_pending_offers_of_one_client_do_not_lock_out_another() -> None:
    """The finding: 64 offers without candidates made every new session 503 for 20 s."""
    offer = await candidate_less_offer()
    async with serve(max_streams=64, connect_timeout_s=20.0) as srv:
        statuses: list[int] = []
        async with http_from(OTHER_CLIENT) as http:

            async def one() -> None:
                async with http.post(srv.url + "/offer", json={"sdp": offer, "type": "offer"}) as r:
                    statuses.append(r.status)

            await asyncio.gather(*(one() for _ in range(64)))
            async with http.post(srv.url + "/whip", data=offer, headers=SDP) as r:
                statuses.append(r.status)
        limit = srv.manager.config.max_pending_per_client
        assert statuses.count(200) == limit and statuses.count(429) == 65 - limit, statuses
        assert srv.manager.active == limit
        # a legitimate client (another address) gets a session, and audio
        peer = await ClientPeer.connect(srv.url, ClipTrack(CLIP))
        async with asyncio.timeout(20):
            await peer.wait_received(0.5)
        assert peer.received_audio().std() > 0.01
        await peer.close()
        # and RTP allocations are admitted by the same path
        async with http_from(OTHER_CLIENT) as http:
            rtp = [
                await http.post(srv.url + "/v1/rtp-sessions", json={"host": LOOPBACK, "port": 9})
                for _ in range(3)
            ]
        assert [r.status for r in rtp] == [429, 429, 429]


@needs_second_address
async def test_many_addresses_cannot_fill_the_pending_budget_for_good() -> None:
    """Pending sessions from several addresses spend the budget; a newcomer closes the
    oldest of the address holding the most, and is admitted. A client at its own limit
    is refused and evicts nobody."""
    body = {"host": LOOPBACK, "port": 9}
    async with serve(max_pending=6, max_pending_per_client=3, connect_timeout_s=20.0) as srv:
        srv.app[RTP_KEY].settings = RtpSettings(bind_host=LOOPBACK)
        for address in (OTHER_CLIENT, "127.0.0.3"):
            async with http_from(address) as http:
                for _ in range(3):
                    async with http.post(srv.url + "/v1/rtp-sessions", json=body) as r:
                        assert r.status == 201
        assert srv.manager.active == 6
        peer = await ClientPeer.connect(srv.url, ClipTrack(CLIP))  # from 127.0.0.1
        async with asyncio.timeout(20):
            await peer.wait_received(0.5)
        assert await srv.metric("percepnet_sessions_total", outcome="evicted_pending") == 1
        pending = sorted(s.client for s in srv.manager.sessions.values() if s.pending)
        assert pending == [OTHER_CLIENT] * 2 + ["127.0.0.3"] * 3
        async with (
            http_from("127.0.0.3") as http,
            http.post(srv.url + "/v1/rtp-sessions", json=body) as r,
        ):
            assert r.status == 429
        assert await srv.metric("percepnet_sessions_total", outcome="evicted_pending") == 1
        await peer.close()


async def test_sessions_that_never_connect_time_out() -> None:
    offer = await candidate_less_offer()
    async with serve(connect_timeout_s=0.5) as srv:
        srv.app[RTP_KEY].settings = RtpSettings(bind_host=LOOPBACK)
        status, _, _ = await srv.request("POST", "/offer", json={"sdp": offer, "type": "offer"})
        assert status == 200
        status, _, _ = await srv.request(
            "POST", "/v1/rtp-sessions", json={"host": LOOPBACK, "port": 9}
        )
        assert status == 201 and srv.manager.active == 2
        async with asyncio.timeout(5):
            await srv.manager.wait_idle()
        assert await srv.metric("percepnet_sessions_total", outcome="timed_out") == 2


# -- 4. ICE reflection ---------------------------------------------------------------------
def _candidates(ports: list[int], host: str = LOOPBACK) -> str:
    return "".join(
        f"a=candidate:{i} 1 udp {2130706431 - i} {host} {port} typ host\r\n"
        for i, port in enumerate(ports)
    )


async def test_whip_patch_bounds_candidates_and_stun_traffic() -> None:
    """The finding: one PATCH naming 200 addresses made the server send 1157 STUN
    packets in 20 s. Now: 8 candidates a PATCH, 16 a session, and checks stop when the
    session times out."""
    offer = await candidate_less_offer()
    sockets = []
    for _ in range(MAX_CANDIDATES_PER_SESSION + MAX_CANDIDATES_PER_PATCH):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((LOOPBACK, 0))
        s.setblocking(False)
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    try:
        async with serve(connect_timeout_s=3.0) as srv:
            status, _, headers = await srv.request("POST", "/whip", data=offer, headers=SDP)
            assert status == 201
            where = headers["Location"]
            mid = "a=mid:0\r\n"
            too_many = _candidates(list(range(10000, 10200)))  # the finding's 200
            status, body, _ = await srv.request(
                "PATCH", where, data=mid + too_many, headers=TRICKLE
            )
            assert status == 400 and "candidates" in json.loads(body)["error"]
            for i in range(0, len(ports), MAX_CANDIDATES_PER_PATCH):
                chunk = ports[i : i + MAX_CANDIDATES_PER_PATCH]
                status, _, _ = await srv.request(
                    "PATCH", where, data=mid + _candidates(chunk), headers=TRICKLE
                )
                expected = 204 if i + len(chunk) <= MAX_CANDIDATES_PER_SESSION else 400
                assert status == expected, (i, status)
            loop = asyncio.get_running_loop()
            counts = [0] * len(sockets)
            end = loop.time() + 4.0  # past the connect timeout
            while loop.time() < end:
                for k, s in enumerate(sockets):
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            data = s.recv(2048)
                            if isinstance(parse_message(data), StunMessage):
                                counts[k] += 1
                await asyncio.sleep(0.05)
            assert srv.manager.active == 0  # timed out: checks stopped
            after = 0
            await asyncio.sleep(1.0)
            for s in sockets:
                with contextlib.suppress(BlockingIOError):
                    while s.recv(2048):
                        after += 1
        print(f"STUN packets per candidate in 4 s: {counts}; after close: {after}")
        accepted = counts[:MAX_CANDIDATES_PER_SESSION]
        assert sum(1 for c in accepted if c) >= 1  # the checks ran...
        assert counts[MAX_CANDIDATES_PER_SESSION:] == [0] * MAX_CANDIDATES_PER_PATCH  # ...bounded
        assert after == 0
    finally:
        for s in sockets:
            s.close()


@pytest.mark.parametrize(
    "candidate",
    [
        "a=candidate:1 1 udp 2130706431 127.0.0.1 70000 typ host",  # the finding
        "a=candidate:1 1 udp 2130706431 127.0.0.1 0 typ host",
        "a=candidate:1 1 udp 2130706431 224.0.0.1 5000 typ host",
        "a=candidate:1 1 udp 2130706431 255.255.255.255 5000 typ host",
        "a=candidate:1 1 udp 2130706431 0.0.0.0 5000 typ host",
        "a=candidate:1 1 udp 2130706431 ff02::1 5000 typ host",
        "a=candidate:1 1 udp 2130706431 example.org 5000 typ host",
        "a=candidate:1 1 udp",
    ],
)
async def test_bad_candidates_are_400_in_offers_and_patches(
    candidate: str, caplog: pytest.LogCaptureFixture
) -> None:
    offer = await candidate_less_offer()
    with_candidate = offer.replace("a=mid:0\r\n", f"a=mid:0\r\n{candidate}\r\n")
    async with serve() as srv:
        status, _, _ = await srv.request("POST", "/whip", data=with_candidate, headers=SDP)
        assert status == 400
        status, _, _ = await srv.request(
            "POST", "/offer", json={"sdp": with_candidate, "type": "offer"}
        )
        assert status == 400
        status, _, headers = await srv.request("POST", "/whip", data=offer, headers=SDP)
        assert status == 201
        status, _, _ = await srv.request(
            "PATCH", headers["Location"], data=f"a=mid:0\r\n{candidate}\r\n", headers=TRICKLE
        )
        assert status == 400
        assert srv.manager.active == 1
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_whip_patch_is_rate_limited() -> None:
    offer = await candidate_less_offer()
    async with serve() as srv:
        status, _, headers = await srv.request("POST", "/whip", data=offer, headers=SDP)
        statuses = []
        for _ in range(PATCH_BURST + 3):
            status, _, _ = await srv.request(
                "PATCH", headers["Location"], data="a=end-of-candidates\r\n", headers=TRICKLE
            )
            statuses.append(status)
        assert statuses == [204] * PATCH_BURST + [429] * 3, statuses


# -- 5. unhandled input --------------------------------------------------------------------
DEEP = "[" * 1500 + "]" * 1500
BAD_JSON_BODIES = [
    DEEP,
    '{"sdp": ' + DEEP + "}",
    '{"enabled": ' + "9" * 5000 + "}",
    '{"host": "127.0.0.1", "port": ' + "9" * 5000 + "}",
    '{"attenuation_limit_db": NaN}',
    '{"attenuation_limit_db": 1e999}',
    '{"attenuation_limit_db": ' + "1" * 100 + ".5}",
    '{"port": 1e400, "host": "127.0.0.1"}',
    "\ud800",
]


async def test_deep_json_and_huge_numbers_are_400_on_every_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with sidecar() as srv:
        peer = await ClientPeer.connect(srv.url, ClipTrack(CLIP))
        paths = ["/offer", f"/streams/{peer.session_id}/control", "/v1/rtp-sessions"]
        for path in paths:
            for body in BAD_JSON_BODIES:
                data = body.encode("utf-8", "surrogatepass")
                status, text, _ = await srv.request(
                    "POST", path, data=data, headers={"Content-Type": "application/json"}
                )
                assert status == 400, (path, body[:40], status, text[:200])
        assert srv.manager.active == 1
        await peer.close()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_garbage_on_the_data_channel_is_ignored_and_counted() -> None:
    """The finding: deep JSON and invalid UTF-8 text ended the session."""
    async with serve(stats_interval_s=0.05) as srv:
        peer = await ClientPeer.connect(srv.url, ClipTrack(CLIP, loop=True))
        assert peer.channel is not None
        async with asyncio.timeout(20):
            await peer.wait_channel_open()
            await peer.wait_received(0.3)
        peer.send_control(DEEP)
        peer.send_control('{"enabled": ' + "9" * 5000 + "}")
        peer.send_control("[" * 40 + "]" * 40)
        # invalid UTF-8 as a *text* message (PPID 51), which aiortc's send cannot make
        channel = peer.channel
        transport: Any = channel.transport
        for raw in (b"\xff\xfe{}", b'{"enabled": \xc3(false}'):
            channel._addBufferedAmount(len(raw))
            transport._data_channel_queue.append((channel, 51, raw))
        await transport._data_channel_flush()
        await asyncio.sleep(0.5)
        assert await srv.metric("percepnet_control_messages_total", outcome="ignored") == 5
        peer.send_control(json.dumps({"enabled": False}))  # the channel still works
        n = len(peer.received.chunks)
        async with asyncio.timeout(10):
            await peer.wait_received((n + 25) * 960 / SAMPLE_RATE)  # and so does audio
        await asyncio.sleep(0.2)
        assert srv.manager.get(peer.session_id).controls.enabled is False
        assert peer.pc.connectionState == "connected"
        await peer.close()


async def test_an_unexpected_handler_exception_is_a_logged_500_not_a_dropped_session(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve() as srv:
        peer = await ClientPeer.connect(srv.url, ClipTrack(CLIP, loop=True))
        manager = srv.manager

        def broken(*args: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(manager, "control", broken)
        status, body, _ = await srv.request(
            "POST", f"/streams/{peer.session_id}/control", json={"enabled": False}
        )
        assert status == 500 and "internal error" in json.loads(body)["error"]
        assert "a bug" not in body  # details go to the log, not to the client
        assert any("RuntimeError: a bug" in (r.exc_text or "") for r in caplog.records)
        assert await srv.metric("percepnet_rejected_requests_total", reason="error") == 1
        async with asyncio.timeout(20):
            await peer.wait_received(0.5)
        assert manager.active == 1
        await peer.close()


async def test_a_client_cannot_claim_another_address_to_a_worker_it_reaches_directly() -> None:
    """The router tells its workers the client's address in X-PercepNet-Client; a worker
    serving the network itself (no router) ignores that header from clients."""
    async with sidecar(max_pending_per_client=2) as srv:
        statuses = []
        for i in range(3):
            status, _, _ = await srv.request(
                "POST",
                "/v1/rtp-sessions",
                json={"host": LOOPBACK, "port": 9},
                headers={"X-PercepNet-Client": f"192.0.2.{i}"},
            )
            statuses.append(status)
        assert statuses == [201, 201, 429]
        assert {s.client for s in srv.manager.sessions.values()} == {LOOPBACK}


def test_address_rules() -> None:
    import ipaddress

    from server.sessions.addresses import client_key, is_unicast
    from server.sidecar.destinations import DestinationRefused, check_destination, same_host

    # one IPv6 host holds a /64: per-client limits count the /64
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7" == client_key("192.0.2.7")
    for bad in ("224.0.0.251", "255.255.255.255", "0.0.0.0", "240.0.0.1", "ff02::fb", "::"):
        assert not is_unicast(ipaddress.ip_address(bad)), bad
    for good in ("127.0.0.1", "10.1.2.3", "192.0.2.1", "::1", "fe80::1", "2001:db8::1"):
        assert is_unicast(ipaddress.ip_address(good)), good
    allow = Config(rtp_allow=("192.0.2.0/24", "2001:db8::/32")).rtp_networks
    check_destination("192.0.2.10", allow)
    check_destination("::ffff:192.0.2.10", allow)  # judged as the IPv4 address it maps
    check_destination("2001:db8::5", allow)
    for refused in ("192.0.2.255", "192.0.3.1", "127.0.0.1", "::ffff:224.0.0.1"):
        with pytest.raises(DestinationRefused):
            check_destination(refused, allow)
    assert same_host("::ffff:127.0.0.1", "127.0.0.1") and not same_host("127.0.0.2", "127.0.0.1")
