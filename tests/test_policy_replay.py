"""benchmarks/policy_replay.py: the policies it compares, the targets it computes and the report
it writes, on a tiny synthetic trace (the committed real-trace report is its output)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from policy_replay import das_config, markdown, policy_names, run_k  # noqa: E402
from replay import CostModel, read_trace  # noqa: E402
from synthetic_trace import TraceParams, write_trace  # noqa: E402

from openrlhf_das.config import DASConfig  # noqa: E402

TINY = TraceParams(problems=4, samples=4, steps=3, median_len=80, max_len=240, prompt_len=(8, 16))


@pytest.fixture(scope="module")
def tiny_k4(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("trace") / "tiny.jsonl"
    write_trace(path, TINY, seed=3)
    _, steps = read_trace(path)
    base = DASConfig.from_yaml(ROOT / "configs" / "das" / "math.yaml").with_overrides(
        {"max_new_tokens": 240, "gate.mode": "off"})
    return run_k(steps, base, 4, CostModel(), arctic=True, extra_costs=(CostModel.parse_ms("2.63:0.0145:2.4"),))


def test_policies_and_configs(tiny_k4: dict) -> None:
    pol = tiny_k4["policies"]
    assert list(pol) == [*policy_names(4, arctic=True), "das"]
    assert [n for n in pol if n.startswith("flat/")] == ["flat/4x1", "flat/4x2"]  # flat budgets up to k_max
    assert pol["das/aimd"]["config"]["budgets"]["long"]["tokens"] == 4
    assert pol["das/aimd"]["config"]["tuning"]["mode"] == "aimd"
    assert pol["das/static"]["config"]["tuning"]["mode"] == "off"
    assert pol["das/request"]["config"]["tuning"]["request"]["mode"] == "aimd"  # das + per-request tuning
    assert pol["das/request"]["config"]["tuning"]["mode"] == "aimd"
    assert pol["das/aimd"]["config"]["tuning"]["request"]["mode"] == "off"  # as math.yaml ships it
    assert pol["das"]["same_as"] == "das/aimd"  # math.yaml ships tuning on
    assert pol["das"]["makespan_s"] == pol["das/aimd"]["makespan_s"]
    assert pol["none"]["accepted"] == [0, 0, 0]
    for name, p in pol.items():
        assert len(p["makespan_s"]) == 3 and p["tokens"] == pol["none"]["tokens"], name
        assert all(a <= d for a, d in zip(p["accepted"], p["drafted"])), name


def test_targets_are_ratios_of_the_recorded_makespans(tiny_k4: dict) -> None:
    pol, t = tiny_k4["policies"], tiny_k4["targets"]
    assert [x["epoch"] for x in t["epochs"]] == [1, 2]  # epoch 0 has no history
    for x in t["epochs"]:
        e, best = x["epoch"], x["best_flat"]
        assert pol[best]["makespan_s"][e] == min(pol[n]["makespan_s"][e] for n in pol if n.startswith("flat/"))
        assert x["das_vs_best_flat"] == pytest.approx(pol["das"]["makespan_s"][e] / pol[best]["makespan_s"][e])
        assert x["das_vs_none"] == pytest.approx(pol["das"]["makespan_s"][e] / pol["none"]["makespan_s"][e])
        assert x["das_request_vs_best_flat"] == pytest.approx(
            pol["das/request"]["makespan_s"][e] / pol[best]["makespan_s"][e])
    assert t["das_vs_none_met"] == all(x["das_vs_none"] <= 0.70 for x in t["epochs"])
    assert set(t["arctic_tokens_per_verify_step"]) == {"arctic/global", "arctic/problem", "arctic/both"}
    assert all(v > 1.0 for v in t["arctic_tokens_per_verify_step"].values())
    table = markdown({"k_max": {"4": json.loads(json.dumps(tiny_k4))}})
    assert table.count("\n| 4 |") == 4 and "arctic SuffixDecodingCache" in table  # one table per cost model
    assert "Cost model 2.63+0.0145/token+2.4/drafting step ms" in table


def test_extra_cost_model_targets(tiny_k4: dict) -> None:
    """The extra cost model's targets are ratios of its own makespans, its best flat its own."""
    label = "2.63+0.0145/token+2.4/drafting step ms"
    pol, t = tiny_k4["policies"], tiny_k4["targets_by_cost"][label]
    for x in t["epochs"]:
        e, best = x["epoch"], x["best_flat"]
        ms = {n: p["makespan_s_by_cost"][label][e] for n, p in pol.items()}
        assert ms[best] == min(v for n, v in ms.items() if n.startswith("flat/"))
        assert x["das_vs_best_flat"] == pytest.approx(ms["das"] / ms[best])
        assert x["aimd_vs_static"] == pytest.approx(ms["das/aimd"] / ms["das/static"])


def test_das_config_scales_the_long_budget_only() -> None:
    base = DASConfig().with_overrides({"budgets.medium.tokens": 4, "budgets.long.tokens": 8})
    c = das_config(base, 16, tuning=False)
    assert (c.budgets.short.tokens, c.budgets.medium.tokens, c.budgets.long.tokens) == (0, 4, 16)
    assert das_config(base, 2, tuning=True).budgets.medium.tokens == 2 and c.max_budget == 16


