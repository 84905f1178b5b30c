"""``benchmarks/engine_rollouts.py --merge``: modes measured in separate runs of one workload (one
device call per mode, each under the call's time limit) become one report. Checked on the real
six-mode H100 result: split by mode into two files and merged back, it gives the same results and
the same ratio table; runs of another workload or GPU, or a mode given twice, are refused."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIX_MODES = ROOT / "benchmarks" / "gpu" / "results" / "2026-11-25-h100-qwen0.5b-math500-6modes.json"


def _script():
    spec = importlib.util.spec_from_file_location("engine_rollouts", ROOT / "benchmarks" / "engine_rollouts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split(tmp_path: Path, modes_a: list[str]) -> tuple[dict, Path, Path]:
    """The real report as two runs: ``modes_a`` in the first, the other modes in the second."""
    full = json.loads(SIX_MODES.read_text())
    parts = []
    for name, keep in (("a", [m for m in full["results"] if m in modes_a]),
                       ("b", [m for m in full["results"] if m not in modes_a])):
        part = copy.deepcopy(full)
        part["results"] = {m: full["results"][m] for m in keep}
        part["args"]["modes"] = ",".join(keep)
        part["args"]["out"] = f"/root/out/{name}.json"  # output paths may differ between calls
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(part))
        parts.append(path)
    return full, parts[0], parts[1]


def test_split_runs_merge_back_to_the_one_run_report(tmp_path):
    er = _script()
    full, a, b = _split(tmp_path, ["nospec_sync", "nospec", "das"])
    out = tmp_path / "merged.json"
    assert er.main(["--merge", str(a), str(b), "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert set(merged["results"]) == set(full["results"])
    assert all(merged["results"][m] == full["results"][m] for m in full["results"])
    # the ratio table is computed over the union: ratios across files (das vs ngram) included
    assert merged["summary"] == er.summarize(full["results"])
    assert merged["summary"]["das"]["ratio_vs_ngram"] == pytest.approx(
        sum(e["seconds"] for e in full["results"]["das"]["epochs"])
        / sum(e["seconds"] for e in full["results"]["ngram"]["epochs"]))
    assert [f["modes"] for f in merged["merged_from"]] == [["nospec_sync", "nospec", "das"], ["ngram", "das_flat", "suffix"]]
    assert merged["machine"]["gpu"] == "NVIDIA H100 80GB HBM3"
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.parametrize("change, message", [
    (lambda r: r["args"].update(max_tokens=4096), "workload differs from"),
    (lambda r: r["args"].update(das=[]), "in das"),
    (lambda r: r["machine"].update(gpu="NVIDIA H200"), "ran on NVIDIA H200"),
    (lambda r: r["results"].update(das={"epochs": []}), "modes ['das'] are already in an earlier file"),
])
def test_runs_of_another_workload_are_refused(tmp_path, capsys, change, message):
    er = _script()
    _full, a, b = _split(tmp_path, ["nospec_sync", "das"])
    report = json.loads(b.read_text())
    change(report)
    b.write_text(json.dumps(report))
    out = tmp_path / "merged.json"
    assert er.main(["--merge", str(a), str(b), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert _script().main(["--merge", str(tmp_path / "nope.json"), "--out", str(tmp_path / "m.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
