"""The compose profile `tls`: deploy/Caddyfile, run by a real Caddy in front of a real
percepnet-server, serves the page and a WebRTC session over HTTPS (issue 18).

Needs Debian's caddy (`apt-get install -y caddy`); skipped, saying so, without it. The
test adds only Caddy's global options (ports, storage in the test's folder, no admin API,
no change to this machine's trust store) to the deployed site block, which runs as is.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.test_server_logs import LISTENING, ServerProcess, one_session
from tests.tls import TEST_HOSTNAME

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CADDY = shutil.which("caddy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1: the test's hostname without DNS or /etc/hosts."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


def test_compose_tls_profile_runs_caddy_with_the_caddyfile() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    caddy = compose["services"]["caddy"]
    assert caddy["profiles"] == ["tls"] and caddy["network_mode"] == "host"
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    port = compose["services"]["percepnet"]["environment"]["PERCEPNET_PORT"]
    assert caddy["environment"]["PERCEPNET_UPSTREAM"] == f"127.0.0.1:{port}"
    assert "{$PERCEPNET_UPSTREAM:127.0.0.1:" + port + "}" in (DEPLOY / "Caddyfile").read_text()


@pytest.mark.skipif(CADDY is None, reason="needs Caddy: apt-get install -y caddy")
async def test_caddy_terminates_tls_for_page_and_session(tmp_path: Path) -> None:
    assert CADDY is not None
    http_port, https_port = free_port(), free_port()
    storage = tmp_path / "caddy"
    config = tmp_path / "Caddyfile"
    config.write_text(
        "{\n"
        "\tadmin off\n"
        "\tskip_install_trust\n"
        f"\thttp_port {http_port}\n"
        f"\thttps_port {https_port}\n"
        f"\tstorage file_system {storage}\n"
        "}\n\n" + (DEPLOY / "Caddyfile").read_text()
    )
    server = await ServerProcess.start("--unity-gains", "--workers", "1")
    caddy: Any = None
    try:
        upstream = (await server.wait_for(LISTENING)).group(1).removeprefix("http://")
        caddy = await asyncio.create_subprocess_exec(
            CADDY, "run", "--config", str(config), "--adapter", "caddyfile",
            env={
                "HOME": str(tmp_path),
                "XDG_DATA_HOME": str(tmp_path / "data"),
                "XDG_CONFIG_HOME": str(tmp_path / "config"),
                "PERCEPNET_DOMAIN": TEST_HOSTNAME,
                "PERCEPNET_UPSTREAM": upstream,
            },
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        root = storage / "pki" / "authorities" / "local" / "root.crt"
        base = f"https://{TEST_HOSTNAME}:{https_port}"
        async with asyncio.timeout(30):
            while not root.exists():
                if caddy.returncode is not None:
                    assert caddy.stderr is not None
                    raise AssertionError((await caddy.stderr.read()).decode()[-3000:])
                await asyncio.sleep(0.2)
        context = ssl.create_default_context(cafile=str(root))
        connector = aiohttp.TCPConnector(ssl=context, resolver=LoopbackResolver())
        async with aiohttp.ClientSession(connector=connector) as https:
            async with asyncio.timeout(30):
                while True:  # the site certificate is issued just after the root
                    try:
                        async with https.get(base + "/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
            async with https.get(base + "/") as r:
                assert r.status == 200 and "PercepNet" in await r.text()
            await one_session(base, https)
    finally:
        if caddy is not None and caddy.returncode is None:
            caddy.send_signal(signal.SIGTERM)
            await caddy.wait()
        if server.proc.returncode is None:
            await server.stop()
        await server.kill()
