"""Enumeration: every candidate file of the shared folder and the unpacked packages, as
an Entry (a manifest row)."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

from percepnet.data.sources import ASTERISK_LANGS, ASTERISK_SKIP, AUDIO_EXTENSIONS


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
            if ASTERISK_SKIP.search(inner) or ASTERISK_SKIP.search(p.stem):
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
    for p in _audio_files(xroot / "openttd-opensfx" / "opensfx"):
        # Two minutes in all, and the only recorded vehicles and machines: all train.
        out.append(
            Entry(
                "noise",
                "debian",
                str(p.relative_to(xroot)),
                "opensfx",
                p.stem,
                forced_split="train",
            )
        )
    return out
