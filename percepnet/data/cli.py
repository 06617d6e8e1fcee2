"""`percepnet data`: fetch, screen, split, pack and write evaluation sets.

    percepnet data prepare [--no-fetch] [--no-dnsmos]   everything below, in order
    percepnet data fetch                                 Debian packages into the cache
    percepnet data manifest [--no-fetch] [--no-dnsmos]   screen + split -> manifest.csv
    percepnet data packs                                 int16 packs + RIR banks
    percepnet data report                                hours per split and source
    percepnet data eval-set --split dev --n 200 --out DIR [--seed 0] [--seconds 6]
    percepnet data bench [--n 200]                       mixtures per second

Global options --data (shared folder; else $PERCEPNET_DATA, else ../shared/data
beside the repository) and --cache (else $PERCEPNET_CACHE, else <repo>/cache).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from percepnet.data.corpus import (
    DataConfig,
    build_manifest,
    build_packs,
    corpus_report,
    eprint,
    fetch_debian,
    load_manifest,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="percepnet data", description=__doc__.splitlines()[0])
    p.add_argument("--data", help="shared data folder (default: $PERCEPNET_DATA or ../shared/data)")
    p.add_argument("--cache", help="cache folder (default: $PERCEPNET_CACHE or <repo>/cache)")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("prepare", "manifest"):
        s = sub.add_parser(name)
        s.add_argument("--no-fetch", action="store_true", help="use only what is cached")
        s.add_argument("--no-dnsmos", action="store_true", help="skip the DNSMOS screen")
        s.add_argument(
            "--dnsmos-budget",
            type=float,
            default=None,
            metavar="S",
            help="stop DNSMOS scoring after S seconds (scores are cached; rerun to continue)",
        )
    sub.add_parser("fetch")
    sub.add_parser("packs")
    sub.add_parser("report")
    e = sub.add_parser("eval-set")
    e.add_argument("--split", choices=("dev", "test"), required=True)
    e.add_argument("--n", type=int, default=200)
    e.add_argument("--out", required=True)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--seconds", type=float, default=6.0)
    b = sub.add_parser("bench")
    b.add_argument("--n", type=int, default=200)
    b.add_argument("--split", default="train")
    return p


def _packs(cfg: DataConfig) -> None:
    from percepnet.data.rooms import measured_bank, synthetic_bank

    entries = load_manifest(cfg.manifest)
    build_packs(cfg, entries, log=eprint)
    synthetic_bank(cfg, log=eprint)
    for split in ("dev", "test"):
        measured_bank(cfg, entries, split)


def main_data(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = DataConfig.from_args(args.data, args.cache)
    try:
        if args.cmd == "fetch":
            have = fetch_debian(cfg, log=eprint)
            eprint(f"available: {', '.join(have) or 'none'}")
        elif args.cmd in ("manifest", "prepare"):
            entries = build_manifest(
                cfg,
                fetch=not args.no_fetch,
                use_dnsmos=not args.no_dnsmos,
                dnsmos_budget_s=args.dnsmos_budget,
                log=eprint,
            )
            print(corpus_report(entries))
            if args.cmd == "prepare":
                _packs(cfg)
        elif args.cmd == "packs":
            _packs(cfg)
        elif args.cmd == "report":
            print(corpus_report(load_manifest(cfg.manifest)))
        elif args.cmd == "eval-set":
            from percepnet.data.mix import MixConfig, write_eval_set

            path = write_eval_set(
                args.split, args.n, args.out, args.seed, cfg, MixConfig(segment_s=args.seconds)
            )
            eprint(f"wrote {args.n} pairs, index {path}")
        elif args.cmd == "bench":
            from percepnet.data.mix import MixtureGenerator

            gen = MixtureGenerator(cfg, args.split, seed=0)
            gen.generate(0)
            t = time.perf_counter()
            for i in range(1, args.n + 1):
                gen.generate(i)
            dt = time.perf_counter() - t
            seg = gen.config.segment_s
            print(
                f"{args.n / dt:.1f} mixtures/s of {seg:g} s "
                f"({args.n * seg / dt:.0f}x real time, one process)"
            )
    except FileNotFoundError as exc:
        eprint(f"percepnet data: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main_data())
