"""`percepnet` command line: oracle, enhance, data, train, export, bench.

Library code raises; only main() turns errors into messages and exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from percepnet.audio import AudioError


def _cmd_oracle(args: argparse.Namespace) -> int:
    from percepnet.offline import oracle_file

    info = oracle_file(
        args.clean,
        args.noisy,
        args.output,
        pitch_filter=not args.no_pitch_filter,
        postfilter=not args.no_postfilter,
    )
    if info["nonfinite_input_samples"]:
        print(
            f"warning: {int(info['nonfinite_input_samples'])} NaN/inf input samples "
            "were replaced by 0",
            file=sys.stderr,
        )
    print(f"wrote {args.output} ({info['seconds']:.2f} s)")
    return 0


def _mixture_factory(data: str | None, cache: str | None) -> _CorpusFactory:
    """(split, seed) -> mixture maker, over the corpus built by `percepnet data`."""
    from percepnet.data.corpus import DataConfig

    cfg = DataConfig.from_args(data, cache)
    return _CorpusFactory(cfg)


class _CorpusFactory:
    """Picklable (for data-loader workers) factory of corpus mixture makers."""

    def __init__(self, cfg: object) -> None:
        self.cfg = cfg

    def __call__(self, split: str, seed: int) -> Callable[[], tuple[Any, Any, float]]:
        from percepnet.data.mix import MixtureGenerator

        gen = MixtureGenerator(self.cfg, split, seed)  # type: ignore[arg-type]

        def make() -> tuple[Any, Any, float]:
            clean, noisy, meta = next(gen)
            return clean, noisy, float(meta["bandwidth_hz"])

        return make


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from percepnet.model import ModelConfig
    from percepnet.train import TrainConfig, train

    model = ModelConfig(
        conv_channels=args.conv,
        gru_size=args.gru,
        gru_layers=args.layers,
        strength_gru_size=args.strength_gru,
    )
    cfg = TrainConfig(
        minutes=args.minutes,
        batch_size=args.batch,
        seed=args.seed,
        model=model,
        eval_every_s=args.eval_every * 60,
        workers=args.workers,
        fresh_per_batch=min(args.fresh, args.batch),
        lr=args.lr,
        lr_final=args.lr_final,
    )
    best = train(
        Path(args.out),
        _mixture_factory(args.data, args.cache),
        cfg,
        resume=not args.no_resume,
        init=Path(args.init) if args.init else None,
    )
    print(f"best checkpoint: {best}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from percepnet.export import export_all
    from percepnet.train import load_checkpoint

    net, ckpt = load_checkpoint(Path(args.checkpoint))
    info = {"training": ckpt.get("train_state", {}), "train_config": ckpt.get("train_config", {})}
    info["training"] = {k: v for k, v in info["training"].items() if k != "history"}
    manifest = export_all(net, Path(args.out_dir), args.stem, info)
    for kind in ("float", "int8"):
        entry = manifest[kind]
        print(f"{kind}: {entry['file']} (max |onnx - torch| {entry['max_abs_vs_torch']:.1e})")
    return 0


def _cmd_enhance(args: argparse.Namespace) -> int:
    from pathlib import Path

    from percepnet.offline import enhance_paths

    n = enhance_paths(
        [Path(p) for p in args.inputs],
        Path(args.output),
        model=args.model,
        postfilter=not args.no_postfilter,
        attenuation_limit_db=args.attenuation_limit,
    )
    print(f"enhanced {n} file(s) into {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="percepnet", description="PercepNet speech enhancement")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("oracle", help="enhance with ideal gains computed from the clean reference")
    p.add_argument("--clean", required=True, help="clean reference file")
    p.add_argument("--noisy", required=True, help="noisy file (same duration)")
    p.add_argument(
        "-o", "--output", required=True, help="output file (written at the noisy file's rate)"
    )
    p.add_argument("--no-pitch-filter", action="store_true", help="band gains only, no comb filter")
    p.add_argument("--no-postfilter", action="store_true", help="skip the envelope postfilter")
    p.set_defaults(func=_cmd_oracle)

    p = sub.add_parser("enhance", help="enhance files or folders with the model")
    p.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped int8 model)")
    p.add_argument("--no-postfilter", action="store_true")
    p.add_argument(
        "--attenuation-limit",
        type=float,
        default=None,
        metavar="DB",
        help="never attenuate more than this many dB",
    )
    p.set_defaults(func=_cmd_enhance)

    p = sub.add_parser("data", help="build the training corpus (fetch, screen, split, pack)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("train", help="train the network on on-the-fly mixtures")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log)")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-time budget in total")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--conv", type=int, default=128)
    p.add_argument("--gru", type=int, default=160)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--strength-gru", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--fresh", type=int, default=8, help="new mixtures per batch (the rest replayed)"
    )
    p.add_argument("--eval-every", type=float, default=10.0, help="minutes between dev evaluations")
    p.add_argument(
        "--data",
        default=None,
        help="shared data folder (default: PERCEPNET_DATA or ../shared/data)",
    )
    p.add_argument("--cache", default=None, help="corpus cache folder (default: cache/)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument(
        "--init",
        default=None,
        metavar="CKPT",
        help="start from this checkpoint's weights and feature normalisation (fine-tuning; "
        "its network settings replace --conv/--gru/--layers/--strength-gru; default: none)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (default 1e-3)")
    p.add_argument(
        "--lr-final", type=float, default=1e-4, help="learning rate at the end (default 1e-4)"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("export", help="export a checkpoint to streaming ONNX (float and int8)")
    p.add_argument("checkpoint")
    p.add_argument("--out-dir", default="models")
    p.add_argument("--stem", default="percepnet")
    p.set_defaults(func=_cmd_export)
    return parser


def _cmd_data(args: argparse.Namespace) -> int:
    from percepnet.data.cli import main_data

    return int(main_data(args.rest))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except AudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
