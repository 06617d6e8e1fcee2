"""DNSMOS screening of the speech candidates (a finer screen than the SNR estimate)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import soxr

from percepnet.data.inventory import Entry
from percepnet.data.paths import DataConfig, Log
from percepnet.data.screening import (
    MIN_DNSMOS_BAK,
    MIN_DNSMOS_SIG,
    FloatArray,
    active_level_db,
    read_mono,
)
from percepnet.data.sources import ASTERISK_LANGS

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
