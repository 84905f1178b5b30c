"""``openrlhf-das``: the command-line entry point (one subcommand per verb).

Subcommands:

* ``report RUN_DIR [--out DIR] [--max-lines N] [--no-tensorboard]`` — render a run directory
  to ``acceptance_by_bucket.csv``, ``report.json``, ``acceptance.png`` and TensorBoard scalars.
* ``report --stock ARM --das ARM [--out PREFIX] [--steps-per-episode N] [--title T]
  [--target-ratio R]`` — compare two arms of an OpenRLHF run (stock vs ``--das``), each a
  ``steps.json`` or a run folder (``openrlhf_das.reports.openrlhf_logs.load_arm``): one
  ``PREFIX.png`` with both arms per step and ``PREFIX.json`` (``openrlhf_das.reports.arms.plot``;
  its ``targets`` hold issue 22's numbers). Default prefix: ``compare`` beside the DAS arm.

Exit status: 0 on success, 2 on a usage error or a bad run directory (message on stderr).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

Handler = Callable[[argparse.Namespace], int]


def _compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..reports.arms import plot
    from ..reports.openrlhf_logs import load_arm

    try:
        stock = load_arm(args.stock, "nodas", args.steps_per_episode)
        das = load_arm(args.das, "das", args.steps_per_episode)
    except (OSError, ValueError) as exc:
        print(f"openrlhf-das report: error: {exc}", file=sys.stderr)
        return 2
    if not stock["steps"] or not das["steps"]:
        empty = args.stock if not stock["steps"] else args.das
        print(f"openrlhf-das report: error: {empty}: no OpenRLHF step found", file=sys.stderr)
        return 2
    das_path = Path(args.das)
    prefix = args.out or str((das_path.parent if das_path.is_file() else das_path).parent / "compare")
    summary = plot(stock, das, prefix, title=args.title, generation_ratio=args.target_ratio)
    print(json.dumps(summary["targets"], indent=1))
    print(f"png: {prefix}.png\njson: {prefix}.json")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ..reports import RunDirError, render

    if args.stock or args.das:
        if not (args.stock and args.das) or args.run_dir:
            print("openrlhf-das report: error: compare two arms with --stock ARM --das ARM (and no RUN_DIR)",
                  file=sys.stderr)
            return 2
        return _compare(args)
    if not args.run_dir:
        print("openrlhf-das report: error: give RUN_DIR, or --stock ARM --das ARM", file=sys.stderr)
        return 2
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
    rep = sub.add_parser("report", help="render a run directory (CSV, JSON, PNG, TensorBoard), or compare two arms")
    rep.add_argument("run_dir", metavar="RUN_DIR", nargs="?")
    rep.add_argument("--out", default=None,
                     help="output directory (default: RUN_DIR); with --stock/--das the output prefix")
    rep.add_argument("--stock", default=None, help="stock arm: steps.json or run folder")
    rep.add_argument("--das", default=None, help="DAS arm: steps.json or run folder")
    rep.add_argument("--steps-per-episode", type=int, default=None,
                     help="for run folders without steps.json (prompts / rollout batch size)")
    rep.add_argument("--title", default="OpenRLHF")
    rep.add_argument("--target-ratio", type=float, default=0.80,
                     help="generation-time target das/stock after episode 1 (issue 22: 0.80; 0.85 with partial rollouts)")
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
