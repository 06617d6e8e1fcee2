"""`percepnet` command line: oracle, enhance, data, train, export, bench.

Library code raises; only main() turns errors into messages and exit codes.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from percepnet.audio import AudioError
from percepnet.runtime import DEFAULT_MODEL, MODELS_DIR, ModelError
from percepnet.settings import MAX_ATTENUATION_DB
from percepnet.version import package_version


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


def _mixture_factory(
    data: str | None, cache: str | None, mix: dict[str, Any] | None = None
) -> _CorpusFactory:
    """(split, seed) -> mixture maker, over the corpus built by `percepnet data`."""
    from percepnet.data.corpus import DataConfig

    cfg = DataConfig.from_args(data, cache)
    return _CorpusFactory(cfg, mix or {})


def _key_number(flag: str, item: str, keys: Sequence[str], what: str) -> tuple[str, float]:
    """One KEY=NUMBER argument of `flag`: KEY among keys, NUMBER finite; else the error."""
    key, sep, value = item.partition("=")
    if not sep or key not in keys:
        raise argparse.ArgumentTypeError(
            f"{flag} {item!r}: expected {what}=NUMBER with {what} one of {', '.join(sorted(keys))}"
        )
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} {item!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{flag} {item!r}: must be finite")
    return key, number


def parse_mix_overrides(items: Sequence[str]) -> dict[str, float]:
    """--mix KEY=VALUE pairs: numeric fields of the augmentation recipe (MixConfig)."""
    from dataclasses import fields

    from percepnet.data.mix import MixConfig

    numeric = {f.name: f.type for f in fields(MixConfig) if f.type in ("float", "int")}
    out: dict[str, float] = {}
    for item in items:
        key, number = _key_number("--mix", item, list(numeric), "KEY")
        if number < 0:
            raise argparse.ArgumentTypeError(f"--mix {item!r}: must be finite and >= 0")
        out[key] = int(number) if numeric[key] == "int" else number
    return out


def parse_speech_weights(items: Sequence[str], sources: set[str]) -> dict[str, float]:
    """--speech-weight SOURCE=W pairs: MixConfig.source_weights, each speech source's
    share of the drawn speech multiplied by W (a source not named keeps 1)."""
    if items and not sources:
        raise argparse.ArgumentTypeError(
            f"--speech-weight {items[0]!r}: no corpus manifest; run 'percepnet data prepare'"
        )
    out: dict[str, float] = {}
    for item in items:
        key, number = _key_number("--speech-weight", item, sorted(sources), "SOURCE")
        if number <= 0:
            raise argparse.ArgumentTypeError(f"--speech-weight {item!r}: must be finite and > 0")
        out[key] = number
    return out


def _speech_sources(data: str | None, cache: str | None) -> set[str]:
    """The speech sources of the corpus manifest (empty if there is none yet)."""
    from percepnet.data.corpus import DataConfig, load_manifest

    manifest = DataConfig.from_args(data, cache).manifest
    if not manifest.exists():
        return set()
    return {e.source for e in load_manifest(manifest) if e.kind == "speech"}


def _release_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value == 0.0 or 0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 (off) or 0 < D < 1")
    return value


class _CorpusFactory:
    """Picklable (for data-loader workers) factory of corpus mixture makers."""

    def __init__(self, cfg: object, mix: dict[str, Any]) -> None:
        self.cfg = cfg
        self.mix = mix

    def __call__(self, split: str, seed: int) -> Callable[[], tuple[Any, Any, float]]:
        from percepnet.data.mix import MixConfig, MixtureGenerator

        config = MixConfig(**self.mix)
        gen = MixtureGenerator(self.cfg, split, seed, config)  # type: ignore[arg-type]

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
    if args.grow and not args.init:
        print("error: --grow widens the network of --init; give --init", file=sys.stderr)
        return 2
    try:
        mix: dict[str, Any] = dict(parse_mix_overrides(args.mix))
        if args.speech_weight:
            sources = _speech_sources(args.data, args.cache)
            mix["source_weights"] = parse_speech_weights(args.speech_weight, sources)
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
        mix=mix,
        under_suppression_weight=args.under_suppression_weight,
        target_release=args.target_release,
    )
    if mix:
        print("augmentation recipe changed: " + ", ".join(f"{k}={v}" for k, v in mix.items()))
    best = train(
        Path(args.out),
        _mixture_factory(args.data, args.cache, mix),
        cfg,
        resume=not args.no_resume,
        init=Path(args.init) if args.init else None,
        grow=args.grow,
    )
    print(f"best checkpoint: {best}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from percepnet.export import export_all
    from percepnet.train import load_checkpoint

    net, ckpt = load_checkpoint(Path(args.checkpoint))
    if args.gain_map is not None:
        from dataclasses import replace

        lo, hi = args.gain_map
        if not 0.0 <= lo < hi <= 1.0:
            print("percepnet export: --gain-map needs 0 <= LO < HI <= 1", file=sys.stderr)
            return 2
        net.config = replace(net.config, gain_lo=lo, gain_hi=hi)
    info = {"training": ckpt.get("train_state", {}), "train_config": ckpt.get("train_config", {})}
    info["training"] = {k: v for k, v in info["training"].items() if k != "history"}
    manifest = export_all(net, Path(args.out_dir), args.stem, info)
    for kind in ("float", "int8"):
        entry = manifest[kind]
        print(f"{kind}: {entry['file']} (max |onnx - torch| {entry['max_abs_vs_torch']:.1e})")
    return 0


def _cmd_enhance(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from percepnet.offline import enhance_files, plan_outputs
    from percepnet.runtime import load_model

    out_dir = Path(args.output)
    jobs = plan_outputs([Path(p) for p in args.inputs], out_dir, overwrite=args.overwrite)
    net = load_model(args.model)
    failed: list[str] = []
    bar = tqdm(total=len(jobs), unit="file", file=sys.stderr, disable=len(jobs) < 2 or args.quiet)
    with bar:
        for outcome in enhance_files(
            jobs,
            net,
            postfilter=not args.no_postfilter,
            attenuation_limit_db=args.attenuation_limit,
        ):
            if outcome.error is not None:
                failed.append(outcome.error)
                # tqdm.write clears the bar, prints the line, then redraws the bar below it
                tqdm.write(f"skipped: {outcome.error}", file=sys.stderr)
            elif outcome.nonfinite_input_samples:
                tqdm.write(
                    f"warning: {outcome.job.source}: {outcome.nonfinite_input_samples} "
                    "NaN/inf input samples were replaced by 0",
                    file=sys.stderr,
                )
            bar.update(1)
    done = len(jobs) - len(failed)
    print(f"enhanced {done} of {len(jobs)} file(s) into {out_dir}")
    if failed:
        print(f"{len(failed)} file(s) failed:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FILES_FAILED
    return 0


EXIT_FILES_FAILED = 1
"""enhance: some files could not be read or written (the others were enhanced)."""
EXIT_ERROR = 2
"""Nothing done: bad arguments, a missing input, conflicting outputs, an unusable model."""


def _bounded(
    kind: type[int] | type[float], low: float | None = None, high: float | None = None
) -> Callable[[str], Any]:
    """An argparse type: `kind` within [low, high], else a usage error naming the range."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if (
            value != value
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            if high is None:
                raise argparse.ArgumentTypeError(f"must be at least {low:g}, not {text}")
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="percepnet",
        description="PercepNet speech enhancement",
        epilog="exit status: 0 done; 1 enhance: some files failed (the others were written); "
        "2 nothing done (bad arguments or input, conflicting outputs, unusable model)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("oracle", help="enhance with ideal gains computed from the clean reference")
    p.add_argument("--clean", required=True, help="clean reference file (required)")
    p.add_argument("--noisy", required=True, help="noisy file, same duration (required)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output file, written at the noisy file's rate; never one of the inputs (required)",
    )
    p.add_argument(
        "--no-pitch-filter",
        action="store_true",
        help="band gains only, no comb filter (default: comb filter on)",
    )
    p.add_argument(
        "--no-postfilter",
        action="store_true",
        help="skip the envelope postfilter (default: postfilter on)",
    )
    p.set_defaults(func=_cmd_oracle)

    p = sub.add_parser(
        "enhance",
        help="enhance files or folders with the model",
        description="Enhance audio files with the model. Each output has its input's name "
        "(folders: its path within the folder), sample rate and channel count; .ogg and "
        ".mp3 inputs are written as .wav (16-bit PCM). An output never replaces an input; "
        "outputs that would collide, or replace existing files without --overwrite, stop "
        "the run before anything is written. A file that cannot be read is reported, "
        "skipped, and the run goes on.",
        epilog="exit status: 0 all enhanced; 1 some files failed (the others were written); "
        "2 nothing done (bad arguments or input, conflicting outputs, unusable model)",
    )
    p.add_argument(
        "inputs", nargs="+", help="audio files or folders (folders searched recursively)"
    )
    p.add_argument("-o", "--output", required=True, help="output folder (required)")
    p.add_argument(
        "--model",
        default=None,
        help=f"ONNX model (default: the shipped {DEFAULT_MODEL.relative_to(MODELS_DIR.parent)})",
    )
    p.add_argument(
        "--no-postfilter",
        action="store_true",
        help="skip the envelope postfilter that sharpens voiced speech (default: postfilter on)",
    )
    p.add_argument(
        "--attenuation-limit",
        type=_bounded(float, 0.0, MAX_ATTENUATION_DB),
        default=None,
        metavar="DB",
        help=f"never attenuate more than this many dB, 0-{MAX_ATTENUATION_DB:g} "
        "(default: no limit)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that already exist (default: refuse; inputs are never replaced)",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (default: shown for 2+ files)"
    )
    p.set_defaults(func=_cmd_enhance)

    p = sub.add_parser("data", help="build the training corpus (fetch, screen, split, pack)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="`percepnet data --help` lists them")
    p.set_defaults(func=_cmd_data)

    positive = _bounded(float, 1e-9)
    p = sub.add_parser("train", help="train the network on on-the-fly mixtures")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log (required)")
    p.add_argument(
        "--minutes",
        type=positive,
        default=60.0,
        help="wall-time budget in total (default: %(default)g)",
    )
    p.add_argument(
        "--batch", type=_bounded(int, 1), default=16, help="batch size (default: %(default)g)"
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)g)")
    p.add_argument(
        "--conv", type=_bounded(int, 1), default=128, help="conv channels (default: %(default)g)"
    )
    p.add_argument(
        "--gru", type=_bounded(int, 1), default=160, help="GRU size (default: %(default)g)"
    )
    p.add_argument(
        "--layers", type=_bounded(int, 1), default=3, help="GRU layers (default: %(default)g)"
    )
    p.add_argument(
        "--strength-gru",
        type=_bounded(int, 1),
        default=64,
        help="comb-strength GRU size (default: %(default)g)",
    )
    p.add_argument(
        "--workers",
        type=_bounded(int, 0),
        default=1,
        help="data-loader processes; 0: in the training process (default: %(default)g)",
    )
    p.add_argument(
        "--fresh",
        type=_bounded(int, 1),
        default=8,
        help="new mixtures per batch, the rest replayed (default: %(default)g)",
    )
    p.add_argument(
        "--eval-every",
        type=positive,
        default=10.0,
        help="minutes between dev evaluations (default: %(default)g)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="shared data folder (default: PERCEPNET_DATA or ../shared/data)",
    )
    p.add_argument("--cache", default=None, help="corpus cache folder (default: cache/)")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh even if the run folder has a checkpoint (default: resume)",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="CKPT",
        help="start from this checkpoint's weights and feature normalisation (fine-tuning; "
        "its network settings replace --conv/--gru/--layers/--strength-gru; default: none)",
    )
    p.add_argument(
        "--grow",
        action="store_true",
        help="with --init: widen its network to --conv/--gru/--strength-gru first, keeping "
        "what it computes (new units start silent) (default: off, its sizes as they are)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (default 1e-3)")
    p.add_argument(
        "--mix",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a number of the augmentation recipe (percepnet.data.mix.MixConfig), "
        "e.g. --mix noise_free_prob=0.2; repeatable (default: none, the recipe as it is)",
    )
    p.add_argument(
        "--speech-weight",
        action="append",
        default=[],
        metavar="SOURCE=W",
        help="draw this speech source W times as often (its share by duration times W), "
        "e.g. --speech-weight tuxpaint=2; repeatable (default: none, every source 1)",
    )
    p.add_argument(
        "--lr-final", type=float, default=1e-4, help="learning rate at the end (default 1e-4)"
    )
    p.add_argument(
        "--under-suppression-weight",
        type=float,
        default=1.0,
        help="weight of the gain error where the network passes more than the ideal gain "
        "(residual noise) (default 1.0: the symmetric loss)",
    )
    p.add_argument(
        "--target-release",
        type=_release_factor,
        default=0.0,
        metavar="D",
        help="hold the target gains over decays: each band's target falls by at most a "
        "factor D (0 < D < 1) per 10 ms frame (default 0: the oracle's own gains)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("export", help="export a checkpoint to streaming ONNX (float and int8)")
    p.add_argument("checkpoint", help="training checkpoint (.pt)")
    p.add_argument("--out-dir", default="models", help="output folder (default: models)")
    p.add_argument(
        "--stem", default="percepnet", help="file name stem of the models (default: percepnet)"
    )
    p.add_argument(
        "--gain-map",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="gain calibration baked into the model: sqrt(g) stretched from [LO, HI] to "
        "[0, 1] (default: the checkpoint's, normally none)",
    )
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
    except AudioError as exc:  # each line of it: one input or output that is unusable
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_ERROR
    except ModelError as exc:
        # onnxruntime's messages can run over several lines; the first says what failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {first}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
