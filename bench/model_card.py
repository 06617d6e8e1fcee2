"""Write models/README.md (the model card) from the export manifest, the training log
and a quality run's rows (bench/quality.py --out).

    python bench/model_card.py --manifest models/percepnet.json --log runs/v1/log.jsonl \
        --quality results/test.json [--notes notes.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from percepnet.metrics import markdown_table, summarise


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
    parser.add_argument("--quality", required=True)
    parser.add_argument("--notes", default=None, help="markdown appended verbatim")
    parser.add_argument("--out", default="models/README.md")
    args = parser.parse_args()
    man = json.loads(Path(args.manifest).read_text())
    log = [json.loads(line) for line in Path(args.log).read_text().splitlines() if line.strip()]
    rows = json.loads(Path(args.quality).read_text())
    summary = summarise(rows)
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
        "- Data: `percepnet data` corpus (shared data + Debian voice/noise packages, screened, split by "
        "file and speaker), on-the-fly mixtures: SNR -5..40 dB (10 % noise-free), level -45..0 dBFS, "
        "random biquads, low-pass, synthetic rooms on half (target keeps 20 ms early reflections and a "
        "200 ms RT60 tail), clipping, synthetic noises. Loss masked above each clip's bandwidth.",
        "- Selected by dev PESQ-WB (mean of 6 dev mixtures, measured rooms) at each evaluation.",
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
    lines += [
        "",
        f"## Quality on the held-out test split ({summary[0].n} mixtures, one run)",
        "",
        "Median:",
        "",
        markdown_table(summary),
        "Mean:",
        "",
        markdown_table(summary, stat="mean"),
    ]
    if args.notes:
        lines += ["", Path(args.notes).read_text()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
