"""Quality table on the training recipe's held-out mixtures: noisy, RNNoise, oracle,
float model, int8 model (bench.calls is the call-like benchmark; this one is the recipe's).

Every system goes through the same path (48 kHz, aligned, percepnet.metrics.score)
in one run. The test split is scored only for final reports; select and tune on dev:

    python -m bench.quality --split test --n 30 [--models models] [--out results.json]
    python -m bench.quality --split dev --n 20 --extra int8-no-postfilter --gammas 1.25 1.5

--gammas adds the int8 model with a suppression exponent on its band gains (g -> g ** gamma;
gamma > 1 removes more noise); --extra adds the variants without the postfilter.
The eval set is written once to cache/eval (percepnet.data.mix.write_eval_set).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.calls import ExponentSource
from bench.common import REPO, System, peers
from percepnet.audio import load
from percepnet.enhancer import GainSource, OracleSource, enhance_signal
from percepnet.metrics import markdown_table, score, summarise
from percepnet.runtime import OnnxSource, load_model

FloatArray = npt.NDArray[np.float64]

SEED = {"dev": 101, "test": 202}


def eval_set(split: str, n: int, root: Path) -> list[dict[str, str]]:
    csv_path = root / f"{split}.csv"
    rows: list[dict[str, str]] = []
    if csv_path.exists():
        with csv_path.open() as fh:
            rows = list(csv.DictReader(fh))
    if len(rows) < n:
        from percepnet.data.mix import write_eval_set

        print(f"writing {n} {split} mixtures to {root}", file=sys.stderr)
        write_eval_set(split, n, root, SEED[split])
        with csv_path.open() as fh:
            rows = list(csv.DictReader(fh))
    return rows[:n]


def systems(models: Path, extra: list[str], gammas: list[float]) -> dict[str, System]:
    f32, i8 = load_model(models / "percepnet.onnx"), load_model(models / "percepnet-int8.onnx")

    def run(source: Callable[[FloatArray], GainSource], postfilter: bool = True) -> System:
        def system(noisy: FloatArray, clean: FloatArray) -> FloatArray:
            out = enhance_signal(noisy, source(clean), use_postfilter=postfilter)
            return np.asarray(out, np.float64)

        return system

    out: dict[str, System] = {
        **peers(),
        "oracle": run(OracleSource),
        "percepnet-float": run(lambda _clean: OnnxSource(f32)),
        "percepnet-int8": run(lambda _clean: OnnxSource(i8)),
    }
    if "int8-no-postfilter" in extra:
        out["int8-no-postfilter"] = run(lambda _clean: OnnxSource(i8), postfilter=False)
    if "oracle-no-postfilter" in extra:
        out["oracle-no-postfilter"] = run(OracleSource, postfilter=False)
    for gamma in gammas:

        def exponent(_clean: FloatArray, gm: float = gamma) -> GainSource:
            return ExponentSource(OnnxSource(i8), gm)

        out[f"percepnet-int8 g^{gamma:g}"] = run(exponent)
    return out


def evaluate(
    items: list[dict[str, str]], root: Path, runs: dict[str, System], title: str
) -> list[dict[str, float | str]]:
    """Score every system on every mixture (one row each); print median and mean tables."""
    rows: list[dict[str, float | str]] = []
    t0 = time.monotonic()
    for i, item in enumerate(items):
        clean, noisy = load(root / item["clean"]), load(root / item["noisy"])
        for name, run in runs.items():
            rows.append(
                {
                    "system": name,
                    "id": item["id"],
                    "snr_db": item.get("snr_db", ""),
                    **score(clean, run(noisy, clean)),
                }
            )
        print(f"[{i + 1}/{len(items)}] {item['id']}", file=sys.stderr, flush=True)
    summary = summarise(rows)
    print(f"{title}, {len(items)} mixtures, {time.monotonic() - t0:.0f} s\n")
    print("median:\n" + markdown_table(summary))
    print("mean:\n" + markdown_table(summary, stat="mean"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=["dev", "test"], default="test")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--eval-dir", default=str(REPO / "cache" / "eval"))
    parser.add_argument("--models", default=str(REPO / "models"))
    parser.add_argument(
        "--extra", nargs="*", default=[], help="int8-no-postfilter oracle-no-postfilter"
    )
    parser.add_argument(
        "--gammas", type=float, nargs="*", default=[], help="suppression exponents (int8 model)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    root = Path(args.eval_dir)
    rows_in = eval_set(args.split, args.n, root)
    runs = systems(Path(args.models), args.extra, args.gammas)
    rows = evaluate(rows_in, root, runs, f"{args.split} split")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
