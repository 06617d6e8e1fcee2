"""The corpus: sources, Debian fetch, screening, disjoint splits, manifest and packs.

Layout under the cache directory (default `<repo>/cache`, git-ignored):

    debian/debs/*.deb          apt-get download output
    debian/x/<package>/...     dpkg-deb -x output
    manifest.csv               one row per file (speech, noise, rir), see MANIFEST_FIELDS
    packs/<kind>_<split>.npy   int16 samples of every accepted clip, concatenated
    packs/<kind>_<split>.npz   index: offsets, lengths, rates, bandwidths, speakers
    rirs/                      synthetic RIR bank and measured RIRs (rooms.py)

Paths in the manifest are relative to a named root ("shared" = the data folder,
"debian" = the extracted packages), so the manifest survives moving either.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

FloatArray = npt.NDArray[np.float64]
Log = Callable[[str], None]

SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = {"test": 0.1, "dev": 0.1}
"""Share of each source's hours (by group) held out; the rest is train."""

ASTERISK_LANGS = ("en", "es", "fr", "it", "ru")
DEBIAN_PACKAGES = (
    "tuxpaint-stamps-default",
    "klettres-data",
    "hedgewars-data",
    "megaglest-data",
    *(f"asterisk-core-sounds-{lang}-g722" for lang in ASTERISK_LANGS),
    "kajongg",
    "redeclipse-data",
    "0ad-data",
)
"""Fetched in this order. Licences (Debian copyright files): tuxpaint, klettres,
hedgewars, megaglest, kajongg GPL-2+; asterisk prompts CC BY-SA 3.0 (en, es, fr) and
CC BY 3.0 (it, ru); redeclipse ambience and 0ad audio CC BY-SA 3.0 / CC BY 3.0."""

SOURCE_LICENCES = {
    "picovoice_sti": "Apache-2.0",
    "picovoice_ww": "Apache-2.0",
    "ljspeech": "public domain",
    "dns_8k": "CC BY 4.0",
    "librispeech": "CC BY 4.0",
    "tuxpaint": "GPL-2+",
    "tuxpaint_fx": "GPL-2+",
    "klettres": "GPL-2+",
    "hedgewars": "GPL-2+",
    "hedgewars_sounds": "GPL-2+",
    "hedgewars_music": "GPL-2+",
    "megaglest": "CC BY-SA 3.0",
    "asterisk_en": "CC BY-SA 3.0",
    "asterisk_es": "CC BY-SA 3.0",
    "asterisk_fr": "CC BY-SA 3.0",
    "asterisk_it": "CC BY 3.0",
    "asterisk_ru": "CC BY 3.0",
    "kajongg": "GPL-2+",
    "redeclipse_ambience": "CC BY-SA 3.0 / CC BY 3.0",
    "0ad_voice": "CC BY-SA 3.0",
    "0ad_ambient": "CC BY-SA 3.0",
}
"""Licence of each source, for the manifest and the model card (shared sources: see
the shared folder's README; per-file licences of librosa examples sit beside them)."""

_PARTIAL = {
    "redeclipse-data": ("./usr/share/games/redeclipse/data/sounds/ambience/*.ogg",),
    "0ad-data": ("*/mods/public/public.zip",),
}
"""Large packages: only these members are unpacked (tar wildcards)."""
_ZIP_MEMBERS = ("audio/voice/", "audio/ambient/")
"""0ad-data keeps its audio inside public.zip: only these folders are taken out."""
_ASTERISK_SKIP = re.compile(r"beep|tone|dtmf|silence|^digits/|^letters/|^phonetic/")
"""Asterisk files that are not sentences: beeps, tones, DTMF, silence, and the single
digits/letters (too short to train on, and one speaker's many near-identical clips)."""

AUDIO_EXTENSIONS = (".flac", ".ogg", ".wav")

