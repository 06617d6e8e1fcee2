"""Where the data live: the shared data folder, the cache, and DataConfig naming both."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Log = Callable[[str], None]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The shared data folder: explicit > $PERCEPNET_DATA > <repo>/../shared/data."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("PERCEPNET_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return (repo_root() / ".." / "shared" / "data").resolve()


def cache_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Cache folder: explicit > $PERCEPNET_CACHE > <repo>/cache."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("PERCEPNET_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return repo_root() / "cache"


@dataclass(frozen=True)
class DataConfig:
    data: Path
    cache: Path

    @classmethod
    def from_args(cls, data: str | None = None, cache: str | None = None) -> DataConfig:
        return cls(data_root(data), cache_root(cache))

    @property
    def debian(self) -> Path:
        return self.cache / "debian"

    @property
    def manifest(self) -> Path:
        return self.cache / "manifest.csv"

    @property
    def packs(self) -> Path:
        return self.cache / "packs"

    @property
    def rirs(self) -> Path:
        return self.cache / "rirs"

    def root(self, name: str) -> Path:
        if name == "shared":
            return self.data
        if name == "debian":
            return self.debian / "x"
        raise ValueError(f"unknown root {name!r}")
