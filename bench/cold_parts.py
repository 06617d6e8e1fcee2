"""Where a lone stream's cold packet goes, and whether a smaller network would help
(a script, not a test).

results/idle_gap.md shows that a packet costs 2-3x more when the core did something
else for 20 ms first, which is every packet of a lone stream in the service. This
takes that cold packet apart:

- stages: the enhancer's packet step by step (input buffer, pitch and comb filter,
  the forward FFTs, band features, the model, gains and postfilter, inverse FFT and
  overlap-add), each timed on its own, back to back and after a 20 ms spin;
- sizes: the model's two runs for the packet (bound, as the enhancer makes them) for
  the shipped int8 file and for untrained networks of the same design at smaller sizes,
  exported and quantised the same way. Their weights are random: only their cost is
  measured, never their output.

    python bench/cold_parts.py [--packets 300] [--sizes 96x128,64x96,64x64x2]

A size is CONVxGRU or CONVxGRUxLAYERS (the strength GRU gets half the GRU width).
Each row is interleaved with the others, and times are thread CPU time, medians.
Needs torch and onnx for --sizes (the training extras); without them it does stages only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from idle_gap import spin  # noqa: E402

from percepnet import analysis, stft  # noqa: E402
from percepnet import gains as mixing  # noqa: E402
from percepnet.constants import FRAME_SIZE, NB_FEATURES  # noqa: E402
from percepnet.enhancer import _push, warm_up  # noqa: E402
from percepnet.runtime import OnnxModel, gains_for_many, load_enhancer_factory  # noqa: E402
from tests.signals import add_noise, speechlike  # noqa: E402

GAP_S = 0.02
STAGES = ("input buffer", "pitch + comb filter", "forward FFTs (4)", "band features",
          "model (2 runs)", "gains + postfilter", "inverse FFTs + overlap-add")  # fmt: skip


def stage_costs(packets: int) -> dict[tuple[str, bool], float]:
    """Median us of each stage of one packet, (stage, cold) -> us."""
    factory = load_enhancer_factory()
    warm_up(factory)
    enh = factory()
    rng = np.random.default_rng(0)
    x = add_noise(0.3 * speechlike(8.0, rng), 5.0, rng)
    n_packets = len(x) // (2 * FRAME_SIZE)
    costs: dict[tuple[str, bool], list[float]] = {(s, c): [] for s in STAGES for c in (0, 1)}
    clock = time.thread_time_ns
    for k in range(2 * packets):
        cold = bool(k % 2)
        spin(GAP_S if cold else 0.0)
        p = x[(k % n_packets) * 2 * FRAME_SIZE :][: 2 * FRAME_SIZE]
        an, tracker = enh._analyzer, enh._analyzer._pitch
        t = [clock()]
        buffers, enh._buffer, _ = _push(enh._buffer, p)
        t.append(clock())
        period, corr, comb, windows, tracker.pending = analysis._time_stage(
            buffers, tracker.pending, tracker.cost, tracker.back
        )
        t.append(clock())
        spectra = stft.spectra(windows)
        t.append(clock())
        feats, Y, P, E_y, q_y, an._pending_Y = analysis._frequency_stage(
            spectra, an._pending_Y, period, corr
        )
        steps = np.arange(an._step, an._step + len(period))
        an._step += len(period)
        frames = analysis.Frames(steps, feats, Y, P, E_y, q_y, period, corr, comb)
        t.append(clock())
        result = gains_for_many([enh.source], [frames])[0]
        assert not isinstance(result, Exception)
        g, r = result
        t.append(clock())
        out = mixing.apply_gains(frames.Y, frames.P, frames.E_y, g, r, use_postfilter=True)
        t.append(clock())
        stft.synthesise_stream(out, enh._overlap)
        t.append(clock())
        if k >= 40:
            for i, stage in enumerate(STAGES):
                costs[(stage, cold)].append((t[i + 1] - t[i]) / 1e3)
    return {key: statistics.median(v) for key, v in costs.items()}


def size_models(sizes: list[str], folder: Path) -> dict[str, tuple[OnnxModel, int, int]]:
    """name -> (int8 model, parameters, file bytes); the shipped file first."""
    shipped = REPO / "models" / "percepnet-int8.onnx"
    params = json.loads((REPO / "models" / "percepnet.json").read_text())["parameters"]
    models = {"shipped (trained)": (OnnxModel(shipped), params, shipped.stat().st_size)}
    try:
        import torch

        from percepnet.export import export_onnx, quantize
        from percepnet.model import ModelConfig, PercepNet, count_parameters
    except ImportError:
        print("no torch: sizes left out", file=sys.stderr)
        return models
    for size in sizes:
        conv, gru, *layers = (int(v) for v in size.split("x"))
        n_layers = layers[0] if layers else 3
        config = ModelConfig(conv, gru, n_layers, max(16, gru // 2), min(2, n_layers))
        torch.manual_seed(0)
        net = PercepNet(config)
        f32, i8 = folder / f"{size}.onnx", folder / f"{size}-int8.onnx"
        export_onnx(net, f32)
        quantize(f32, i8)
        models[f"{size} (untrained)"] = (OnnxModel(i8), count_parameters(net), i8.stat().st_size)
    return models


def pair_costs(models: dict[str, tuple[OnnxModel, int, int]], packets: int) -> dict:
    """Median us of a packet's two bound runs, (name, cold) -> us."""
    rng = np.random.default_rng(0)
    runs: dict[str, Callable[[np.ndarray], object]] = {}
    for name, (model, _, _) in models.items():
        bound = model.bound(1)
        bound.load([model.initial_state()])
        runs[name] = bound.step
    costs: dict[tuple[str, bool], list[float]] = {(n, c): [] for n in runs for c in (0, 1)}
    for k in range(packets):
        for name, step in runs.items():
            for cold in (False, True):
                f = rng.standard_normal((1, NB_FEATURES)).astype(np.float32)
                if cold:
                    spin(GAP_S)
                else:
                    step(f)
                t = time.thread_time_ns()
                step(f)
                step(f)
                if k >= 20:
                    costs[(name, cold)].append((time.thread_time_ns() - t) / 1e3)
    return {key: statistics.median(v) for key, v in costs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packets", type=int, default=300, help="per row and condition")
    parser.add_argument("--sizes", default="96x128,64x96,64x64x2", help="'' for none")
    args = parser.parse_args()

    stages = stage_costs(args.packets)
    print(f"A lone stream's packet, stage by stage: CPU us (median of {args.packets})\n")
    print("| stage | back to back | after 20 ms | ratio |")
    print("|---|---:|---:|---:|")
    for stage in STAGES:
        warm, cold = stages[(stage, False)], stages[(stage, True)]
        print(f"| {stage} | {warm:.0f} | {cold:.0f} | {cold / warm:.1f} |")
    warm = sum(stages[(s, False)] for s in STAGES)
    cold = sum(stages[(s, True)] for s in STAGES)
    print(f"| sum | {warm:.0f} | {cold:.0f} | {cold / warm:.1f} |")

    sizes = [s for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        models = size_models(sizes, Path(tmp))
        pairs = pair_costs(models, args.packets)
    print("\nThe model's two runs of a packet, by network size: CPU us (median)\n")
    print("| network | parameters | int8 bytes | back to back | after 20 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, (_, params, size) in models.items():
        warm, cold = pairs[(name, False)], pairs[(name, True)]
        print(f"| {name} | {params:,} | {size:,} | {warm:.0f} | {cold:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
