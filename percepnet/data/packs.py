"""Packs: every accepted clip of a kind and split as one int16 array plus an index."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from percepnet.constants import INT16_SCALE
from percepnet.data.inventory import Entry
from percepnet.data.paths import DataConfig, Log
from percepnet.data.screening import FloatArray, read_mono
from percepnet.data.splits import SPLITS


@dataclass(frozen=True)
class Pack:
    """Accepted clips of one kind and split: int16 samples at native rates (memory-mapped)."""

    samples: npt.NDArray[np.int16]
    offsets: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]
    rates: npt.NDArray[np.int64]
    bandwidths: npt.NDArray[np.float64]
    speakers: npt.NDArray[np.str_]
    sources: npt.NDArray[np.str_]

    def __len__(self) -> int:
        return len(self.offsets)

    def clip(self, i: int) -> tuple[FloatArray, int]:
        o, n = int(self.offsets[i]), int(self.lengths[i])
        return np.asarray(self.samples[o : o + n], dtype=np.float64) / INT16_SCALE, int(
            self.rates[i]
        )

    @property
    def hours(self) -> float:
        return float(np.sum(self.lengths / self.rates) / 3600)


def pack_paths(cfg: DataConfig, kind: str, split: str) -> tuple[Path, Path]:
    return cfg.packs / f"{kind}_{split}.npy", cfg.packs / f"{kind}_{split}.npz"


def build_pack(
    cfg: DataConfig, entries: Sequence[Entry], kind: str, split: str, log: Log = print
) -> Path:
    """Concatenate accepted clips (peak-normalised to -1 dBFS, int16) into one array.

    Decoding thousands of ogg files is the slow part of reading the corpus; a single
    memory-mapped array makes every later read a slice, shared between processes.
    """
    rows = [e for e in entries if e.kind == kind and e.split == split and e.status == "ok"]
    rows.sort(key=lambda e: (e.root, e.path))
    npy, npz = pack_paths(cfg, kind, split)
    npy.parent.mkdir(parents=True, exist_ok=True)
    total = sum(round(e.duration * e.rate) + 8 for e in rows)
    tmp = npy.with_suffix(".tmp.npy")
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int16, shape=(max(total, 1),))
    offsets, lengths, rates, bws, spk, src = [], [], [], [], [], []
    pos = 0
    for e in rows:
        x, rate = read_mono(cfg.root(e.root) / e.path)
        peak = float(np.max(np.abs(x)))
        if peak <= 0:
            continue
        q = np.round(x * (10 ** (-1 / 20) / peak) * (INT16_SCALE - 1)).astype(np.int16)
        if pos + len(q) > len(mm):
            q = q[: len(mm) - pos]
        mm[pos : pos + len(q)] = q
        offsets.append(pos)
        lengths.append(len(q))
        rates.append(rate)
        bws.append(e.bandwidth_hz if math.isfinite(e.bandwidth_hz) else rate / 2)
        spk.append(f"{e.source}/{e.speaker}")
        src.append(e.source)
        pos += len(q)
    mm.flush()
    del mm
    tmp.replace(npy)
    np.savez(
        npz,
        offsets=np.array(offsets, dtype=np.int64),
        lengths=np.array(lengths, dtype=np.int64),
        rates=np.array(rates, dtype=np.int64),
        bandwidths=np.array(bws, dtype=np.float64),
        speakers=np.array(spk, dtype=np.str_),
        sources=np.array(src, dtype=np.str_),
    )
    log(f"pack {kind}/{split}: {len(offsets)} clips, {pos / 1e6:.1f} M samples -> {npy}")
    return npy


def load_pack(cfg: DataConfig, kind: str, split: str) -> Pack:
    npy, npz = pack_paths(cfg, kind, split)
    if not npy.exists() or not npz.exists():
        raise FileNotFoundError(f"{npy} missing: run 'percepnet data prepare' first")
    idx = np.load(npz)
    return Pack(
        samples=np.load(npy, mmap_mode="r"),
        offsets=idx["offsets"],
        lengths=idx["lengths"],
        rates=idx["rates"],
        bandwidths=idx["bandwidths"],
        speakers=idx["speakers"],
        sources=idx["sources"],
    )


def build_packs(cfg: DataConfig, entries: Sequence[Entry], log: Log = print) -> None:
    for kind in ("speech", "noise"):
        for split in SPLITS:
            build_pack(cfg, entries, kind, split, log=log)