# Screening thresholds for clean-speech candidates.
MIN_SPEECH_SECONDS = 0.5
"""Shorter clips carry too little speech to train on."""
MIN_ACTIVE_LEVEL_DBFS = -50.0
"""Active-speech RMS below this is near-silent (or only hiss)."""
MAX_CLIP_FRACTION = 1e-3
"""More samples than this at full scale: clipped recording."""
MIN_SNR_EST_DB = 15.0
"""Loud-frame (95th pct) vs quiet-frame (10th pct) energy ratio: below it the 'clean'
clip is noisy. Tightly trimmed 1 s clips have few quiet frames, which makes this a
coarse screen; DNSMOS BAK is the finer one."""
MIN_DNSMOS_SIG = 3.0
MIN_DNSMOS_BAK = 3.2
"""DNSMOS P.835 floors (pack scores, see `score_dnsmos`)."""
MIN_NOISE_SECONDS = 0.5

FRAME_S = 0.02
"""Frame length (s) of the level/SNR statistics."""


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


# ---------------------------------------------------------------- Debian fetch


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
        err = _unpack(found[-1], target, _PARTIAL.get(pkg))
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
                names = [m for m in zf.namelist() if m.startswith(_ZIP_MEMBERS)]
                zf.extractall(target / "public", members=names)
            z.unlink()
            log(f"{pkg}: took {len(names)} files of {', '.join(_ZIP_MEMBERS)} from {z.name}")


G722_RATE = 16000


def decode_g722(path: Path) -> FloatArray:
    """Raw G.722 (as Asterisk stores it) to float samples at 16 kHz, with PyAV's decoder."""
    import av

    with av.open(str(path), format="g722") as c:
        parts = [f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]
    if not parts:
        raise ValueError(f"{path.name}: no audio")
    x = np.concatenate(parts)
    scale = 32768.0 if x.dtype == np.int16 else 1.0
    return np.asarray(x, dtype=np.float64) / scale


# ---------------------------------------------------------------- enumeration


@dataclass
class Entry:
    """One manifest row. Statistics are filled by `screen`; split by `assign_splits`."""

    kind: str  # speech | noise | rir
    root: str  # shared | debian
    path: str  # relative to the root
    source: str
    speaker: str  # split group: a speaker id where known, else the file/recording
    split: str = ""
    forced_split: str = ""  # a split the whole source must go to ("" = by hash)
    rate: int = 0
    duration: float = 0.0
    level_dbfs: float = math.nan
    peak_dbfs: float = math.nan
    clip_frac: float = math.nan
    snr_est_db: float = math.nan
    bandwidth_hz: float = math.nan
    dnsmos_sig: float = math.nan
    dnsmos_bak: float = math.nan
    dnsmos_ovrl: float = math.nan
    status: str = "ok"


MANIFEST_FIELDS = tuple(f.name for f in fields(Entry))


