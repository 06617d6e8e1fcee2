#!/usr/bin/env python3
"""Put one talker into a Janus AudioBridge room through the PercepNet sidecar.

    talker's Opus RTP -> PercepNet sidecar (cleans) -> relay -> Janus room (plain RTP)
                                     room's mix for the talker <- relay -> --mix-to

1. joins the room as a plain-RTP participant (Janus HTTP API, AudioBridge "join" with
   an "rtp" object) whose address is a small UDP relay here (UdpRelay says why);
2. opens a sidecar session on the service (POST /v1/rtp-sessions) whose cleaned output
   goes to the relay, which passes it to Janus; the room's mix for the talker goes
   to --mix-to;
3. prints where the talker's Opus RTP goes (the sidecar's port), keeps the Janus session
   alive, and on Ctrl-C / SIGTERM ends the sidecar session and leaves the room.

Standard library only (runs beside Janus without the service's dependencies):

    python3 deploy/janus/bridge.py --janus http://127.0.0.1:8088/janus --room 1234 \\
        --percepnet http://127.0.0.1:8080 [--mix-to 10.0.0.9:5006] [--token TOKEN]

The functions are used as they are by tests/test_janus.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import socket
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

AUDIOBRIDGE = "janus.plugin.audiobridge"
OPUS_PAYLOAD_TYPE = 111
KEEPALIVE_S = 25.0  # Janus drops a session after 60 s without a request (session_timeout)


class BridgeError(RuntimeError):
    """Janus or the service refused a request; the message says which and why."""


def _request(
    url: str,
    payload: dict[str, Any] | None = None,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300]
        raise BridgeError(f"{method or 'POST'} {url}: HTTP {exc.code}: {detail!r}") from None


@dataclass
class JanusParticipant:
    """One plain-RTP participant of an AudioBridge room: its own Janus session and handle."""

    base_url: str
    session: int = 0
    handle: int = 0
    rtp_host: str = ""
    """Where Janus takes this participant's RTP (from the "joined" event)."""
    rtp_port: int = 0
    rtp_payload_type: int = OPUS_PAYLOAD_TYPE

    def _janus(self, path: str, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        payload = {**payload, "transaction": secrets.token_hex(6)}
        _, reply = _request(self.base_url + path, payload, timeout=timeout)
        if reply.get("janus") == "error":
            raise BridgeError(f"Janus: {reply['error']}")
        return reply

    def join(
        self,
        room: int,
        mix_host: str,
        mix_port: int,
        *,
        display: str = "percepnet",
        payload_type: int = OPUS_PAYLOAD_TYPE,
        timeout: float = 10.0,
    ) -> None:
        """Join `room`; Janus sends the room's mix (without this participant) to
        mix_host:mix_port and takes this participant's audio on (rtp_host, rtp_port)."""
        self.session = int(self._janus("", {"janus": "create"})["data"]["id"])
        self.handle = int(
            self._janus(f"/{self.session}", {"janus": "attach", "plugin": AUDIOBRIDGE})["data"][
                "id"
            ]
        )
        body = {
            "request": "join",
            "room": room,
            "display": display,
            "codec": "opus",
            "rtp": {"ip": mix_host, "port": mix_port, "payload_type": payload_type},
        }
        self._janus(f"/{self.session}/{self.handle}", {"janus": "message", "body": body})
        data = self._event("joined", timeout)
        rtp = data.get("rtp")
        if not rtp:
            raise BridgeError(f"Janus joined without an RTP address: {data}")
        self.rtp_host, self.rtp_port = str(rtp["ip"]), int(rtp["port"])
        self.rtp_payload_type = int(rtp.get("payload_type", payload_type))

    def _event(self, kind: str, timeout: float) -> dict[str, Any]:
        """The AudioBridge event `kind` for this handle (long polls the session)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, reply = _request(
                f"{self.base_url}/{self.session}?maxev=1", method="GET", timeout=timeout + 35
            )
            if reply.get("janus") != "event" or reply.get("sender") != self.handle:
                continue
            data = reply["plugindata"]["data"]
            if "error" in data:
                raise BridgeError(f"AudioBridge: {data['error']} (code {data.get('error_code')})")
            if data.get("audiobridge") == kind:
                return dict(data)
        raise BridgeError(f"no {kind!r} event from Janus within {timeout:.0f} s")

    def keepalive(self) -> None:
        self._janus(f"/{self.session}", {"janus": "keepalive"})

    def leave(self) -> None:
        """Leave the room and end the Janus session (no error if already gone)."""
        if not self.session:
            return
        with contextlib.suppress(BridgeError, OSError):
            self._janus(f"/{self.session}", {"janus": "destroy"})
        self.session = self.handle = 0


class UdpRelay:
    """Between the sidecar and Janus, for when the sidecar's port is not known before
    the Janus join (the usual case: the service picks it per session).

    Janus (1.1) connects its socket for a plain-RTP participant to the address given at
    join, and takes RTP from that address only. So the participant joins with this
    relay's address; the sidecar sends the cleaned audio here and the relay passes it
    on to Janus from that address. What Janus sends back (the room's mix for this
    participant) goes to `mix_to`, the talker's own endpoint, or nowhere. Where the
    sidecar's port is known in advance, join with it instead and skip the relay
    (tests/test_janus.py does both).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.forwarded = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, janus: tuple[str, int], mix_to: tuple[str, int] | None = None) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(janus, mix_to), name="janus-relay", daemon=True
        )
        self._thread.start()

    def _run(self, janus: tuple[str, int], mix_to: tuple[str, int] | None) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[1] == janus[1] and addr[0] in (janus[0], "::ffff:" + janus[0]):
                if mix_to is not None:
                    self.sock.sendto(data, mix_to)
            else:
                self.sock.sendto(data, janus)
                self.forwarded += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sock.close()


