"""`percepnet` command line: oracle, enhance, data, train, export, bench.

Library code raises; only main() turns errors into messages and exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
        print(f"warning: {int(info['nonfinite_input_samples'])} NaN/inf input samples were replaced by 0",
              file=sys.stderr)
    print(f"wrote {args.output} ({info['seconds']:.2f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="percepnet", description="PercepNet speech enhancement")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("oracle", help="enhance with ideal gains computed from the clean reference")
    p.add_argument("--clean", required=True, help="clean reference file")
    p.add_argument("--noisy", required=True, help="noisy file (same duration)")
    p.add_argument("-o", "--output", required=True, help="output file (written at the noisy file's rate)")
    p.add_argument("--no-pitch-filter", action="store_true", help="band gains only, no comb filter")
    p.add_argument("--no-postfilter", action="store_true", help="skip the envelope postfilter")
    p.set_defaults(func=_cmd_oracle)
    return parser


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
