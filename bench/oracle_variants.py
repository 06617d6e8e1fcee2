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

from bench.calls import Item, MappedSource, build_items, report, score_item
from bench.common import System, peers
from percepnet.data.corpus import DataConfig
from percepnet.enhancer import VAD_WEIGHTS, GainSource, OracleSource, enhance_signal
from percepnet.runtime import OnnxSource, load_model

FloatArray = np.ndarray
GainMap = Callable[[FloatArray, FloatArray | None], tuple[FloatArray, FloatArray | None]]


def power(p: float) -> GainMap:
    return lambda g, r: (np.power(g, p), r)


def no_comb(g: FloatArray, r: FloatArray | None) -> tuple[FloatArray, FloatArray | None]:
    return g, None if r is None else np.zeros_like(r)


def gate(threshold: float) -> GainMap:
    """Scale a frame's gains by (voice activity / threshold) where activity < threshold."""

    def f(g: FloatArray, r: FloatArray | None) -> tuple[FloatArray, FloatArray | None]:
        activity = np.asarray(g) @ VAD_WEIGHTS
        scale = np.clip(activity / threshold, 0.0, 1.0)
        return np.asarray(g) * scale[..., None], r

    return f


class Release:
    """g_t = max(g_t, decay * g_(t-1)) per band: the gains fall no faster than `decay` per
    10 ms frame (smoother residual noise, longer speech tails); state across blocks."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.last: FloatArray | None = None

    def reset(self) -> None:
        self.last = None

    def __call__(self, g: FloatArray, r: FloatArray | None) -> tuple[FloatArray, FloatArray | None]:
        out = np.array(g, dtype=np.float64)
        prev = self.last
        for t in range(len(out)):
            if prev is not None:
                out[t] = np.maximum(out[t], self.decay * prev)
            prev = out[t]
        self.last = prev
        return out, r


class FuncSource(MappedSource):
    def __init__(self, inner: Any, fn: GainMap) -> None:
        super().__init__(inner)
        self.fn = fn

    def reset(self) -> None:
        super().reset()
        if isinstance(self.fn, Release):
            self.fn.reset()

    def map(self, g: FloatArray, r: FloatArray | None) -> tuple[FloatArray, FloatArray | None]:
        return self.fn(g, r)


# name -> (gain map or None, postfilter on)
VARIANTS: dict[str, tuple[GainMap | None, bool]] = {
    "": (None, True),
    " g^1.5": (power(1.5), True),
    " r x0": (no_comb, True),
    " no postfilter": (None, False),
    " gate 0.2": (gate(0.2), True),
    " gate 0.4": (gate(0.4), True),
    " no postfilter, gate 0.3": (gate(0.3), False),
    " release 0.6": (Release(0.6), True),
    " release 0.8": (Release(0.8), True),
}


def variant_systems(model: Path | None, names: Sequence[str]) -> dict[str, System]:
    out: dict[str, System] = peers(dfn=False)
    loaded = None if model is None else load_model(model)
    bases: list[tuple[str, Callable[[FloatArray], GainSource]]] = []
    bases.append(("oracle", lambda x: OracleSource(x)))
    if loaded is not None:
        bases.append(("model", lambda _x: OnnxSource(loaded)))
    for base, make in bases:
        for name in names:
            fn, postfilter = VARIANTS[name]

            def run(
                y: FloatArray,
                x: FloatArray,
                make: Callable[[FloatArray], GainSource] = make,
                fn: GainMap | None = fn,
                postfilter: bool = postfilter,
            ) -> FloatArray:
                src = make(x)
                source = src if fn is None else FuncSource(src, fn)
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
