"""benchmarks/replay.py: greedy verification and a replay of a tiny synthetic trace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from replay import CostModel, read_trace, replay, report, verify  # noqa: E402
from synthetic_trace import TraceParams, generate, write_trace  # noqa: E402

from openrlhf_das.config import DASConfig  # noqa: E402

TINY = TraceParams(problems=6, samples=4, steps=3, median_len=120, max_len=400, prompt_len=(8, 16))


@pytest.mark.parametrize(
    "draft, response, pos, expected",
    [
        ([], [5, 6, 7], 0, (0, 1)),  # no draft: one token per step
        ([9], [5, 6, 7], 0, (0, 1)),  # first draft token wrong: only the bonus token
        ([5, 6, 9], [5, 6, 7, 8], 0, (2, 3)),  # longest matching prefix + bonus
        ([5, 9, 7], [5, 6, 7, 8], 0, (1, 2)),  # a later match after a mismatch does not count
        ([7, 8], [5, 6, 7, 8, 9], 2, (2, 3)),  # continuation starts at pos
        ([7, 8, 9], [5, 6, 7, 8], 2, (2, 2)),  # response ends: no bonus past its end
        ([8], [5, 6, 7, 8], 3, (1, 1)),
    ],
)
def test_verify(draft: list[int], response: list[int], pos: int, expected: tuple[int, int]) -> None:
    assert verify(draft, response, pos) == expected


def test_cost_model() -> None:
    cost = CostModel(base_s=0.01, per_token_s=1e-5)
    assert cost.step_seconds(100) == pytest.approx(0.011)
    assert cost.step_seconds(100, drafted=True) == pytest.approx(0.011)  # no drafting overhead by default
    gpu = CostModel.parse_ms("2.63:0.0145:2.4")
    assert (gpu.base_s, gpu.per_token_s, gpu.draft_step_s) == pytest.approx((2.63e-3, 0.0145e-3, 2.4e-3))
    assert CostModel.parse_ms("10:0.005").as_dict() == pytest.approx(CostModel().as_dict())
    assert gpu.step_seconds(10, drafted=True) - gpu.step_seconds(10) == pytest.approx(2.4e-3)


def test_extra_cost_models_price_the_same_simulation(tiny_trace: tuple[dict, dict]) -> None:
    """A drafting-step overhead adds exactly its cost per engine step that drafted; the
    default model's makespans do not move."""
    _, steps = tiny_trace
    base = DASConfig(shared_own_text=False)
    draft_step = CostModel(draft_step_s=0.002)
    plain = replay(steps, ["problem"], base, CostModel())["problem"]
    both = replay(steps, ["none", "problem"], base, CostModel(), extra_costs=[draft_step])
    for a, b in zip(plain.steps, both["problem"].steps):
        assert b["makespan_s"] == a["makespan_s"] and b["engine_steps"] == a["engine_steps"]
    assert [s["makespan_s_extra"][0] for s in both["none"].steps] == [s["makespan_s"] for s in both["none"].steps]
    extra = [s["makespan_s_extra"][0] - s["makespan_s"] for s in both["problem"].steps]
    assert extra[0] == 0.0  # step 0 has no history: no drafts, no overhead
    assert all(0 < x <= 0.002 * s["engine_steps"] + 1e-12 for x, s in zip(extra[1:], both["problem"].steps[1:]))
    assert all(round(x / 0.002, 6).is_integer() for x in extra)  # whole drafting steps


def test_trace_is_labelled_and_deterministic(tmp_path: Path) -> None:
    a = list(generate(TINY, seed=1))
    assert a[0]["synthetic"] is True and a[0]["params"]["problems"] == 6
    assert a == list(generate(TINY, seed=1))
    assert a != list(generate(TINY, seed=2))
    records = a[1:]
    assert len(records) == 6 * 4 * 3
    assert {tuple(sorted(r)) for r in records} == {
        ("problem_id", "prompt_token_ids", "response_token_ids", "sample_index", "step")
    }
    path = tmp_path / "t.jsonl.zst"
    write_trace(path, TINY, seed=1)
    head, steps = read_trace(path)
    assert head == json.loads(json.dumps(a[0]))
    assert sorted(steps) == [0, 1, 2] and sum(len(v) for v in steps.values()) == 72


