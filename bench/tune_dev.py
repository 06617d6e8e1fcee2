"""Inference settings of the network, compared on the dev split (never on test).

Variants: the postfilter on or off, and a suppression exponent applied to the
network's band gains (g -> g ** gamma; gamma > 1 removes more noise, < 1 keeps more).

    python bench/tune_dev.py [--n 20] [--models models] [--gammas 1 1.25 1.5]

Prints median and mean tables of PESQ-WB, STOI, SI-SDR and DNSMOS per variant, next to
noisy and RNNoise, all in this one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.quality import eval_set  # noqa: E402
from percepnet.analysis import Frames  # noqa: E402
from percepnet.audio import load  # noqa: E402
from percepnet.enhancer import GainPair, GainSource, enhance_signal  # noqa: E402
from percepnet.metrics import RNNoiseReference, markdown_table, score, summarise  # noqa: E402
from percepnet.runtime import OnnxModel, OnnxSource, load_model  # noqa: E402


class ExponentSource:
    """g ** gamma on top of another source's gains; strengths unchanged."""

    def __init__(self, inner: GainSource, gamma: float) -> None:
        self.inner, self.gamma = inner, gamma

    def reset(self) -> None:
        self.inner.reset()

    def __call__(self, frames: Frames) -> GainPair:
        g, r = self.inner(frames)
        return np.power(g, self.gamma), r


def variants(
    model: OnnxModel, gammas: list[float]
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    def rnnoise(noisy: np.ndarray) -> np.ndarray:
        with RNNoiseReference() as rn:
            return rn.enhance(noisy)

    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "noisy": lambda x: x,
        "rnnoise": rnnoise,
        "no-postfilter": lambda x: enhance_signal(x, OnnxSource(model), use_postfilter=False),
    }
    for gamma in gammas:
        out[f"postfilter, gamma {gamma:g}"] = lambda x, gm=gamma: enhance_signal(
            x, ExponentSource(OnnxSource(model), gm)
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--eval-dir", default=str(REPO / "cache" / "eval"))
    parser.add_argument("--models", default=str(REPO / "models"))
    parser.add_argument("--gammas", type=float, nargs="+", default=[1.0, 1.25, 1.5])
    args = parser.parse_args()
    root = Path(args.eval_dir)
    items = eval_set("dev", args.n, root)
    runs = variants(load_model(Path(args.models) / "percepnet.onnx"), args.gammas)
    rows: list[dict[str, float | str]] = []
    t0 = time.monotonic()
    for i, item in enumerate(items):
        clean, noisy = load(root / item["clean"]), load(root / item["noisy"])
        for name, run in runs.items():
            rows.append({"system": name, "id": item["id"], **score(clean, run(noisy))})
        print(f"[{i + 1}/{len(items)}] {item['id']}", file=sys.stderr, flush=True)
    summary = summarise(rows)
    print(f"dev split, {len(items)} mixtures, {time.monotonic() - t0:.0f} s\n")
    print("median:\n" + markdown_table(summary))
    print("mean:\n" + markdown_table(summary, stat="mean"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
