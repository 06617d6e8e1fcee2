"""Slow tier: build the service image and check the running container end to end.

    nice -n 19 python3 -m pytest -m slow tests/test_image.py      # as root, ~3-5 min

Runs deploy/build_and_check.sh (buildah with chroot isolation, a debootstrap-made base
image when none is there, host CA certs mounted for pip): health, the image's own
HEALTHCHECK, non-root user, no torch, one offline enhancement inside the container
(when models/percepnet-int8.onnx exists), one WebRTC session from the host, SIGTERM stop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("buildah") is None or shutil.which("debootstrap") is None,
    reason="needs buildah and debootstrap (apt-get install -y buildah debootstrap)",
)
@pytest.mark.skipif(os.geteuid() != 0, reason="buildah chroot builds here run as root")
def test_image_builds_and_serves() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "deploy/build_and_check.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "OK: image" in result.stderr
