"""Oracle ablation: what each DSP stage buys when the gains are ideal.

Mixtures: speech from the shared data folder (upsampled to 48 kHz) with real noise
recordings at 0, 5 and 10 dB SNR. Conditions: noisy; band gains only; gains + pitch
filter; gains + pitch filter + postfilter. Metrics: PESQ-WB, STOI, SI-SDR, DNSMOS.

    python -m bench.oracle_ablation [--data ../shared/data] [--clips 12] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import DATA
from percepnet.audio import load
from percepnet.constants import SAMPLE_RATE
from percepnet.enhancer import OracleSource, enhance_signal
from percepnet.metrics import METRIC_NAMES, markdown_table, score, summarise

SPEECH_DIRS = (
    "speech/librispeech_excerpts",
    "speech/picovoice_speech_to_intent",
    "speech/ljspeech_subset",
)
NOISES = (
    "noise/kitchen/kitchen.flac",
    "noise/speech_commands_background/doing_the_dishes.flac",
    "noise/speech_commands_background/dude_miaowing.flac",
    "noise/speech_commands_background/exercise_bike.flac",
    "noise/speech_commands_background/running_tap.flac",
)
SNRS = (0.0, 5.0, 10.0)
CONDITIONS = ("noisy", "gains", "gains+pitch", "gains+pitch+postfilter")
MAX_SECONDS = 6.0


def pick_speech(root: Path, n: int, rng: np.random.Generator) -> list[Path]:
    files: list[Path] = []
    per = -(-n // len(SPEECH_DIRS))
    for d in SPEECH_DIRS:
        found = sorted(p for p in (root / d).rglob("*") if p.suffix in (".flac", ".wav", ".ogg"))
        # prefer sentences of 2 s or more: short commands say little about voiced speech
        chosen = rng.permutation(len(found))[: per * 4]
        keep = [found[i] for i in chosen]
        files.extend(keep[:per])
    return files[:n]


def mix(
    speech: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator
) -> np.ndarray:
    start = int(rng.integers(0, max(1, len(noise) - len(speech))))
    seg = np.resize(noise[start:], len(speech))
    gain = np.sqrt(np.mean(speech**2) / (np.mean(seg**2) + 1e-12) / 10 ** (snr_db / 10))
    return speech + gain * seg


def run(root: Path, n_clips: int, seed: int) -> list[dict[str, float | str]]:
    rng = np.random.default_rng(seed)
    noises = [load(root / p) for p in NOISES]
    rows: list[dict[str, float | str]] = []
    for ci, path in enumerate(pick_speech(root, n_clips, rng)):
        speech = load(path)[: int(MAX_SECONDS * SAMPLE_RATE)]
        speech = 0.1 * speech / (np.sqrt(np.mean(speech**2)) + 1e-9)  # -20 dBFS RMS
        for si, snr in enumerate(SNRS):
            noisy = mix(speech, noises[(ci + si) % len(noises)], snr, rng)
            outs = {
                "noisy": noisy,
                "gains": enhance_signal(
                    noisy, OracleSource(speech, use_pitch_filter=False), use_postfilter=False
                ),
                "gains+pitch": enhance_signal(noisy, OracleSource(speech), use_postfilter=False),
                "gains+pitch+postfilter": enhance_signal(
                    noisy, OracleSource(speech), use_postfilter=True
                ),
            }
            for name, est in outs.items():
                rows.append({"system": name, "clip": path.name, "snr": snr, **score(speech, est)})
            print(f"[{ci + 1}/{n_clips}] {path.name} {snr:.0f} dB", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--clips", type=int, default=12, help="speech clips (x3 SNRs = mixtures)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write per-mixture rows as JSON")
    args = parser.parse_args()
    t0 = time.monotonic()
    rows = run(Path(args.data), args.clips, args.seed)
    summary = summarise(rows)
    print(f"{len(rows) // len(CONDITIONS)} mixtures, {time.monotonic() - t0:.0f} s\n")
    print("median:\n" + markdown_table(summary))
    print("mean:\n" + markdown_table(summary, stat="mean"))
    med = {s.system: s.median for s in summary}
    pitch_helps = med["gains+pitch"]["pesq_wb"] > med["gains"]["pesq_wb"]
    full_best = all(
        med["gains+pitch+postfilter"]["pesq_wb"] >= med[c]["pesq_wb"] for c in CONDITIONS
    )
    print(f"pitch filter beats gains alone on PESQ: {'yes' if pitch_helps else 'NO'}")
    print(f"full chain best of the four on PESQ: {'yes' if full_best else 'NO'}")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"rows": rows, "metrics": list(METRIC_NAMES)}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
