"""Does DNSMOS reward a louder output? Each system's output on the calls benchmark's
items is scored as it is and raised by 3 and 6 dB, next to how much of the speech comes
through (the projection gain of the output onto the clean reference).

    python -m bench.dnsmos_level [--split dev] [--n 24] [--model models/percepnet-int8.onnx]

Findings: results/dnsmos_level_dev.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.calls import build_items, systems
from bench.common import REPO
from percepnet.audio import resample
from percepnet.constants import SAMPLE_RATE
from percepnet.data.corpus import DataConfig
from percepnet.data.paths import cache_root, data_root
from percepnet.metrics import dnsmos

RAISES_DB = (0.0, 3.0, 6.0)


def speech_level_db(est: np.ndarray, clean: np.ndarray) -> float:
    """20 log10 of the least-squares gain of the clean reference within the output."""
    k = min(len(est), len(clean))
    alpha = float(np.dot(est[:k], clean[:k]) / (np.dot(clean[:k], clean[:k]) + 1e-20))
    return 20 * float(np.log10(max(alpha, 1e-6)))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="dev", choices=("dev", "test"))
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "percepnet-int8.onnx")
    args = ap.parse_args(argv)
    items = build_items(args.split, args.n, DataConfig(data_root(), cache_root()))
    runs = systems([args.model], dfn=False, oracle=True)
    runs = {"noisy": lambda y, _x: y, **runs}
    rows: dict[str, list[list[float]]] = {name: [] for name in runs}
    for it in items:
        y48 = resample(it.noisy, it.rate, SAMPLE_RATE)
        x48 = resample(it.clean, it.rate, SAMPLE_RATE)
        metric_rate = 8000 if it.rate == 8000 else 16000
        clean = resample(it.clean, it.rate, metric_rate)
        for name, system in runs.items():
            out = resample(np.asarray(system(y48, x48), np.float64), SAMPLE_RATE, metric_rate)
            out = out[: len(clean)]
            row = [speech_level_db(out, clean)]
            for i, db in enumerate(RAISES_DB):
                mos = dnsmos(out * 10 ** (db / 20), metric_rate)
                row.append(mos["OVRL"])
                if i == 0:
                    row += [mos["SIG"], mos["BAK"]]
            rows[name].append(row)
    print(f"{args.split} split, {len(items)} items (means)\n")
    head = ["system", "speech level dB", "OVRL +0", "SIG +0", "BAK +0"]
    head += [f"OVRL +{db:g} dB" for db in RAISES_DB[1:]]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for name, rs in rows.items():
        m = np.mean(np.array(rs), axis=0)
        print(f"| {name} | {m[0]:.1f} | " + " | ".join(f"{v:.2f}" for v in m[1:]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
