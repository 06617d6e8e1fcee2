"""What an operator sees of `percepnet-server`: its log lines (start, stop, JSON, levels)
and HTTPS served directly with --tls-cert/--tls-key (issue 18)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import sys
from asyncio.subprocess import PIPE, Process
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from server.__main__ import main
from server.client import ClientPeer, ClipTrack
from server.clips import speech_like
from server.ops.config import ConfigError, load_config
from server.ops.logs import JsonFormatter, setup_logging
from tests.tls import client_context, make_self_signed

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (https?://[^\s]+)")


class ServerProcess:
    """`python3 -m server` from this tree, its stderr collected line by line."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            stderr=PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode().rstrip("\n"))
            self._new_line.set()

    async def wait_for(self, pattern: re.Pattern[str], within_s: float = 90.0) -> re.Match[str]:
        async with asyncio.timeout(within_s):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if m := pattern.search(line):
                        return m
                seen = len(self.lines)
                if self._reader.done():
                    raise AssertionError("server exited:\n" + "\n".join(self.lines))
                self._new_line.clear()
                await self._new_line.wait()

    async def stop(self, within_s: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(within_s):
            code = await self.proc.wait()
            await self._reader
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


async def one_session(url: str, http: aiohttp.ClientSession) -> str:
    """A WebRTC session that gets audio back, then hangs up; returns its id."""
    peer = await ClientPeer.connect(url, ClipTrack(speech_like(1.0, seed=3), loop=True), http=http)
    try:
        async with asyncio.timeout(20):
            await peer.wait_received(0.5)
        async with http.delete(url + str(peer.location)) as r:
            assert r.status in (200, 204), r.status
    finally:
        await peer.close(hang_up=False)
    assert peer.session_id is not None
    # The session key is "<public id>.<secret>": logs name the public id only.
    return peer.session_id.split(".", 1)[0]


# -- in-process ------------------------------------------------------------------------
@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("aioice").level)
    yield None
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("aioice").setLevel(saved[2])


@pytest.mark.usefixtures("restore_logging")
def test_aioice_is_at_warning_unless_the_service_logs_at_debug() -> None:
    ice = logging.getLogger("aioice.ice")
    setup_logging("INFO")
    assert not ice.isEnabledFor(logging.INFO) and ice.isEnabledFor(logging.WARNING)
    assert logging.getLogger("server").isEnabledFor(logging.INFO)
    setup_logging("debug")
    assert ice.isEnabledFor(logging.DEBUG)
    setup_logging("ERROR")
    assert not ice.isEnabledFor(logging.WARNING)
    assert not logging.getLogger("server").isEnabledFor(logging.WARNING)


def test_json_records_are_one_object_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.getLogger("server.test").makeRecord(
            "server.test", logging.ERROR, __file__, 1, "bad %s", ("thing\nhere",), sys.exc_info()
        )
    text = JsonFormatter().format(record)
    assert "\n" not in text
    obj = json.loads(text)
    assert obj["level"] == "ERROR" and obj["logger"] == "server.test"
    assert obj["message"] == "bad thing\nhere" and obj["pid"] == os.getpid()
    assert "ValueError: boom" in obj["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", obj["time"])


def test_log_and_tls_settings_from_flags_and_environment(tmp_path: Path) -> None:
    env = {
        "PERCEPNET_LOG_FORMAT": "json",
        "PERCEPNET_LOG_LEVEL": "warning",
        "PERCEPNET_TLS_CERT": "/etc/c.pem",
        "PERCEPNET_TLS_KEY": "/etc/k.pem",
    }
    config = load_config([], env)
    assert config.log_format == "json" and config.log_level.upper() == "WARNING"
    assert (config.tls_cert, config.tls_key) == (Path("/etc/c.pem"), Path("/etc/k.pem"))
    assert config.scheme == "https"
    flags = load_config(["--log-format", "text", "--log-level", "debug"], env)
    assert flags.log_format == "text" and flags.log_level == "DEBUG"
    plain = load_config([], {})
    assert (plain.log_format, plain.log_level, plain.tls_cert, plain.scheme) == (
        "text",
        "INFO",
        None,
        "http",
    )
    for bad_env in (
        {"PERCEPNET_LOG_FORMAT": "xml"},
        {"PERCEPNET_LOG_LEVEL": "loud"},
        {"PERCEPNET_TLS_CERT": "/etc/c.pem"},  # no key
    ):
        with pytest.raises(ConfigError):
            load_config([], bad_env)
    with pytest.raises(SystemExit):
        load_config(["--log-level", "loud"], {})


