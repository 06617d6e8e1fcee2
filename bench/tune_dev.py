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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.calls import ExponentSource  # noqa: E402
from bench.quality import System, eval_set, evaluate, noisy_input, rnnoise  # noqa: E402
from percepnet.enhancer import enhance_signal  # noqa: E402
from percepnet.runtime import OnnxModel, OnnxSource, load_model  # noqa: E402


def variants(model: OnnxModel, gammas: list[float]) -> dict[str, System]:
    out: dict[str, System] = {
        "noisy": noisy_input,
        "rnnoise": rnnoise,
        "no-postfilter": lambda x, _c: enhance_signal(x, OnnxSource(model), use_postfilter=False),
    }
    for gamma in gammas:
        out[f"postfilter, gamma {gamma:g}"] = lambda x, _c, gm=gamma: enhance_signal(
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
    evaluate(items, root, runs, "dev split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
