"""The manifest: build it (fetch, enumerate, screen, split, score), write, read, report."""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path

from percepnet.data.dnsmos import apply_dnsmos_filter, score_dnsmos
from percepnet.data.fetch import fetch_debian
from percepnet.data.inventory import MANIFEST_FIELDS, Entry, enumerate_debian, enumerate_shared
from percepnet.data.paths import DataConfig, Log
from percepnet.data.screening import judge, screen
from percepnet.data.splits import SPLITS, assign_splits


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


def eprint(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
