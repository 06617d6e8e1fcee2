"""Where a model's gains and strengths differ from the oracle's, on the calls benchmark.

    python -m bench.diagnose [--split dev] [--n 45] [--models models/percepnet-int8.onnx ...]

For every item of bench/calls (at 48 kHz, as the service sees it) the model runs on the
runtime's features, and the oracle targets come from the clean reference through the
same analysis. Per band-frame it compares g (band gain) and r (comb strength):

- suppression: mean 20 log10 g where the oracle says the band is noise (oracle g < 0.3)
  and where it is speech (g >= 0.7), by input bandwidth, SNR and noise family;
- the gain deficit in dB (model - oracle, floored at -40 dB) in those noise band-frames;
- gains per band group (Hz), by input bandwidth: what the model puts above a
  narrowband input's bandwidth, where the input holds nothing;
- the strengths r against the oracle's in voiced speech bands.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.calls import build_items
from bench.common import REPO
from percepnet.audio import resample
from percepnet.bands import BAND_CENTRES
from percepnet.constants import BIN_HZ, NB_FEATURES, SAMPLE_RATE
from percepnet.data.corpus import DataConfig
from percepnet.features import compute_example
from percepnet.runtime import OnnxModel, load_model

FloatArray = npt.NDArray[np.float64]
FLOOR_DB = -40.0
NOISE_G, SPEECH_G = 0.3, 0.7
GROUPS_HZ = (0, 500, 1000, 2000, 4000, 8000, 12000, 24000)
SNR_BUCKETS = ((0, 5), (5, 10), (10, 15), (15, 25))


def model_gains(model: OnnxModel, features: FloatArray) -> tuple[FloatArray, FloatArray]:
    state = model.initial_state()
    gs, rs = [], []
    for row in features.astype(np.float32):
        g, r, state = model.step(row.reshape(1, NB_FEATURES), state)
        gs.append(g[0])
        rs.append(r[0])
    return np.asarray(gs, np.float64), np.asarray(rs, np.float64)


def db(g: FloatArray) -> FloatArray:
    return np.asarray(np.maximum(20 * np.log10(np.maximum(g, 1e-6)), FLOOR_DB))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=("dev", "test"), default="dev")
    p.add_argument("--n", type=int, default=45)
    p.add_argument("--models", nargs="*", default=[str(REPO / "models" / "percepnet-int8.onnx")])
    args = p.parse_args(argv)
    cfg = DataConfig.from_args(None, None)
    items = build_items(args.split, args.n, cfg)
    band_hz = BAND_CENTRES * BIN_HZ
    for path in args.models:
        model = load_model(Path(path))
        recs = []
        for it in items:
            y = resample(it.noisy, it.rate, SAMPLE_RATE)
            x = resample(it.clean, it.rate, SAMPLE_RATE)
            ex = compute_example(y, x)
            g_hat, r_hat = model_gains(model, ex.features)
            active = ex.E_y > 1e-9  # band-frames with any input at all
            recs.append((it, ex.gains, ex.strengths, g_hat, r_hat, active))
        print(f"# {path}: {len(items)} {args.split} items\n")
        print("## Suppression (mean dB over band-frames with input), by condition\n")
        print(
            "| condition | noise: oracle | noise: model | deficit dB "
            "| speech: oracle | speech: model |"
        )
        print("|---|---:|---:|---:|---:|---:|")

        def row(name: str, sel: list[tuple]) -> None:
            if not sel:
                return
            g = np.concatenate([s[1][s[5]] for s in sel])
            gh = np.concatenate([s[3][s[5]] for s in sel])
            noise, speech = g < NOISE_G, g >= SPEECH_G
            print(
                f"| {name} | {db(g[noise]).mean():.1f} | {db(gh[noise]).mean():.1f} | "
                f"{(db(gh[noise]) - db(g[noise])).mean():+.1f} | {db(g[speech]).mean():.1f} | "
                f"{db(gh[speech]).mean():.1f} |"
            )

        row("all", recs)
        for bw in ("8k", "16k", "full"):
            row(f"input {bw}", [s for s in recs if s[0].bandwidth == bw])
        for lo, hi in SNR_BUCKETS:
            row(f"SNR {lo}-{hi} dB", [s for s in recs if lo <= s[0].snr_db < hi])
        for fam in sorted({s[0].family for s in recs}):
            row(f"noise {fam}", [s for s in recs if s[0].family == fam])
        row("with room", [s for s in recs if s[0].room])
        row("dry", [s for s in recs if not s[0].room])

        print("\n## Mean gain dB per band group, by input bandwidth (oracle / model)\n")
        head = " | ".join(f"{a}-{b}" for a, b in itertools.pairwise(GROUPS_HZ))
        print(f"| input | {head} |")
        print("|---|" + "---:|" * (len(GROUPS_HZ) - 1))
        for bw in ("8k", "16k", "full"):
            sel = [s for s in recs if s[0].bandwidth == bw]
            g = np.concatenate([s[1] for s in sel])
            gh = np.concatenate([s[3] for s in sel])
            cells = []
            for a, b in itertools.pairwise(GROUPS_HZ):
                k = (band_hz >= a) & (band_hz < b)
                cells.append(f"{db(g[:, k]).mean():.1f} / {db(gh[:, k]).mean():.1f}")
            print(f"| {bw} | " + " | ".join(cells) + " |")

        print("\n## Comb strength r in speech band-frames (oracle g >= 0.7): mean oracle / model\n")
        for bw in ("8k", "16k", "full"):
            sel = [s for s in recs if s[0].bandwidth == bw]
            g = np.concatenate([s[1] for s in sel])
            r = np.concatenate([s[2] for s in sel])
            rh = np.concatenate([s[4] for s in sel])
            m = g >= SPEECH_G
            print(f"- input {bw}: {r[m].mean():.3f} / {rh[m].mean():.3f}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
