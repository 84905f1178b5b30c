"""``benchmarks/gpu/install.sh`` on the CPU machine, without a payload (the real stages need the GPU
machine: docs/gpu.md). ``bg-deps`` starts the ``deps`` stage in the background; the next transfer
then replaces the repository folder the call ran in, so the stage must run in its own folder
(``$DW/bin``): pip's ``os.getcwd()`` raises FileNotFoundError in a folder that is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"
SCRIPT = GPU / "install.sh"


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "DW": str(tmp_path / "dw"), "PAY": str(tmp_path / "payload"),
            "GPU_SITE": str(tmp_path / "site"), "GPU_MODELS_DIR": str(tmp_path / "models"), "GPU_PY": sys.executable}


def _wait_for_background_stage(dw: Path) -> str:
    """Wait (bounded) until the detached stage has marked its end; return its log."""
    for _ in range(1200):  # at most about a minute
        if (dw / "deps.done").exists() or (dw / "deps.failed").exists():
            break
        time.sleep(0.05)
    else:
        raise AssertionError("background deps stage did not finish")
    return (dw / "deps.log").read_text()


def test_bg_deps_runs_in_its_own_folder_when_the_callers_folder_is_gone(tmp_path: Path) -> None:
    gone = tmp_path / "repo-folder"
    gone.mkdir()
    env = _env(tmp_path)
    # as on the GPU machine: the call's working folder is replaced while the stage runs (here
    # before the call, so that the order is fixed)
    proc = subprocess.run(["bash", "-c", f"cd {gone} && rmdir {gone} && bash {SCRIPT} bg-deps"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "deps stage started in the background" in proc.stdout
    dw = tmp_path / "dw"
    for f in ("install.sh", "env.sh", "verify.py", "materialize.py", "smoke.py", "wheels.lock"):
        assert (dw / "bin" / f).is_file(), f
    log = _wait_for_background_stage(dw)
    assert f"[install] deps: working folder {(dw / 'bin').resolve()}" in log, log
    # no payload here: the stage stops at the join, and `all` would run it inline
    assert "no sw parts" in log and (dw / "deps.failed").exists()


def test_deps_inline_reports_a_missing_payload(tmp_path: Path) -> None:
    (tmp_path / "dw").mkdir()
    proc = subprocess.run(["bash", str(SCRIPT), "deps"], capture_output=True, text=True, timeout=60,
                          env=_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1
    assert f"[install] deps: working folder {tmp_path.resolve()}" in proc.stdout
    assert "no sw parts in" in proc.stderr


def test_suffix_gpu_is_pinned_and_its_import_is_checked() -> None:
    rows = [line.split() for line in (GPU / "wheels.lock").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    pinned = [r for r in rows if r[0] == "wheel" and r[1] == "suffix-gpu"]
    assert len(pinned) == 1 and pinned[0][2:4] == ["0.1.3", "suffix_gpu-0.1.3-py3-none-any.whl"]
    assert "import suffix_gpu" in SCRIPT.read_text()