def open_sidecar(
    percepnet_url: str,
    host: str,
    port: int,
    *,
    payload_type: int = OPUS_PAYLOAD_TYPE,
    token: str | None = None,
    enabled: bool = True,
) -> dict[str, Any]:
    """POST /v1/rtp-sessions: cleaned RTP to host:port. Returns the service's record
    (its "port" is where the talker's RTP goes; its "session" key, a capability, reads
    and ends it)."""
    body = {"host": host, "port": port, "payload_type": payload_type, "enabled": enabled}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, info = _request(percepnet_url.rstrip("/") + "/v1/rtp-sessions", body, headers=headers)
    if status != 201:
        raise BridgeError(f"sidecar session: HTTP {status}: {info}")
    return dict(info)


def close_sidecar(percepnet_url: str, session_key: str, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{percepnet_url.rstrip('/')}/v1/rtp-sessions/{session_key}"
    with contextlib.suppress(BridgeError, OSError):  # already ended (idle timeout, drain)
        _request(url, method="DELETE", headers=headers)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--janus", default="http://127.0.0.1:8088/janus", help="Janus HTTP API")
    p.add_argument("--room", type=int, default=1234, help="AudioBridge room (default: 1234)")
    p.add_argument("--percepnet", default="http://127.0.0.1:8080", help="the service")
    p.add_argument("--token", default=None, help="the service's bearer token (default: none)")
    p.add_argument(
        "--mix-to",
        type=_host_port,
        default=None,
        help="HOST:PORT: the room's mix for the talker goes there (default: dropped)",
    )
    p.add_argument(
        "--relay-host",
        default="127.0.0.1",
        help="address of the relay, reachable by the service and Janus (default: 127.0.0.1)",
    )
    p.add_argument("--display", default="cleaned talker", help="name shown in the room")
    args = p.parse_args(argv)

    relay = UdpRelay(args.relay_host)
    participant = JanusParticipant(args.janus.rstrip("/"))
    participant.join(args.room, relay.host, relay.port, display=args.display)
    relay.start((participant.rtp_host, participant.rtp_port), args.mix_to)
    try:
        side = open_sidecar(args.percepnet, relay.host, relay.port, token=args.token)
    except BaseException:
        relay.close()
        participant.leave()
        raise
    service_host = urlsplit(args.percepnet).hostname
    print(
        f"room {args.room}: send the talker's Opus RTP (payload type {OPUS_PAYLOAD_TYPE}) "
        f"to {service_host}:{side['port']}; it enters the room cleaned, via "
        f"{relay.host}:{relay.port} to Janus {participant.rtp_host}:{participant.rtp_port}. "
        "Ctrl-C ends it.",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(KEEPALIVE_S):
            participant.keepalive()
    finally:
        close_sidecar(args.percepnet, side["session"], args.token)
        participant.leave()
        relay.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
