"""``openrlhf-das``: the command-line entry point (one subcommand per verb).

Subcommands:

* ``report RUN_DIR [--out DIR] [--max-lines N] [--no-tensorboard]`` — render a run directory
  to ``acceptance_by_bucket.csv``, ``report.json``, ``acceptance.png`` and TensorBoard scalars.

Exit status: 0 on success, 2 on a usage error or a bad run directory (message on stderr).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

Handler = Callable[[argparse.Namespace], int]


def _report(args: argparse.Namespace) -> int:
    from ..reports import RunDirError, render

    try:
        paths = render(args.run_dir, out_dir=args.out, max_lines=args.max_lines, tensorboard=not args.no_tensorboard)
    except RunDirError as exc:
        print(f"openrlhf-das report: error: {exc}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="openrlhf-das", description="openrlhf-das tools")
    sub = p.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="render a run directory (CSV, JSON, PNG, TensorBoard)")
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.add_argument("--out", default=None, help="output directory (default: RUN_DIR)")
    rep.add_argument("--max-lines", type=int, default=4, help="step ranges plotted (default 4)")
    rep.add_argument("--no-tensorboard", action="store_true", help="skip TensorBoard event files")
    rep.set_defaults(handler=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "max_lines", 1) < 1:
        parser.error("--max-lines must be >= 1")
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
