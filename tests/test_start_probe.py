"""benchmarks/gpu/start_probe.py: periodic stack dumps of a probed command's Python processes.

The probe is meant for an engine start on the GPU machine; here it runs on small scripts that
hang where we put them, in a child process and in a grandchild started with ``multiprocessing``
(fork, as vLLM 0.26 starts its EngineCore by default, and spawn)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

from start_probe import READY, run_probe  # noqa: E402

HANGS = '''
import multiprocessing as mp, sys, time

def grandchild_stuck():
    time.sleep(60)

def parent_stuck():
    time.sleep(60)

if __name__ == "__main__":
    mp.set_start_method(sys.argv[1])
    mp.Process(target=grandchild_stuck, daemon=True).start()
    print("child up", flush=True)
    parent_stuck()
'''


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_hang_is_located_in_every_process(tmp_path: Path, start_method: str) -> None:
    script = tmp_path / "hangs.py"
    script.write_text(HANGS)
    out = tmp_path / "probe"
    summary = run_probe([sys.executable, str(script), start_method], out, timeout_s=6.0, every_s=1.0)
    assert summary["outcome"] == "timed out" and summary["start_seconds"] is None
    assert summary["last_log_line"] == "child up"
    assert json.loads((out / "summary.json").read_text()) == summary
    procs = summary["processes"]
    mains = {name: info["main_thread"] for name, info in procs.items() if info["dumps"] >= 2}
    # the child and its grandchild each dumped their stacks, stuck where they are
    assert any(m and m[0].startswith("parent_stuck (hangs.py:") for m in mains.values()), mains
    assert any(m and m[0].startswith("grandchild_stuck (hangs.py:") for m in mains.values()), mains
    assert "child up" in (out / "log.txt").read_text()


def test_a_start_is_timed_and_ends_the_probe(tmp_path: Path) -> None:
    script = tmp_path / "starts.py"
    script.write_text(f"import time\ntime.sleep(0.5)\nprint('{READY} engine built', flush=True)\n")
    summary = run_probe([sys.executable, str(script)], tmp_path / "probe", timeout_s=60.0, every_s=30.0)
    assert summary["outcome"] == "started"
    assert 0.4 < summary["start_seconds"] < summary["wall_seconds"] < 60.0


def test_a_crash_is_reported(tmp_path: Path) -> None:
    summary = run_probe([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "probe", 60.0, 30.0)
    assert summary["outcome"] == "exited 3"


def test_bad_intervals_are_refused_before_running(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        run_probe([sys.executable, "-c", "pass"], tmp_path / "probe", 0.0, 1.0)
    assert not (tmp_path / "probe").exists()
