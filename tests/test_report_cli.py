"""``openrlhf-das report RUN_DIR``: CSV/JSON/PNG/TensorBoard from a recorded run; clear errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_das.cli.main import main
from openrlhf_das.config import LengthClass
from openrlhf_das.policy import AcceptanceTracker
from openrlhf_das.reports import RunRecorder, load_run, render
from openrlhf_das.ray.aggregate import merge_engine_stats

SCRIPT = Path(sys.executable).parent / "openrlhf-das"


def _das(step: int) -> dict:
    t = AcceptanceTracker()
    for i, length in enumerate((300, 1500, 3000, 9000)):
        t.on_proposed(f"r{i}", 4, LengthClass.LONG if length > 2000 else LengthClass.MEDIUM, length)
        t.on_verified(f"r{i}", 1 + min(4, step + i // 2))
    return merge_engine_stats([{"enabled": True, "acceptance": t.snapshot(), "faults": 0, "propose_seconds": 0.1,
                                "history": {"tokens": 1000 * step, "estimated_bytes": 360_000 * step}}])


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    rec = RunRecorder(d, {"model": "tiny"})
    for step in range(6):
        rec.record(step, "nospec", 10.0, 4000, None)
        rec.record(step, "das", 8.0 - step * 0.5 if step != 3 else None, 4000, _das(step),
                   history={"tokens": 500 * step, "token_bytes": 2000 * step})
    return d


def test_report_cli_writes_csv_json_png_and_tensorboard(run_dir: Path, capsys) -> None:
    assert main(["report", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    for name in ("acceptance_by_bucket.csv", "report.json", "acceptance.png"):
        assert (run_dir / name).stat().st_size > 0 and name in printed
    rows = list(csv.DictReader(open(run_dir / "acceptance_by_bucket.csv")))
    assert {r["mode"] for r in rows} == {"das"} and len(rows) == 6 * 5  # 6 steps x 5 buckets
    r2 = next(r for r in rows if r["step"] == "2" and r["bucket"] == "2k-4k")
    assert (r2["drafted"], r2["accepted"], r2["acceptance_rate"]) == ("4", "3", "0.7500")
    report = json.loads((run_dir / "report.json").read_text())
    das, nospec = report["modes"]["das"], report["modes"]["nospec"]
    assert das["total"]["drafted"] == 6 * 16 and nospec["rollout_seconds_total"] == 60.0
    assert das["steps_with_time"] == [0, 1, 2, 4, 5] and das["time_ratio_vs_nospec"] is None  # step 3 unknown
    assert das["steps"][1]["actor_history"]["tokens"] == 500 and set(das["by_class"]) >= {"long", "medium"}
    assert (run_dir / "acceptance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in (run_dir / "tensorboard").iterdir()} == {"das", "nospec"}
    assert main(["report", str(run_dir)]) == 0  # a second render replaces the event files
    assert len(list((run_dir / "tensorboard" / "das").iterdir())) == 1


def test_render_tags_and_optional_wandb(run_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class FakeRun:
        def __init__(self) -> None:
            self.logged: list[tuple[int, dict]] = []

        def log(self, data: dict, step: int) -> None:
            self.logged.append((step, data))

    run = FakeRun()
    paths = render(run_dir, out_dir=tmp_path / "out", wandb_run=run)
    ev = EventAccumulator(str(paths["tensorboard"] / "das"))
    ev.Reload()
    tags = set(ev.Tags()["scalars"])
    assert {"das/acceptance_rate", "das/accepted_per_step", "das/bucket/8k+/acceptance_rate",
            "das/class/long/drafted", "das/engine_history_tokens", "das/actor_history_bytes"} <= tags
    assert [e.step for e in ev.Scalars("das/rollout_seconds")] == [0, 1, 2, 4, 5]
    das_logs = [d for _, d in run.logged if "das/das/acceptance_rate" in d]
    assert len(das_logs) == 6 and any("das/nospec/rollout_seconds" in d for _, d in run.logged)


def test_version_1_run_dirs_and_torn_tail_still_render(run_dir: Path) -> None:
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    with open(run_dir / "steps.jsonl", "a") as f:
        f.write('{"step": 6, "mode": "das", "rollout_se')  # writer killed mid-record
    assert len(load_run(run_dir)[1]) == 12
    assert main(["report", str(run_dir), "--no-tensorboard"]) == 0
    RunRecorder(run_dir.parent / "fresh", resume=True).record(0, "das", None, None, None)
    with pytest.raises(Exception, match="version 1"):
        RunRecorder(run_dir, resume=True)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "run directory not found"),
        (lambda d: d.mkdir(), "meta.json missing"),
        (lambda d: (d.mkdir(), (d / "meta.json").write_text("{oops")), "not valid JSON"),
        (lambda d: (d.mkdir(), (d / "meta.json").write_text('{"format": "x", "version": 1}')), "is not openrlhf-das/run"),
        (lambda d: RunRecorder(d), "steps.jsonl missing"),
        (lambda d: (RunRecorder(d), (d / "steps.jsonl").write_text('{"step": 0}\n')), "needs step, mode and rollout_seconds"),
    ],
)
def test_bad_run_dir_is_a_clear_error(tmp_path: Path, capsys, setup, message) -> None:
    d = tmp_path / "bad"
    setup(d)
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("openrlhf-das report: error:") and message in err


def test_console_script_exit_codes(tmp_path: Path) -> None:
    exe = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "openrlhf_das.cli.main"]
    bad = subprocess.run([*exe, "report", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "run directory not found" in bad.stderr
    usage = subprocess.run([*exe], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "report" in usage.stderr
