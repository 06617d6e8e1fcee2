"""Write models/README.md (the model card) from the export manifest, the training log,
the corpus manifest and a calls-benchmark run's rows (bench/calls.py --out).

    python -m bench.model_card --manifest models/percepnet.json --log runs/v2/log.jsonl \
        --calls results/calls_test.json [--notes models/card_notes.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.calls import BANDWIDTHS, improvement_check, table
from percepnet.data.corpus import SOURCE_LICENCES, DataConfig, load_manifest
from percepnet.data.mix import MixConfig


def data_table(cfg: DataConfig) -> list[str]:
    """Accepted hours per source and split, with each source's licence."""
    entries = [e for e in load_manifest(cfg.manifest) if e.status == "ok" and e.kind != "rir"]
    lines = [
        "| kind | source | licence | train h | dev h | test h |",
        "|---|---|---|---:|---:|---:|",
    ]
    totals: dict[tuple[str, str], float] = {}
    for kind, source in sorted({(e.kind, e.source) for e in entries}):
        rows = [e for e in entries if e.kind == kind and e.source == source]
        hours = []
        for split in ("train", "dev", "test"):
            h = sum(e.duration for e in rows if e.split == split) / 3600
            totals[(kind, split)] = totals.get((kind, split), 0.0) + h
            hours.append(f"{h:.2f}")
        licence = SOURCE_LICENCES.get(source, "see the shared folder's README")
        lines.append(f"| {kind} | {source} | {licence} | " + " | ".join(hours) + " |")
    for kind in ("speech", "noise"):
        cells = " | ".join(
            f"**{totals.get((kind, s), 0.0):.2f}**" for s in ("train", "dev", "test")
        )
        lines.append(f"| {kind} | **all** | | {cells} |")
    return lines


def recipe_text(mix: MixConfig) -> str:
    nb, wb = mix.channel_probs
    return (
        f"on-the-fly mixtures of {mix.segment_s:g} s: SNR uniform {mix.snr_db[0]:g}..{mix.snr_db[1]:g} "
        f"dB ({mix.high_snr_prob:.0%} at {mix.high_snr_db[0]:g}..{mix.high_snr_db[1]:g} dB, "
        f"{mix.noise_free_prob:.0%} noise-free), speech level {mix.level_dbfs[0]:g}..{mix.level_dbfs[1]:g} "
        f"dBFS; speech and noise together through an 8 kHz channel in {nb:.0%} and a 16 kHz "
        f"channel in {wb:.0%} of mixtures; speed perturbation x{mix.speed_range[0]:g}..x{mix.speed_range[1]:g} "
        f"in {mix.speed_prob:.0%}; random biquads, independent low-passes, synthetic rooms on "
        f"{mix.rir_prob:.0%} (target keeps 20 ms early reflections and a 200 ms RT60 tail), clipping "
        f"in {mix.clip_prob:.0%}; noise: recorded files, coloured, babble, hum, clicks "
        f"(weights {', '.join(f'{w:g}' for w in mix.noise_kind_weights)}); recorded files drawn by "
        "source, each source's share going as the square root of its hours (weights "
        + ", ".join(f"{k} x{v:g}" for k, v in mix.noise_source_weights.items())
        + "), then by duration. Loss masked above each mixture's bandwidth."
    )


