"""benchmarks/step_timeline.py: the engine step timeline (ms per step by kind and batch size) that
``engine_rollouts.py`` records in the engine process for every mode. The reductions on synthetic
records; the recorder on real CPU vLLM engines (no speculation and DAS) through the benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import step_timeline as st  # noqa: E402
from engine_fixtures import run_benchmark  # noqa: E402


def test_kind_of_a_step():
    assert st.kind(n=4, tokens=4, spec=0) == "plain"
    assert st.kind(n=4, tokens=20, spec=16) == "drafted"
    assert st.kind(n=4, tokens=40, spec=16) == "prefill"  # prompt tokens besides the drafts
    assert st.kind(n=2, tokens=300, spec=0) == "prefill"


def test_summarize_times_each_step_to_the_next_call():
    # 3 plain steps of 200 requests at 10 ms, then 2 drafted steps of 40 requests at 4 ms, then a
    # last (untimed) step; an empty call (no request) is dropped
    rec = {"t": [0.0, 0.010, 0.020, 0.030, 0.030, 0.034, 0.038],
           "n": [200, 200, 200, 40, 0, 40, 40],
           "tokens": [200, 200, 200, 200, 0, 200, 40],
           "spec": [0, 0, 0, 160, 0, 160, 0]}
    s = st.summarize(rec)
    assert (s["steps"], s["timed_steps"], s["spec_slots"]) == (6, 5, 320)
    assert s["by_kind"]["plain"]["steps"] == 3 and s["by_kind"]["plain"]["ms_mean"] == pytest.approx(10.0)
    assert s["by_kind"]["drafted"]["steps"] == 2 and s["by_kind"]["drafted"]["ms_mean"] == pytest.approx(4.0)
    rows = {(r["bucket"], r["kind"]): r for r in s["by_batch"]}
    assert set(rows) == {("129-256", "plain"), ("33-64", "drafted")}
    assert rows[("33-64", "drafted")]["draft_slots_per_request"] == pytest.approx(4.0)
    assert [r["bucket"] for r in s["by_batch"]] == ["33-64", "129-256"]  # buckets in order


def test_merge_and_ratios_against_no_speculation():
    das = st.merge([st.summarize({"t": [0, 0.004, 0.008, 0.018], "n": [40, 40, 200, 200],
                                  "tokens": [200, 200, 200, 200], "spec": [160, 160, 0, 0]}),
                    st.summarize({"t": [0, 0.006, 0.016], "n": [40, 200, 200], "tokens": [200, 200, 200],
                                  "spec": [160, 0, 0]})])
    assert das["by_kind"]["drafted"] == {"steps": 3, "ms_mean": pytest.approx(14 / 3, abs=1e-4), "seconds": pytest.approx(0.014)}
    base = st.summarize({"t": [0, 0.002, 0.004, 0.010, 0.016], "n": [40, 40, 200, 200, 200],
                         "tokens": [40, 40, 200, 200, 200], "spec": [0] * 5})
    got = {(r["bucket"], r["kind"]): r["ratio"] for r in st.ratios(das, base)}
    assert got[("33-64", "drafted")] == pytest.approx((14 / 3) / 2.0, abs=1e-4)
    assert got[("129-256", "plain")] == pytest.approx(10 / 6, abs=1e-4)


@pytest.mark.engine
def test_engine_rollouts_records_each_epochs_steps(tmp_path):
    out = tmp_path / "er.json"
    proc = run_benchmark(tmp_path, "engine_rollouts.py", 4, "--samples", "2", "--epochs", "2", "--max-tokens", "24",
                         "--temperature", "0", "--modes", "nospec,das_flat", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    for e in results["nospec"]["epochs"]:
        tl = e["step_timeline"]
        assert tl["spec_slots"] == 0 and set(tl["by_kind"]) <= {"plain", "prefill"}
        assert sum(k["steps"] for k in tl["by_kind"].values()) == tl["timed_steps"] == tl["steps"] - 1
        assert tl["steps"] >= e["max_response_length"]  # one token per request per decode step
        assert all(r["mean_requests"] <= 8 for r in tl["by_batch"])
    drafted = 0
    for e in results["das_flat"]["epochs"]:
        tl = e["step_timeline"]
        assert sum(k["steps"] for k in tl["by_kind"].values()) == tl["timed_steps"]
        drafted += tl["by_kind"].get("drafted", {}).get("steps", 0)
        assert tl["steps"] <= e["das"]["epoch_steps"] + 1  # every engine step passes the proposer
    assert drafted > 0  # greedy epoch 2 repeats epoch 1: the flat budget drafts
