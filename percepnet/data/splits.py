"""Disjoint train/dev/test splits by group (speaker or pack), stable under re-runs."""

from __future__ import annotations

import hashlib

from percepnet.data.inventory import Entry

SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = {"test": 0.1, "dev": 0.1}
"""Share of each source's hours (by group) held out; the rest is train."""


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