def _audio_files(top: Path) -> list[Path]:
    if not top.exists():
        return []
    return sorted(p for p in top.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def _norm_stem(name: str) -> str:
    """Group key for a file that may exist in near-duplicate copies."""
    stem = name.split(".")[0].lower()
    return re.sub(r"[^a-z0-9]", "", stem)


def enumerate_shared(root: Path) -> list[Entry]:
    """Speech, noise and measured RIRs of the shared folder (see its README)."""
    out: list[Entry] = []
    speech = root / "speech"
    for p in _audio_files(speech / "picovoice_speech_to_intent"):
        # No speaker ids are published with these files: each file is its own group.
        out.append(Entry("speech", "shared", str(p.relative_to(root)), "picovoice_sti", p.stem))
    for p in _audio_files(speech / "picovoice_wake_word"):
        out.append(Entry("speech", "shared", str(p.relative_to(root)), "picovoice_ww", p.stem))
    for p in _audio_files(speech / "ljspeech_subset"):
        # One speaker: keeping her out of dev/test keeps those splits speaker-disjoint.
        out.append(
            Entry(
                "speech", "shared", str(p.relative_to(root)), "ljspeech", "LJ", forced_split="train"
            )
        )
    for p in _audio_files(speech / "dns_clean_8k"):
        out.append(Entry("speech", "shared", str(p.relative_to(root)), "dns_8k", p.stem))
    for p in _audio_files(speech / "librispeech_excerpts"):
        out.append(
            Entry("speech", "shared", str(p.relative_to(root)), "librispeech", p.stem.split("-")[0])
        )
    for p in _audio_files(root / "noise"):
        out.append(
            Entry(
                "noise",
                "shared",
                str(p.relative_to(root)),
                f"shared_{p.parent.name}",
                _norm_stem(p.name),
            )
        )
    for p in _audio_files(root / "rirs"):
        if p.parent.name == "pymixconsole" and p.stem == "plate":
            continue  # a plate reverb, not a room
        out.append(Entry("rir", "shared", str(p.relative_to(root)), f"rir_{p.parent.name}", p.stem))
    return out


_TUX_DESC = re.compile(r"_desc(?:_([a-z]{2,3}(?:_[A-Za-z]{2})?))?$")
_TUX_LANG = re.compile(r"_[a-z]{2}(?:_[A-Za-z]{2})?$")


def enumerate_debian(xroot: Path) -> list[Entry]:
    """Speech and noise inside the unpacked Debian packages (those present)."""
    out: list[Entry] = []
    tux = xroot / "tuxpaint-stamps-default"
    for p in _audio_files(tux):
        rel = str(p.relative_to(xroot))
        m = _TUX_DESC.search(p.stem)
        if m:
            # Each language was recorded by its own volunteer(s): language = speaker group.
            out.append(Entry("speech", "debian", rel, "tuxpaint", f"tux_{m.group(1) or 'en'}"))
        elif not _TUX_LANG.search(p.stem) and "/symbols/" not in rel:
            out.append(Entry("noise", "debian", rel, "tuxpaint_fx", _norm_stem(p.name)))
    kl = xroot / "klettres-data"
    for p in _audio_files(kl):
        lang = p.relative_to(kl / "usr/share/klettres").parts[0]
        out.append(
            Entry(
                "speech",
                "debian",
                str(p.relative_to(xroot)),
                "klettres",
                f"klettres_{lang}",
            )
        )
    hw = xroot / "hedgewars-data" / "usr/share/games/hedgewars/Data"
    for p in _audio_files(hw / "Sounds" / "voices"):
        pack = p.parent.name
        if pack.lower().startswith(("robot", "singer")):
            continue  # processed or sung voices are not clean speech targets
        out.append(Entry("speech", "debian", str(p.relative_to(xroot)), "hedgewars", f"hw_{pack}"))
    for sub in ("Sounds", "Music"):
        for p in _audio_files(hw / sub):
            if "voices" in p.parts:
                continue
            out.append(
                Entry(
                    "noise",
                    "debian",
                    str(p.relative_to(xroot)),
                    f"hedgewars_{sub.lower()}",
                    _norm_stem(p.name),
                )
            )
    mg = xroot / "megaglest-data" / "usr/share/games/megaglest"
    seen: set[str] = set()
    for sub in ("tilesets", "data/core", "techs/megapack/commondata/sounds"):
        for p in _audio_files(mg / sub):
            if "/factions/" in str(p):
                continue  # unit acknowledgements: voices
            digest = hashlib.sha1(p.read_bytes()).hexdigest()
            if digest in seen:
                continue  # tilesets share loops under other names
            seen.add(digest)
            out.append(
                Entry("noise", "debian", str(p.relative_to(xroot)), "megaglest", _norm_stem(p.name))
            )
    for lang in ASTERISK_LANGS:
        top = xroot / f"asterisk-core-sounds-{lang}-g722" / "usr/share/asterisk/sounds"
        for p in _audio_files(top):
            voice = p.relative_to(top).parts[0]  # e.g. en_US_f_Allison: one speaker
            inner = "/".join(p.relative_to(top / voice).parts)
            if _ASTERISK_SKIP.search(inner) or _ASTERISK_SKIP.search(p.stem):
                continue
            # One voice per language: a split by speaker would send a whole language
            # to test. The prompts train; the benchmark's voices are other speakers'.
            out.append(
                Entry(
                    "speech",
                    "debian",
                    str(p.relative_to(xroot)),
                    f"asterisk_{lang}",
                    voice,
                    forced_split="train",
                )
            )
    kj = xroot / "kajongg" / "usr/share/kajongg/voices"
    for p in _audio_files(kj):
        voice = p.relative_to(kj).parts[0]
        out.append(Entry("speech", "debian", str(p.relative_to(xroot)), "kajongg", f"kj_{voice}"))
    rd = xroot / "redeclipse-data"
    for p in _audio_files(rd):
        out.append(
            Entry("noise", "debian", str(p.relative_to(xroot)), "redeclipse_ambience", p.stem)
        )
    oad = xroot / "0ad-data" / "public" / "audio"
    for p in _audio_files(oad / "voice"):
        # audio/voice/<language>/<civ or role>/...: the folder under the language is the voice
        parts = p.relative_to(oad / "voice").parts
        group = "_".join(parts[:2]) if len(parts) > 2 else parts[0]
        out.append(Entry("speech", "debian", str(p.relative_to(xroot)), "0ad_voice", group))
    for p in _audio_files(oad / "ambient"):
        out.append(
            Entry("noise", "debian", str(p.relative_to(xroot)), "0ad_ambient", _norm_stem(p.name))
        )
    return out


# ---------------------------------------------------------------- screening


def _frame_power_db(x: FloatArray, rate: int) -> FloatArray:
    n = max(1, int(FRAME_S * rate))
    k = len(x) // n
    if k == 0:
        return np.array([10 * np.log10(np.mean(x**2) + 1e-20)])
    p = np.mean(x[: k * n].reshape(k, n) ** 2, axis=1)
    return np.asarray(10 * np.log10(p + 1e-20))


def active_level_db(x: FloatArray, rate: int, floor_db: float = 40.0) -> float:
    """RMS level (dBFS, re. full-scale sine 0 dB = RMS 1) of frames within floor_db of the
    loudest frame: a cheap stand-in for P.56 active speech level."""
    f = _frame_power_db(x, rate)
    active = f[f > f.max() - floor_db]
    return float(10 * np.log10(np.mean(10 ** (active / 10)) + 1e-20))


def bandwidth_estimate(x: FloatArray, rate: int, margin_db: float = 15.0) -> float:
    """Highest frequency (Hz) where the clip carries real energy, for the loss mask.

    The long-term spectrum (Welch, ~43 Hz resolution, smoothed over 250 Hz) is
    compared with its own floor: its lowest value above 1 kHz, which is the
    codec/resampler stop band of a band-limited clip, or the microphone hiss of a
    fullband one. The bandwidth is the highest frequency more than margin_db above
    that floor (and within 90 dB of the spectral peak), rounded down to 250 Hz.
    """
    if len(x) < 256 or not np.any(x):
        return 0.0
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import welch

    nper = min(int(2 ** np.ceil(np.log2(rate / 43.0))), len(x))
    f, p = welch(x, fs=rate, nperseg=nper)
    width = max(1, round(250.0 / (f[1] - f[0])))
    db = 10 * np.log10(np.maximum(uniform_filter1d(p, width, mode="nearest"), 0.0) + 1e-20)
    above_1k = f >= 1000.0
    if not np.any(above_1k):
        return float(rate / 2)
    floor = float(np.min(db[above_1k]))
    if float(np.max(db[above_1k])) - floor < margin_db:
        return float(rate / 2)  # flat above 1 kHz: no edge anywhere, fullband
    ok = (db > floor + margin_db) & (db > db.max() - 90.0)
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return 0.0
    # The smoothing spreads an edge by half its width; round down (mask conservatively).
    edge = f[idx[-1]] - 0.5 * width * (f[1] - f[0])
    return float(min(rate / 2, max(0.0, math.floor(edge / 250.0) * 250.0)))


def read_mono(path: Path) -> tuple[FloatArray, int]:
    data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    return np.asarray(data.mean(axis=1)), int(rate)


def screen(entry: Entry, cfg: DataConfig) -> Entry:
    """Fill an entry's statistics and status ('ok' or 'rejected:<reason>')."""
    path = cfg.root(entry.root) / entry.path
    try:
        x, rate = read_mono(path)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        return replace(entry, status=f"rejected:unreadable ({exc})"[:80])
    e = replace(entry, rate=rate, duration=len(x) / rate if rate else 0.0)
    if len(x) == 0:
        return replace(e, status="rejected:empty")
    peak = float(np.max(np.abs(x)))
    e.peak_dbfs = float(20 * np.log10(peak + 1e-20))
    e.level_dbfs = active_level_db(x, rate)
    frames = _frame_power_db(x, rate)
    e.snr_est_db = float(np.percentile(frames, 95) - np.percentile(frames, 10))
    e.clip_frac = float(np.mean(np.abs(x) >= 0.999)) if peak >= 0.999 else 0.0
    if entry.kind == "rir":
        return e
    e.bandwidth_hz = bandwidth_estimate(x, rate)
    return judge(e)


def judge(e: Entry) -> Entry:
    """Status from an entry's statistics (re-run on every build, so thresholds can
    change without decoding the audio again); DNSMOS floors are applied later."""
    if e.kind == "rir" or e.status.startswith("rejected:unreadable") or e.rate == 0:
        return e
    if e.kind == "noise":
        if e.duration < MIN_NOISE_SECONDS:
            return replace(e, status="rejected:short")
        if e.level_dbfs < -70.0:
            return replace(e, status="rejected:silent")
        return replace(e, status="ok")
    if e.duration < MIN_SPEECH_SECONDS:
        return replace(e, status="rejected:short")
    if e.level_dbfs < MIN_ACTIVE_LEVEL_DBFS:
        return replace(e, status="rejected:silent")
    if e.clip_frac > MAX_CLIP_FRACTION:
        return replace(e, status="rejected:clipped")
    if e.snr_est_db < MIN_SNR_EST_DB:
        return replace(e, status="rejected:noisy")
    return replace(e, status="ok")


# ---------------------------------------------------------------- splits


def _hash01(*parts: str) -> float:
    h = hashlib.sha1("\x1f".join(parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_splits(entries: list[Entry], salt: str = "percepnet-v1") -> None:
    """Give every entry a split, disjoint by (source, speaker group).

    Per source and kind, groups are ordered by a hash of their name and taken into
    test, then dev, until each holds SPLIT_FRACTIONS of the source's duration; the
    rest is train. Deterministic and independent of file order. Measured RIRs go to
    dev/test only (synthetic rooms train). A source with `forced_split` goes whole.
    """
    by_source: dict[tuple[str, str], dict[str, float]] = {}
    for e in entries:
        if e.forced_split:
            e.split = e.forced_split
            continue
        g = by_source.setdefault((e.kind, e.source), {})
        g[e.speaker] = g.get(e.speaker, 0.0) + max(e.duration, 1e-3)
    assignment: dict[tuple[str, str, str], str] = {}
    for (kind, source), groups in by_source.items():
        order = sorted(groups, key=lambda s: _hash01(salt, kind, source, s))
        total = sum(groups.values())
        if kind == "rir":
            fractions = [("dev", 0.5), ("test", 0.5)]
        else:
            fractions = [("test", SPLIT_FRACTIONS["test"]), ("dev", SPLIT_FRACTIONS["dev"])]
        done = 0.0
        for s in order:
            split = "train"
            edge = 0.0
            for name, frac in fractions:
                edge += frac
                if done / total < edge - 1e-12:
                    split = name
                    break
            if kind == "rir" and split == "train":
                split = "test"
            assignment[(kind, source, s)] = split
            done += groups[s]
    for e in entries:
        if not e.forced_split:
            e.split = assignment[(e.kind, e.source, e.speaker)]


# ---------------------------------------------------------------- DNSMOS


DNSMOS_ROOTS = ("debian",)
"""Roots whose speech is DNSMOS-screened: the volunteer/game recordings of uneven
quality. The shared corpora are curated clean speech; scoring them too would
double the cost (~0.4 s per 9 s window on this machine)."""
DNSMOS_EXEMPT_SOURCES = tuple(f"asterisk_{lang}" for lang in ASTERISK_LANGS)
"""Professional studio prompts: curated like the shared corpora, and 2.2 h of them
would add half again to the DNSMOS pass."""


def score_dnsmos(
    entries: list[Entry],
    cfg: DataConfig,
    log: Log = print,
    window_s: float = 9.01,
    roots: Sequence[str] = DNSMOS_ROOTS,
    budget_s: float | None = None,
) -> None:
    """DNSMOS P.835 per pack of clips of one speaker group, cached in the entries.

    DNSMOS costs ~0.4 s per 9 s window here whatever the clip length (short clips
    are tiled to 9 s), so clips of one (source, speaker) are concatenated, each
    normalised to -26 dBFS active level with 0.2 s gaps, into ~9 s windows; each
    clip gets its window's score. Entries that already carry a score are skipped, so
    a run stopped by budget_s (seconds) is continued by the next one.
    """
    import time

    t0 = time.monotonic()
    from percepnet.metrics import METRIC_RATE, dnsmos

    todo: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        if (
            e.kind == "speech"
            and e.status == "ok"
            and e.root in roots
            and e.source not in DNSMOS_EXEMPT_SOURCES
            and math.isnan(e.dnsmos_ovrl)
        ):
            todo.setdefault((e.source, e.speaker), []).append(e)
    n_windows = 0
    gap = np.zeros(int(0.2 * METRIC_RATE))
    total = sum(len(v) for v in todo.values())
    done = 0
    for items in todo.values():
        if budget_s is not None and time.monotonic() - t0 > budget_s:
            log(f"dnsmos: time budget spent; {total - done} clips left for the next run")
            break
        items.sort(key=lambda e: e.path)
        pack: list[FloatArray] = []
        members: list[Entry] = []
        length = 0

        def flush() -> None:
            nonlocal pack, members, length, n_windows
            if not members:
                return
            mos = dnsmos(np.concatenate(pack), METRIC_RATE)
            for m in members:
                m.dnsmos_sig, m.dnsmos_bak, m.dnsmos_ovrl = mos["SIG"], mos["BAK"], mos["OVRL"]
            n_windows += 1
            pack, members, length = [], [], 0

        for e in items:
            x, rate = read_mono(cfg.root(e.root) / e.path)
            x16 = np.asarray(soxr.resample(x, rate, METRIC_RATE)) if rate != METRIC_RATE else x
            x16 = x16 * 10 ** ((-26.0 - active_level_db(x16, METRIC_RATE)) / 20)
            x16 = np.clip(x16, -1.0, 1.0)
            pack += [x16, gap]
            members.append(e)
            length += len(x16) + len(gap)
            if length >= window_s * METRIC_RATE:
                flush()
            done += 1
            if done % 500 == 0:
                log(f"  dnsmos: {done}/{total} clips, {n_windows} windows")
        flush()
    log(f"dnsmos: scored {total} clips in {n_windows} windows")


def apply_dnsmos_filter(entries: Iterable[Entry]) -> None:
    for e in entries:
        if e.kind != "speech" or e.status != "ok" or math.isnan(e.dnsmos_sig):
            continue
        if e.dnsmos_sig < MIN_DNSMOS_SIG:
            e.status = "rejected:dnsmos_sig"
        elif e.dnsmos_bak < MIN_DNSMOS_BAK:
            e.status = "rejected:dnsmos_bak"


# ---------------------------------------------------------------- manifest


def write_manifest(entries: Sequence[Entry], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        for e in entries:
            row = asdict(e)
            for k, v in row.items():
                if isinstance(v, float):
                    row[k] = "" if math.isnan(v) else f"{v:.6g}"
            w.writerow(row)
    tmp.replace(path)


def load_manifest(path: Path) -> list[Entry]:
    types = {f.name: f.type for f in fields(Entry)}
    out = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            kw: dict[str, object] = {}
            for k, v in row.items():
                t = types[k]
                if t == "int":
                    kw[k] = int(v or 0)
                elif t == "float":
                    kw[k] = float(v) if v != "" else math.nan
                else:
                    kw[k] = v
            out.append(Entry(**kw))  # type: ignore[arg-type]
    return out


def build_manifest(
    cfg: DataConfig,
    *,
    fetch: bool = True,
    use_dnsmos: bool = True,
    dnsmos_budget_s: float | None = None,
    log: Log = print,
) -> list[Entry]:
    """Enumerate, screen, split and (optionally) DNSMOS-score everything; write the manifest.

    Statistics and DNSMOS scores of files already in an existing manifest are reused.
    """
    if not cfg.data.exists():
        raise FileNotFoundError(
            f"data folder {cfg.data} not found: pass --data or set PERCEPNET_DATA"
        )
    if fetch:
        fetch_debian(cfg, log=log)
    entries = enumerate_shared(cfg.data)
    xroot = cfg.root("debian")
    if xroot.exists():
        entries += enumerate_debian(xroot)
    old: dict[tuple[str, str], Entry] = {}
    if cfg.manifest.exists():
        old = {(e.root, e.path): e for e in load_manifest(cfg.manifest)}
    screened: list[Entry | None] = [None] * len(entries)
    todo: list[tuple[int, Entry]] = []
    for i, e in enumerate(entries):
        prev = old.get((e.root, e.path))
        if prev is not None and prev.rate > 0:
            screened[i] = judge(
                replace(
                    prev,
                    kind=e.kind,
                    source=e.source,
                    speaker=e.speaker,
                    forced_split=e.forced_split,
                )
            )
        else:
            todo.append((i, e))
    if todo:
        log(f"  screening {len(todo)} new files ({len(entries) - len(todo)} known)")
    # Decoding dominates: one process per core.
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(os.cpu_count() or 1, 8))
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(screen, [e for _, e in todo], [cfg] * len(todo), chunksize=32)
        for n, ((i, _), e) in enumerate(zip(todo, results, strict=True)):
            screened[i] = e
            if (n + 1) % 1000 == 0:
                log(f"  screened {n + 1}/{len(todo)}")
    done = [e for e in screened if e is not None]
    assign_splits(done)
    if use_dnsmos:
        write_manifest(done, cfg.manifest)  # the screening survives a stopped DNSMOS pass
        score_dnsmos(done, cfg, log=log, budget_s=dnsmos_budget_s)
        apply_dnsmos_filter(done)
    write_manifest(done, cfg.manifest)
    log(f"manifest: {cfg.manifest} ({len(done)} files)")
    return done


def corpus_report(entries: Sequence[Entry]) -> str:
    """Hours per split per source for accepted files, and rejection counts by reason."""
    lines = [
        "| kind | source | train h | dev h | test h | rejected |",
        "|---|---|---:|---:|---:|---:|",
    ]
    keys = sorted({(e.kind, e.source) for e in entries})
    for kind, source in keys:
        rows = [e for e in entries if e.kind == kind and e.source == source]
        hours = {
            s: sum(e.duration for e in rows if e.split == s and e.status == "ok") / 3600
            for s in SPLITS
        }
        rej = sum(1 for e in rows if e.status != "ok")
        h = " | ".join(f"{hours[s]:.2f}" for s in SPLITS)
        lines.append(f"| {kind} | {source} | {h} | {rej} |")
    reasons: dict[str, int] = {}
    for e in entries:
        if e.status != "ok":
            key = f"{e.kind}:{e.status.split('(')[0]}"
            reasons[key] = reasons.get(key, 0) + 1
    lines.append("")
    lines.append("rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- packs


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
        return np.asarray(self.samples[o : o + n], dtype=np.float64) / 32768.0, int(self.rates[i])

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
        q = np.round(x * (10 ** (-1 / 20) / peak) * 32767).astype(np.int16)
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


def eprint(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