@pytest.fixture(scope="module")
def tiny_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """(header, samples by step) of the TINY synthetic trace, written and read back once."""
    path = tmp_path_factory.mktemp("trace") / "tiny.jsonl"
    write_trace(path, TINY, seed=0)
    return read_trace(path)


@pytest.fixture(scope="module")
def tiny_report(tiny_trace: tuple[dict, dict]) -> dict:
    head, steps = tiny_trace
    cost = CostModel()
    base = DASConfig(shared_own_text=False)  # history only: no own text in the problem trees
    results = replay(steps, ["none", "problem", "das", "das+siblings"], base, cost)
    rep = report(results, base.length_buckets, head, cost)
    rep["_steps"] = steps
    return rep


def test_none_emits_one_token_per_step(tiny_report: dict) -> None:
    none = tiny_report["policies"]["none"]
    steps = tiny_report["_steps"]
    tokens = sum(s.response.size for v in steps.values() for s in v)
    assert none["decode_steps"] == tokens and none["accepted"] == 0 and none["drafted"] == 0
    for rec in none["steps"]:
        longest = max(s.response.size for s in steps[rec["step"]])
        assert rec["engine_steps"] == longest  # the longest request sets the makespan
        cost, step_tokens = CostModel(), sum(s.response.size for s in steps[rec["step"]])
        assert rec["makespan_s"] == pytest.approx(longest * cost.base_s + step_tokens * cost.per_token_s)
    assert none["makespan_ratio_vs_none"] == 1.0


def test_history_policies_accept_from_step_two_on(tiny_report: dict) -> None:
    for name in ("problem", "das"):
        per_step = tiny_report["policies"][name]["steps"]
        assert all(rec["accepted"] > 0 for rec in per_step[1:]), name
    # the per-problem tree has nothing at the first step: drafts only come from earlier steps
    assert tiny_report["policies"]["problem"]["steps"][0]["accepted"] == 0


def test_das_shortens_makespan(tiny_report: dict) -> None:
    das = tiny_report["policies"]["das"]
    assert das["makespan_ratio_vs_none"] < 1.0
    assert das["speculator"]["faults"] == 0
    assert 0.0 < das["acceptance_rate"] <= 1.0
    by_bucket = sum(b["accepted"] for b in das["by_bucket"].values())
    assert by_bucket == das["accepted"] == sum(rec["accepted"] for rec in das["steps"])


@pytest.fixture(scope="module")
def tiny_steps(tiny_trace: tuple[dict, dict]) -> dict:
    return tiny_trace[1]


def test_padded_engine_costs_k_per_request_in_drafted_steps(tiny_steps: dict) -> None:
    cost = CostModel()
    base = DASConfig(shared_own_text=False)  # step 0 has no draft source
    plain = replay(tiny_steps, ["problem"], base, cost)["problem"]
    padded = replay(tiny_steps, ["problem"], base, cost, padded=True)["problem"]
    # a flat policy drafts the same tokens either way: only the verify cost differs
    assert [s["accepted"] for s in padded.steps] == [s["accepted"] for s in plain.steps]
    assert [s["engine_steps"] for s in padded.steps] == [s["engine_steps"] for s in plain.steps]
    assert padded.steps[0]["makespan_s"] == pytest.approx(plain.steps[0]["makespan_s"])  # no history: no drafts
    assert all(p["makespan_s"] > q["makespan_s"] for p, q in zip(padded.steps[1:], plain.steps[1:]))


def test_fill_padded_drafts_drafts_for_every_class(tiny_steps: dict) -> None:
    cost = CostModel()
    fill = replay(tiny_steps, ["das"], DASConfig(), cost, padded=True)["das"]
    classes = replay(tiny_steps, ["das"], DASConfig().with_overrides({"fill_padded_drafts": False}), cost,
                     padded=True)["das"]
    assert fill.config["fill_padded_drafts"] and not classes.config["fill_padded_drafts"]
    assert sum(s["drafted"] for s in fill.steps) > sum(s["drafted"] for s in classes.steps)
    assert sum(s["accepted"] for s in fill.steps) > sum(s["accepted"] for s in classes.steps)


