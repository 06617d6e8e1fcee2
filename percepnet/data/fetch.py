"""Debian fetch: `apt-get download` and unpack the packages the corpus draws on."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from percepnet.constants import INT16_SCALE
from percepnet.data.paths import DataConfig, Log
from percepnet.data.screening import FloatArray
from percepnet.data.sources import (
    DEBIAN_PACKAGES,
    OPENSFX_KEEP,
    OPENSFX_SKIP,
    PARTIAL_MEMBERS,
    ZIP_MEMBERS,
)


def fetch_debian(
    cfg: DataConfig, packages: Sequence[str] = DEBIAN_PACKAGES, log: Log = print
) -> dict[str, Path]:
    """Download (apt-get download) and unpack (dpkg-deb -x) packages into the cache.

    Works offline when the cache already holds the .deb or the unpacked tree.
    A package that cannot be had is reported and skipped, never fatal.
    Returns {package: unpacked directory} for those available.
    """
    debs = cfg.debian / "debs"
    out = cfg.debian / "x"
    debs.mkdir(parents=True, exist_ok=True)
    have: dict[str, Path] = {}
    for pkg in packages:
        target = out / pkg
        marker = target / ".unpacked"
        if marker.exists():
            have[pkg] = target
            continue
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            if shutil.which("apt-get") is None:
                log(f"{pkg}: not cached and apt-get is unavailable; skipping it")
                continue
            log(f"{pkg}: apt-get download ...")
            res = subprocess.run(
                ["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True
            )
            found = sorted(debs.glob(f"{pkg}_*.deb"))
            if res.returncode != 0 or not found:
                msg = (res.stderr or res.stdout).strip().splitlines()
                log(
                    f"{pkg}: download failed ({msg[-1] if msg else res.returncode}); skipping it. "
                    "Run 'apt-get update' or copy the .deb into " + str(debs)
                )
                continue
        if shutil.which("dpkg-deb") is None:
            log(f"{pkg}: dpkg-deb is unavailable, cannot unpack {found[-1].name}; skipping it")
            continue
        log(f"{pkg}: unpacking {found[-1].name}")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        err = _unpack(found[-1], target, PARTIAL_MEMBERS.get(pkg))
        if err:
            log(f"{pkg}: unpacking failed: {err}; skipping it")
            continue
        try:
            _post_unpack(pkg, target, log)
        except (OSError, ValueError, ImportError) as exc:
            log(f"{pkg}: converting its audio failed: {exc}; skipping it")
            continue
        marker.touch()
        have[pkg] = target
    return have


def _unpack(deb: Path, target: Path, members: Sequence[str] | None) -> str:
    """dpkg-deb -x, or only the members matching the wildcards; returns an error or ''."""
    if members is None:
        res = subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], capture_output=True)
        return res.stderr.decode(errors="replace").strip() if res.returncode else ""
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    res = subprocess.run(
        ["tar", "-x", "-C", str(target), "--wildcards", *members],
        stdin=tar.stdout,
        capture_output=True,
    )
    tar.wait()
    if tar.returncode or res.returncode:
        return res.stderr.decode(errors="replace").strip() or f"exit {tar.returncode}"
    return ""


def _post_unpack(pkg: str, target: Path, log: Log) -> None:
    """Make a package's audio readable by soundfile: decode G.722, take 0ad's zip apart."""
    if pkg.startswith("asterisk-core-sounds-"):
        n, bad = 0, 0
        for g in sorted(target.rglob("*.g722")):
            flac = g.with_suffix(".flac")
            if not flac.exists():
                try:
                    x = decode_g722(g)
                except ValueError:
                    bad += 1  # an empty placeholder file (one in the Russian set)
                else:
                    sf.write(str(flac), x, G722_RATE, subtype="PCM_16")
                    n += 1
            g.unlink()
        log(f"{pkg}: decoded {n} G.722 files to FLAC, {bad} without audio skipped")
    elif pkg == "0ad-data":
        import zipfile

        for z in sorted(target.rglob("public.zip")):
            with zipfile.ZipFile(z) as zf:
                names = [m for m in zf.namelist() if m.startswith(ZIP_MEMBERS)]
                zf.extractall(target / "public", members=names)
            z.unlink()
            log(f"{pkg}: took {len(names)} files of {', '.join(ZIP_MEMBERS)} from {z.name}")
    elif pkg == "openttd-opensfx":
        for cat in sorted(target.rglob("opensfx.cat")):
            kept = split_opensfx(cat, target / "opensfx")
            log(f"{pkg}: took {kept} recordings out of {cat.name}")


def read_opensfx_catalogue(path: Path) -> list[tuple[str, bytes]]:
    """OpenTTD's sound catalogue: a table of (offset, size) pairs, little-endian uint32,
    whose offsets carry a format flag in the top bit; each entry is a length-prefixed
    description (title, author, licence) followed by a RIFF/WAVE file."""
    import struct

    b = path.read_bytes()
    if len(b) < 8:
        raise ValueError(f"{path.name}: too short for a sound catalogue")
    count = (struct.unpack_from("<I", b, 0)[0] & 0x7FFFFFFF) // 8
    out = []
    for i in range(count):
        off, size = struct.unpack_from("<II", b, 8 * i)
        off &= 0x7FFFFFFF
        if off + size > len(b) or size < 1:
            raise ValueError(f"{path.name}: entry {i} lies outside the file")
        n = b[off]
        name = b[off + 1 : off + 1 + n].split(b"\0")[0].decode("latin-1")
        out.append((name, b[off + 1 + n : off + size]))
    return out


def split_opensfx(cat: Path, out: Path) -> int:
    """Write the catalogue's noise recordings (OPENSFX_KEEP) as FLAC, named by index and
    title, with each one's description (author, licence) in credits.txt beside them."""
    import io
    import re

    out.mkdir(parents=True, exist_ok=True)
    credits = []
    kept = 0
    for i, (name, wav) in enumerate(read_opensfx_catalogue(cat)):
        title = name.split('"')[1] if name.count('"') >= 2 else name
        low = title.lower()
        if not wav or not OPENSFX_KEEP.search(low) or OPENSFX_SKIP.search(low):
            continue
        x, rate = sf.read(io.BytesIO(wav), dtype="float64", always_2d=True)
        slug = re.sub(r"[^a-z0-9]+", "_", low).strip("_")
        fname = f"{i:02d}_{slug}.flac"
        sf.write(str(out / fname), x.mean(axis=1), rate, subtype="PCM_16")
        credits.append(f"{fname}: {name}")
        kept += 1
    (out / "credits.txt").write_text("\n".join(credits) + "\n")
    cat.unlink()
    return kept


G722_RATE = 16000


def decode_g722(path: Path) -> FloatArray:
    """Raw G.722 (as Asterisk stores it) to float samples at 16 kHz, with PyAV's decoder."""
    import av

    with av.open(str(path), format="g722") as c:
        parts = [f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]
    if not parts:
        raise ValueError(f"{path.name}: no audio")
    x = np.concatenate(parts)
    scale = INT16_SCALE if x.dtype == np.int16 else 1.0
    return np.asarray(x, dtype=np.float64) / scale
