"""The corpus: sources, Debian fetch, screening, disjoint splits, manifest and packs.

One module per job (paths, sources, fetch, inventory, screening, splits, dnsmos,
manifest, packs); this module gathers their public names, which callers import from
here.

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

from percepnet.data.dnsmos import (
    DNSMOS_EXEMPT_SOURCES,
    DNSMOS_ROOTS,
    apply_dnsmos_filter,
    score_dnsmos,
)
from percepnet.data.fetch import G722_RATE, decode_g722, fetch_debian
from percepnet.data.inventory import MANIFEST_FIELDS, Entry, enumerate_debian, enumerate_shared
from percepnet.data.manifest import (
    build_manifest,
    corpus_report,
    eprint,
    load_manifest,
    write_manifest,
)
from percepnet.data.packs import Pack, build_pack, build_packs, load_pack, pack_paths
from percepnet.data.paths import DataConfig, FloatArray, Log, cache_root, data_root, repo_root
from percepnet.data.screening import (
    FRAME_S,
    MAX_CLIP_FRACTION,
    MIN_ACTIVE_LEVEL_DBFS,
    MIN_DNSMOS_BAK,
    MIN_DNSMOS_SIG,
    MIN_NOISE_SECONDS,
    MIN_SNR_EST_DB,
    MIN_SPEECH_SECONDS,
    active_level_db,
    bandwidth_estimate,
    judge,
    read_mono,
    screen,
)
from percepnet.data.sources import (
    ASTERISK_LANGS,
    AUDIO_EXTENSIONS,
    DEBIAN_PACKAGES,
    SOURCE_LICENCES,
)
from percepnet.data.splits import SPLIT_FRACTIONS, SPLITS, assign_splits

__all__ = [
    "ASTERISK_LANGS",
    "AUDIO_EXTENSIONS",
    "DEBIAN_PACKAGES",
    "DNSMOS_EXEMPT_SOURCES",
    "DNSMOS_ROOTS",
    "FRAME_S",
    "G722_RATE",
    "MANIFEST_FIELDS",
    "MAX_CLIP_FRACTION",
    "MIN_ACTIVE_LEVEL_DBFS",
    "MIN_DNSMOS_BAK",
    "MIN_DNSMOS_SIG",
    "MIN_NOISE_SECONDS",
    "MIN_SNR_EST_DB",
    "MIN_SPEECH_SECONDS",
    "SOURCE_LICENCES",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "DataConfig",
    "Entry",
    "FloatArray",
    "Log",
    "Pack",
    "active_level_db",
    "apply_dnsmos_filter",
    "assign_splits",
    "bandwidth_estimate",
    "build_manifest",
    "build_pack",
    "build_packs",
    "cache_root",
    "corpus_report",
    "data_root",
    "decode_g722",
    "enumerate_debian",
    "enumerate_shared",
    "eprint",
    "fetch_debian",
    "judge",
    "load_manifest",
    "load_pack",
    "pack_paths",
    "read_mono",
    "repo_root",
    "score_dnsmos",
    "screen",
    "write_manifest",
]