@pytest.mark.usefixtures("restore_logging")  # main() sets up the root logger
def test_unusable_tls_files_fail_startup_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _ = make_self_signed(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other_key = make_self_signed(other_dir)  # a key that does not match the certificate
    for key in (tmp_path / "missing.pem", other_key):
        rc = main(["--unity-gains", "--tls-cert", str(cert), "--tls-key", str(key)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("percepnet-server: cannot load TLS certificate")
        assert err.count("\n") == 1, err


# -- real processes --------------------------------------------------------------------
async def test_json_log_start_session_and_stop_lines() -> None:
    server = await ServerProcess.start("--unity-gains", "--workers", "1", "--log-format", "json")
    try:
        url = (await server.wait_for(LISTENING)).group(1)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0")
        async with aiohttp.ClientSession() as http:
            session_id = await one_session(url, http)
        await server.wait_for(re.compile(re.escape(session_id) + r" ended"))
        assert await server.stop() == 0
    finally:
        await server.kill()
    records = [json.loads(line) for line in server.lines]  # every line is one JSON object
    messages = [r["message"] for r in records]
    assert {"time", "level", "logger", "pid", "message"} <= set(records[0])
    assert any(m.startswith(f"listening on {url}") for m in messages)
    assert any(f"session {session_id}" in m and "started" in m for m in messages)
    assert any(m.startswith("worker 0 stopping") for m in messages)
    assert messages[-1] == "percepnet-server stopped (exit status 0)"
    assert [r for r in records if r["logger"].startswith("aioice")] == []
    assert all(r["level"] != "DEBUG" for r in records)


async def test_router_serves_https_with_clean_start_and_stop_lines(tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    server = await ServerProcess.start(
        "--unity-gains",
        "--workers",
        "2",
        "--drain-timeout",
        "2",
        env={"PERCEPNET_TLS_CERT": str(cert), "PERCEPNET_TLS_KEY": str(key)},
    )
    try:
        url = (await server.wait_for(LISTENING)).group(1)
        assert re.fullmatch(r"https://127\.0\.0\.1:\d+", url), url
        plain = "http" + url[len("https") :]
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served on it
                async with http.get(plain + "/healthz") as r:
                    await r.read()
        connector = aiohttp.TCPConnector(ssl=client_context(cert))
        async with aiohttp.ClientSession(connector=connector) as https:
            async with https.get(url + "/healthz") as r:
                assert r.status == 200
            session_id = await one_session(url, https)
        assert session_id.split("-")[0] in ("0", "1")
        assert await server.stop() == 0
    finally:
        await server.kill()
    text = "\n".join(server.lines)
    assert "unix:" not in text and ".sock" not in text
    assert "aioice" not in text
    assert "worker 0 ready" in text and "worker 1 ready" in text
    assert "stopping: draining 2 workers" in text
    assert server.lines[-1].endswith("percepnet-server stopped (exit status 0)")


@pytest.mark.usefixtures("restore_logging")  # main() sets up the root logger
def test_port_in_use_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc = main(["--unity-gains", "--workers", "1", "--host", "127.0.0.1", "--port", str(port)])
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert rc == 2 and "Traceback" not in err, err
    assert last == f"percepnet-server: cannot listen on 127.0.0.1:{port}: Address already in use"


async def test_router_port_in_use_is_a_one_line_error_and_no_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "server", "--unity-gains", "--workers", "2"],
            *["--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stderr=PIPE,
        )
        async with asyncio.timeout(90):
            _, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 2, text
    assert f"percepnet-server: cannot listen on 127.0.0.1:{port}: Address already in use" in text
    assert "Traceback" not in text
    # The socket is bound before the model loads: no worker ever starts.
    assert "worker" not in text, text


@pytest.mark.usefixtures("restore_logging")  # main() sets up the root logger
def test_startup_failure_is_a_json_record_in_json_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.onnx"
    assert main(["--log-format", "json", "--model", str(missing)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["level"] == "ERROR" and record["logger"] == "server"
    assert (
        record["message"].startswith("cannot load the model") and str(missing) in record["message"]
    )