def state_text(man: dict) -> str:
    """How the manifest's graph carries its state between frames."""
    layout = man.get("state_layout")
    if not layout:  # the first layout: one tensor per part
        return f"state tensors {', '.join(man['inputs'][1:])} in and out (`NAME_out`)"
    parts = ", ".join(f"{name} {size}" for name, size in layout.items())
    return (
        f"one state tensor `{man['inputs'][1]}` of {sum(layout.values())} floats per stream in "
        f"and `{man['inputs'][1]}_out` out (its parts, in order: {parts}); each GRU cell is one "
        f"matrix product of [input, state] (the gates' two terms summed in the weights)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", default="models/percepnet.json")
    parser.add_argument("--log", required=True)
    parser.add_argument("--calls", required=True, help="rows of bench/calls.py --out")
    parser.add_argument("--title", default="Calls benchmark, test split")
    parser.add_argument("--notes", default=None, help="markdown appended verbatim")
    parser.add_argument(
        "--selected",
        default="by dev PESQ-WB (mean of 6 dev mixtures of the training recipe) at each evaluation.",
        help="how the shipped step was chosen (default: the training's own dev PESQ)",
    )
    parser.add_argument(
        "--started-from",
        default=None,
        help="the checkpoint the run started from, as committed (default: as the run logged it)",
    )
    parser.add_argument("--out", default="models/README.md")
    args = parser.parse_args()
    man = json.loads(Path(args.manifest).read_text())
    log = [json.loads(line) for line in Path(args.log).read_text().splitlines() if line.strip()]
    rows = json.loads(Path(args.calls).read_text())
    train = man.get("training", {})
    cfg = man.get("train_config", {})
    lines = [
        "# Model card: PercepNet (shipped default)",
        "",
        "| file | bytes | sha256 | max abs vs torch (gains, strengths) |",
        "|---|---:|---|---:|",
    ]
    for kind in ("float", "int8"):
        e = man[kind]
        lines.append(
            f"| `{e['file']}` | {e['bytes']} | `{e['sha256']}` | {e['max_abs_vs_torch']:.2e} |"
        )
    lines += [
        "",
        f"Streaming ONNX, opset {man['opset']}: one frame of {len(man['feature_mean'])} features "
        f"per stream in, {state_text(man)}; "
        f"outputs `gains` and `strengths` (34 each). Every tensor's first axis is the stream "
        f"and is dynamic, so one run advances many streams (the service batches a worker's "
        f"streams this way). The max difference to torch is over 300 frames of 3 streams run "
        f"together. Feature normalisation is inside the graph (also listed in "
        f"`percepnet.json`). int8: dynamic quantisation of every MatMul/Gemm weight; its "
        f"activations are quantised with one scale per run, so a stream's int8 gains move "
        f"slightly (measured: at most 0.014) with the other streams in its batch.",
        "",
        "## Network",
        "",
        f"`{json.dumps(man['config'])}`, {man['parameters']:,} parameters.",
        "",
        "## Training",
        "",
        f"- steps: {train.get('step')}, wall time: {train.get('wall_s', 0) / 60:.0f} min on 2 CPU cores "
        f"(one trains, one makes data), fresh audio seen: {train.get('audio_s', 0) / 3600:.1f} h "
        f"(each batch also replays segments from a pool of recent ones).",
        f"- batch {cfg.get('batch_size')} x {cfg.get('segment_seconds')} s segments, AdamW lr "
        f"{cfg.get('lr')} -> {cfg.get('lr_final')} (exponential), grad clip {cfg.get('grad_clip')}.",
        "- Loss: DESIGN section 4 (gain and strength errors on a square-root scale, plus a "
        "quartic gain term), masked above each mixture's bandwidth"
        + (
            f"; the gain error where the network passes more than the ideal gain is weighted "
            f"x{cfg['under_suppression_weight']:g}."
            if cfg.get("under_suppression_weight", 1.0) != 1.0
            else "."
        ),
        f"- Started from: `{args.started_from or train.get('init', 'random weights')}`.",
        "- Data: `percepnet data` corpus (shared data + Debian voice/noise packages, screened, split by "
        "file and speaker), " + recipe_text(MixConfig(**cfg.get("mix", {}))),
        f"- Selected: {args.selected}",
        "",
        "Accepted audio per source (hours; `percepnet data report`):",
        "",
        *data_table(DataConfig.from_args(None, None)),
        "",
        "Training log:",
        "",
        "| step | wall min | train loss | dev loss | dev PESQ-WB | fresh audio h |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for e in log:
        tl = "" if e["train_loss"] is None else f"{e['train_loss']:.3f}"
        lines.append(
            f"| {e['step']} | {e['wall_min']:.0f} | {tl} | {e['dev_loss']:.3f} | {e['dev_pesq']:.2f} | "
            f"{e['audio_h']:.1f} |"
        )
    n_items = len({r["id"] for r in rows})
    lines += [
        "",
        f"## Quality: {args.title} ({n_items} items, every system in one run)",
        "",
        "`python -m bench.calls --split test --n 90` (see its docstring for the conditions). "
        "Means; PESQ is PESQ-NB at 8 kHz for telephone input, else PESQ-WB at 16 kHz.",
        "",
        "All items:",
        "",
        table(rows),
    ]
    for bw in BANDWIDTHS:
        sel = [r for r in rows if r["bandwidth"] == bw]
        lines += [f"Input bandwidth {bw}:", "", table(sel)]
    for fam in sorted({r["family"] for r in rows}):
        sel = [r for r in rows if r["family"] == fam]
        lines += [f"Noise family {fam}:", "", table(sel)]
    check = improvement_check(rows)
    lines.append(
        "RNNoise raises mean PESQ and DNSMOS OVRL above noisy (the benchmark's own check): "
        + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in check.items())
    )
    if args.notes:
        lines += ["", Path(args.notes).read_text()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
