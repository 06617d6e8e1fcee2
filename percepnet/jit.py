"""Compiled inner loops: numba's njit with an on-disk cache keyed by this package's source.

The per-frame DSP is a few thousand multiply-adds spread over dozens of small steps;
as numpy calls each step costs microseconds of interpreter overhead, so the hot
loops are compiled. Compiling takes a few seconds, so the machine code is cached.

numba invalidates a cached function only when its own file changes, not when a
constant or a function it uses from another module does. The cache directory is
therefore named after a hash of every module in this package (and the numba
version): any edit starts a fresh cache, and a stale kernel can never be loaded.

PERCEPNET_JIT_CACHE chooses the cache root (default: $XDG_CACHE_HOME/percepnet/jit,
else ~/.cache/percepnet/jit). Where it cannot be written, kernels compile in memory
at first use in each process.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba

_PACKAGE = Path(__file__).resolve().parent


def source_key() -> str:
    """Hash of the package's modules and the numba version: the cache's name."""
    digest = hashlib.sha256(numba.__version__.encode())
    for path in sorted(_PACKAGE.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_root() -> Path:
    configured = os.environ.get("PERCEPNET_JIT_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "percepnet" / "jit"


def _writable_cache_dir() -> Path | None:
    path = _cache_root() / source_key()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError:
        return None
    return path


CACHE_DIR = _writable_cache_dir()
if CACHE_DIR is not None:
    numba.config.CACHE_DIR = str(CACHE_DIR)  # type: ignore[attr-defined]


def jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """numba.njit, cached on disk when CACHE_DIR is writable."""
    return numba.njit(cache=CACHE_DIR is not None, **options)
