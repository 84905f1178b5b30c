"""Per-step numbers of the GRPO comparison runs (benchmarks/gpu/grpo_compare.sh) and their plot.

    grpo_plot.py extract --arm das --log train.log [--tb TB_DIR] [--das-run-dir DIR]
                         --steps-per-episode 6 --out steps.json      (also writes steps.csv)
    grpo_plot.py plot --nodas nodas/steps.json --das das/steps.json --out PREFIX
                                                                     (PREFIX.png + PREFIX.json)

A thin wrapper: the one implementation is ``openrlhf_das.reports`` (``openrlhf_logs.extract``
reads OpenRLHF's ``Global step N: {...}`` log lines, TensorBoard events and the DAS run directory;
``arms.plot`` writes the comparison), also behind ``openrlhf-das report --stock A --das B`` and
``make demo``. This script only needs the checkout (no install), as on the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's openrlhf_das
from openrlhf_das.reports.arms import column, mean_of, plot, write_csv  # noqa: E402
from openrlhf_das.reports.openrlhf_logs import extract, from_log, from_tensorboard  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--arm", required=True)
    e.add_argument("--log")
    e.add_argument("--tb")
    e.add_argument("--das-run-dir")
    e.add_argument("--steps-per-episode", type=int, required=True)
    e.add_argument("--out", required=True, help="steps.json (steps.csv is written next to it)")
    q = sub.add_parser("plot")
    q.add_argument("--nodas", required=True)
    q.add_argument("--das", required=True)
    q.add_argument("--out", required=True, help="output prefix: PREFIX.png, PREFIX.json")
    q.add_argument("--title", default="GRPO")
    q.add_argument("--target-ratio", type=float, default=0.80,
                   help="generation-time target das/nodas after episode 1 (issue 22: 0.80; 0.85 for partial rollouts)")
    a = p.parse_args(argv)
    if a.cmd == "extract":
        data = extract(a.arm, a.log, a.tb, a.das_run_dir, a.steps_per_episode)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(data, indent=1))
        write_csv(data, Path(a.out).with_suffix(".csv"))
        rows = data["steps"]
        gen = mean_of(column(rows, "generation_s"))
        print(f"[grpo_plot] {a.arm}: {len(rows)} steps -> {a.out}; mean generation "
              f"{'n/a' if gen is None else f'{gen:.2f} s'}/step, reward {mean_of(column(rows, 'reward'))}")
        return 0 if rows else 1
    nodas, das = (json.loads(Path(x).read_text()) for x in (a.nodas, a.das))
    summary = plot(nodas, das, a.out, title=a.title, generation_ratio=a.target_ratio)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