def test_policy_gap_split_prices_the_replayed_makespan(tmp_path: Path) -> None:
    """policy_gap.py: T x base + query tokens x per_token (+ drafting steps) is the replay's
    makespan, query tokens = verify steps + draft tokens (~ response tokens + rejected draft
    tokens), and T is the verify steps of the request that finishes last."""
    from policy_gap import price, run_policy

    path = tmp_path / "tiny.jsonl"
    write_trace(path, TINY, seed=3)
    base = DASConfig.from_yaml(ROOT / "configs" / "das" / "math.yaml").with_overrides(
        {"max_new_tokens": 240, "gate.mode": "off"})
    gpu = CostModel.parse_ms("2.63:0.0145:2.4")
    for name, flat in (("das", None), ("das/oracle", None), ("flat/4x2", "flat/4x2")):
        _, run = run_policy((name, str(path), base, 4, flat))
        for e, step in enumerate(run["steps"]):
            if e == 0:
                continue
            eng = run["engine_steps"][e]
            reqs = {rid: r for rid, r in run["requests"].items() if rid.startswith(f"{e}/")}
            assert price(eng, CostModel())["makespan_s"] == pytest.approx(step["makespan_s"]), name
            assert price(eng, CostModel())["T"] == step["engine_steps"] == max(r["steps"] for r in reqs.values())
            assert price(eng, gpu)["q"] == sum(r["steps"] for r in reqs.values()) + step["drafted"]
            assert sum(r["drafted"] for r in reqs.values()) == step["drafted"]
            # a request's last draft is never seen verified by the speculator: counted as rejected
            unseen = step["accepted"] - sum(r["accepted"] for r in reqs.values())
            assert 0 <= unseen <= 4 * len(reqs)
            assert price(eng, gpu)["q"] <= step["tokens"] + step["drafted"] - step["accepted"] + len(reqs)


def test_gated_flat_rows(tmp_path: Path) -> None:
    """With the config's gate kept (``--gate``), the flat budgets are replayed without the gate
    (the issue's baseline, ``best_flat``) and behind it (``flat/<t>x<f>+gate``): a gated flat
    request drafts only in steps of at most ``gate.max_running`` running requests."""
    path = tmp_path / "tiny.jsonl"
    write_trace(path, TINY, seed=3)
    _, steps = read_trace(path)
    base = DASConfig.from_yaml(ROOT / "configs" / "das" / "math.yaml").with_overrides(
        {"max_new_tokens": 240, "gate.max_running": 8})  # 16 requests a step: gated until 8 run
    rep = run_k(steps, base, 4, CostModel(), arctic=False)
    pol, t = rep["policies"], rep["targets"]
    assert [n for n in pol if n.startswith("flat/")] == ["flat/4x1", "flat/4x2", "flat/4x1+gate", "flat/4x2+gate"]
    for n in ("flat/4x1", "flat/4x2"):
        gated, free = pol[f"{n}+gate"], pol[n]
        assert gated["speculator"]["gated_steps"] > 0 == free["speculator"]["gated_steps"]
        assert sum(gated["drafted"]) < sum(free["drafted"])
        assert gated["tokens"] == free["tokens"]
    for x in t["epochs"]:
        e = x["epoch"]
        assert x["best_flat"] in ("flat/4x1", "flat/4x2")  # the baseline stays ungated
        assert x["best_gated_flat"].endswith("+gate")
        assert x["das_vs_best_gated_flat"] == pytest.approx(
            pol["das"]["makespan_s"][e] / pol[x["best_gated_flat"]]["makespan_s"][e])
    assert "das / best gated flat" in markdown({"k_max": {"4": json.loads(json.dumps(rep))}})


def test_bulk_seconds_is_none_makespan_split(tmp_path: Path) -> None:
    """bulk_seconds: with every step counted as bulk it is ``none``'s replayed makespan (one
    engine step per token, every running request one query token); behind a gate, a gated
    policy's makespan minus it is its tail, so das's tail ratio is consistent with das / none."""
    from policy_replay import bulk_seconds, targets

    path = tmp_path / "tiny.jsonl"
    write_trace(path, TINY, seed=3)
    _, steps = read_trace(path)
    gpu = CostModel.parse_ms("2.63:0.0145:2.4")
    base = DASConfig.from_yaml(ROOT / "configs" / "das" / "math.yaml").with_overrides(
        {"max_new_tokens": 240, "gate.max_running": 8})
    rep = run_k(steps, base, 4, CostModel(), arctic=False, extra_costs=(gpu,))
    pol = rep["policies"]
    assert bulk_seconds(steps, -1, CostModel()) == pytest.approx(pol["none"]["makespan_s"])
    label = "2.63+0.0145/token+2.4/drafting step ms"
    assert bulk_seconds(steps, -1, gpu) == pytest.approx(pol["none"]["makespan_s_by_cost"][label])
    bulk = bulk_seconds(steps, 8, CostModel())
    assert all(0 < b < n for b, n in zip(bulk, pol["none"]["makespan_s"]))
    t = targets(pol, 3, bulk)
    for x in t["epochs"]:
        e = x["epoch"]
        share = bulk[e] / pol["none"]["makespan_s"][e]
        assert x["bulk_share"] == pytest.approx(share)
        assert x["das_vs_none"] == pytest.approx(share + (1 - share) * x["das_tail_vs_none_tail"])
        assert share + (1 - share) * x["tail_needed_for_none_target"] == pytest.approx(0.70)
    assert rep["targets"]["epochs"][0]["bulk_share"] == pytest.approx(t["epochs"][0]["bulk_share"])
    assert "das tail / none tail" in markdown({"k_max": {"4": json.loads(json.dumps(rep))}})
