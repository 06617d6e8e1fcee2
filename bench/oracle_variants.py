"""Which trade between speech and background can band gains reach? Ideal (oracle) gains,
and the shipped model's, through the DSP with one thing changed at a time, on the calls
benchmark's items, next to noisy and RNNoise in the same run.

Variants, each applied to the oracle's (g, r) and, with --model, to a model's:
- `g^P`: every band gain raised to P (P > 1 suppresses deeper everywhere);
- `r x0`: no comb filtering;
- `no postfilter`: the envelope postfilter off;
- `release D`: gains fall by at most a factor D per frame (held over speech decays);
- `gate T`: frames whose mean gain over the 200-4000 Hz bands (the enhancer's voice
  activity) is below T have all their gains scaled by (activity / T): deeper suppression
  in speech pauses only, speech frames untouched.

    python -m bench.oracle_variants [--split dev] [--n 24] [--jobs 2] [--model M.onnx]

Findings: results/oracle_variants_dev.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.calls import (
    ExponentSource,
    Item,
    MappedSource,
    StrengthSource,
    build_items,
    report,
    score_item,
)
from bench.common import System, peers
from percepnet.data.corpus import DataConfig
from percepnet.enhancer import VAD_WEIGHTS, GainSource, OracleSource, enhance_signal
from percepnet.gains import release_gains
from percepnet.runtime import OnnxSource, load_model

FloatArray = np.ndarray
Wrap = Callable[[GainSource], GainSource]


class GateSource(MappedSource):
    """A frame's gains scaled by (voice activity / threshold) where activity < threshold."""

    def __init__(self, inner: GainSource, threshold: float) -> None:
        super().__init__(inner)
        self.threshold = threshold

    def map(self, g: FloatArray, r: FloatArray | None) -> tuple[FloatArray, FloatArray | None]:
        scale = np.clip((g @ VAD_WEIGHTS) / self.threshold, 0.0, 1.0)
        return g * scale[..., None], r


class ReleaseSource(MappedSource):
    """Gains held over decays (percepnet.gains.release_gains), carried across blocks."""

    def __init__(self, inner: GainSource, decay: float) -> None:
        super().__init__(inner)
        self.decay = decay
        self.last: FloatArray | None = None

    def reset(self) -> None:
        super().reset()
        self.last = None

    def map(self, g: FloatArray, r: FloatArray | None) -> tuple[FloatArray, FloatArray | None]:
        held = release_gains(g, self.decay, self.last)
        self.last = held[-1]
        return held, r


# name -> (wrapper of the gain source or None, postfilter on)
VARIANTS: dict[str, tuple[Wrap | None, bool]] = {
    "": (None, True),
    " g^1.5": (lambda s: ExponentSource(s, 1.5), True),
    " r x0": (lambda s: StrengthSource(s, 0.0), True),
    " no postfilter": (None, False),
    " gate 0.2": (lambda s: GateSource(s, 0.2), True),
    " gate 0.4": (lambda s: GateSource(s, 0.4), True),
    " no postfilter, gate 0.3": (lambda s: GateSource(s, 0.3), False),
    " release 0.6": (lambda s: ReleaseSource(s, 0.6), True),
    " release 0.8": (lambda s: ReleaseSource(s, 0.8), True),
}


def variant_systems(model: Path | None, names: Sequence[str]) -> dict[str, System]:
    out: dict[str, System] = peers(dfn=False)
    bases: list[tuple[str, Callable[[FloatArray], GainSource]]] = [("oracle", OracleSource)]
    if model is not None:
        loaded = load_model(model)
        bases.append(("model", lambda _x: OnnxSource(loaded)))
    for base, make in bases:
        for name in names:
            wrap, postfilter = VARIANTS[name]

            def run(
                y: FloatArray,
                x: FloatArray,
                make: Callable[[FloatArray], GainSource] = make,
                wrap: Wrap | None = wrap,
                postfilter: bool = postfilter,
            ) -> FloatArray:
                source = make(x) if wrap is None else wrap(make(x))
                return np.asarray(enhance_signal(y, source, use_postfilter=postfilter), np.float64)

            out[base + name] = run
    return out


_RUNS: dict[str, System] = {}


def _init(model: Path | None, names: Sequence[str]) -> None:
    _RUNS.update(variant_systems(model, names))


def _item(it: Item) -> list[dict[str, Any]]:
    return score_item(it, _RUNS)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--split", choices=("dev", "test"), default="dev", help="(default dev)")
    p.add_argument("--n", type=int, default=24, help="items (default 24)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="also run the variants on this ONNX model (default: the oracle only)",
    )
    p.add_argument(
        "--variants",
        nargs="*",
        default=[v.strip() or "plain" for v in VARIANTS],
        help="which variants (default: all)",
    )
    p.add_argument("--data", default=None, help="shared data folder (default ../shared/data)")
    p.add_argument("--cache", default=None, help="corpus cache (default: cache/)")
    p.add_argument("--md", default=None, help="write the report as markdown here (default: none)")
    args = p.parse_args(argv)
    known = {v.strip() or "plain": v for v in VARIANTS}
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {sorted(known)}")
    names = [known[v] for v in args.variants]
    items = build_items(args.split, args.n, DataConfig.from_args(args.data, args.cache))
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.jobs, initializer=_init, initargs=(args.model, names)) as ex:
        for i, part in enumerate(ex.map(_item, items)):
            rows += part
            print(f"[{i + 1}/{len(items)}] {time.monotonic() - t0:.0f} s", file=sys.stderr)
    title = (
        f"Oracle and model variants, {args.split} split, {len(items)} items "
        f"({time.monotonic() - t0:.0f} s)"
    )
    text = report(rows, title)
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