def test_snapshot_scope_all_ships_problems_outside_the_batch(tiny_steps: dict) -> None:
    from drafter_sources import half_new  # noqa: PLC0415 - benchmark module, path set above
    from replay import HistoryFeed  # noqa: PLC0415
    from openrlhf_das.drafter import HistorySnapshot  # noqa: PLC0415

    renamed = half_new(tiny_steps)
    first = min(tiny_steps)
    old = {s.problem_id for s in tiny_steps[first]}
    for step, samples in renamed.items():
        ids = {s.problem_id for s in samples}
        # the first step as recorded; in each later one half the problems are new
        assert (ids == old) if step == first else (len(ids - old) == len(old) // 2)
    feed_batch, feed_all = HistoryFeed(5, "batch"), HistoryFeed(5, "all")
    for feed in (feed_batch, feed_all):
        feed.record(first, renamed[first])
    nxt = sorted({s.problem_id for s in renamed[first + 1]})
    in_batch = HistorySnapshot.from_npz_bytes(feed_batch.snapshot_bytes(nxt, first + 1))
    in_all = HistorySnapshot.from_npz_bytes(feed_all.snapshot_bytes(nxt, first + 1))
    assert {r.problem_id for r in in_all.rollouts()} == old
    assert {r.problem_id for r in in_batch.rollouts()} == old & set(nxt)
    with pytest.raises(ValueError, match="scope"):
        HistoryFeed(5, "engine")
    # the global tree serves the new problems only with every problem in the snapshot
    acc = {
        scope: sum(s["accepted"] for s in replay(renamed, ["das+all"], DASConfig(), CostModel(),
                                                 snapshot_scope=scope)["das+all"].steps)
        for scope in ("batch", "all")
    }
    assert acc["all"] > acc["batch"]


def test_k_schedule_parsing() -> None:
    from replay import parse_k_schedule, schedule_k  # noqa: PLC0415

    sched = parse_k_schedule("8:16,32:8,64:4")
    assert sched == ((8, 16), (32, 8), (64, 4))
    assert [schedule_k(sched, n) for n in (1, 8, 9, 32, 33, 64, 65, 300)] == [16, 16, 8, 8, 4, 4, 0, 0]
    for bad in ("", "8", "8:16,8:4", "32:8,8:16", "0:4", "8:0", "a:b"):
        with pytest.raises(ValueError, match="k schedule"):
            parse_k_schedule(bad)


def test_k_schedule_sets_each_steps_k(tiny_steps: dict) -> None:
    """A schedule covering every step with the policy's largest k is the padded replay itself;
    a schedule that drafts only while few requests run drafts less, never past its k, and a k
    above the policy's largest budget is refused."""
    cost = CostModel()
    base = DASConfig(shared_own_text=False).with_overrides({"gate.mode": "off"})  # long budget 4
    k = base.max_budget
    padded = replay(tiny_steps, ["das"], base, cost, padded=True)["das"]
    whole = replay(tiny_steps, ["das"], base, cost, padded=True, k_schedule=((10_000, k),))["das"]
    assert [s["makespan_s"] for s in whole.steps] == pytest.approx([s["makespan_s"] for s in padded.steps])
    assert [s["accepted"] for s in whole.steps] == [s["accepted"] for s in padded.steps]
    tail = replay(tiny_steps, ["das"], base, cost, padded=True, k_schedule=((2, 2), (4, 1)))["das"]
    assert 0 < sum(s["drafted"] for s in tail.steps) < sum(s["drafted"] for s in padded.steps)
    assert tail.counts.drafter_request_steps < padded.counts.drafter_request_steps
    assert [s["tokens"] for s in tail.steps] == [s["tokens"] for s in padded.steps]
    # at most 2 draft tokens per request in any step: drafted <= 2 x request-steps handed to the drafter
    assert sum(s["drafted"] for s in tail.steps) <= 2 * tail.counts.drafter_request_steps
    with pytest.raises(ValueError, match="largest budget"):
        replay(tiny_steps, ["das"], base, cost, padded=True, k_schedule=((4, k + 1),))
