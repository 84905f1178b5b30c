"""Promotion relative to the run (policy/promotion.py) and its use by DASSpeculator: thresholds
from the run's limit and the problem's own history, and the tail rule."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_das.config import DASConfig, LengthClass
from openrlhf_das.policy import is_tail_step, problem_threshold, promoted_rank, run_thresholds, tail_floor
from openrlhf_das.speculator import DASSpeculator, StepRequest
from test_speculator import prompt, request, response, snapshot


def spec_with(overrides: dict[str, Any]) -> DASSpeculator:
    spec = DASSpeculator(DASConfig().with_overrides({"shared_own_text": False, "promotion.tail_running": 0,
                                                     **overrides}))
    spec.load_snapshot(snapshot())
    return spec


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 100_000), medium=st.floats(0.01, 1.0), extra=st.floats(0.0, 1.0))
def test_run_thresholds_never_lie_beyond_the_limit(limit: int, medium: float, extra: float) -> None:
    long = min(1.0, medium + extra)
    c = DASConfig().with_overrides({"promotion.medium_fraction": medium, "promotion.long_fraction": long})
    medium_at, long_at = run_thresholds(c, limit)
    assert medium_at <= long_at <= limit
    # a request that runs to the limit is long by then, whatever its base class
    assert promoted_rank(0, limit, medium_at, long_at) == 2 or long_at == limit


def test_run_thresholds_from_config_limit_and_absolute_fallback() -> None:
    c = DASConfig()
    assert run_thresholds(c) == (3000.0, 5000.0)  # no limit known: the absolute thresholds
    c = c.with_overrides({"max_new_tokens": 2048})
    assert run_thresholds(c) == pytest.approx((0.15 * 2048, 0.3 * 2048))
    assert run_thresholds(c, 1000) == pytest.approx((150.0, 300.0))  # the request's own limit wins


def test_problem_threshold_is_the_quantile_of_past_lengths() -> None:
    assert problem_threshold([10, 20, 30, 40, 50], 0.75) == 40.0
    assert problem_threshold([], 0.75) == float("inf")
    assert problem_threshold([10, 20], None) == float("inf")


def test_promoted_rank_scalars_and_arrays_agree() -> None:
    base = np.array([0, 0, 1, 0, 0])
    gen = np.array([5, 16, 16, 31, 12])
    problem_at = np.array([np.inf, np.inf, np.inf, np.inf, 10.0])
    ranks = promoted_rank(base, gen, 15.0, 30.0, problem_at)
    assert ranks.tolist() == [0, 1, 1, 2, 2]
    assert [promoted_rank(int(b), int(g), 15.0, 30.0, float(p)) for b, g, p in zip(base, gen, problem_at)] == ranks.tolist()
    assert promoted_rank(0, 0, 15.0, 30.0, floor=1) == 1  # the tail floor
    assert promoted_rank(2, 0, 15.0, 30.0) == 2  # never demotes


def test_a_short_request_past_its_problems_p75_is_long() -> None:
    spec = spec_with({"promotion.history_quantile": 0.75})
    r3 = response("p3")  # p3: short, every past response 20 tokens long
    assert spec.problem_promote_at["p3"] == 20.0
    assert spec.step([request("a", "p3", r3[:12])]) == [[]]  # short, within its history: no draft
    x = list(range(9000, 9040))  # p3's request runs past its history: long (4 tokens)
    req = StepRequest("b", np.array(prompt("p3") + r3 + x[:10], np.int32), len(prompt("p3")), "p3")
    assert spec.class_of(req) is LengthClass.LONG
    req = StepRequest("c", np.array(prompt("p3") + r3 + r3[:6], np.int32), len(prompt("p3")), "p3")
    assert spec.step([req]) == [r3[6:10]]


def test_promotion_follows_the_runs_limit() -> None:
    spec = spec_with({"promotion.history_quantile": None, "max_new_tokens": 100})
    r3 = response("p3")
    assert spec.step([request("a", "p3", r3[:14])]) == [[]]  # 14 <= 15 = 0.15 x 100
    assert spec.step([request("b", "p3", r3[:16])]) == [r3[16:18]]  # medium: 2 tokens
    # the request's own limit wins over the config's: 16 > 0.3 x 50
    req = request("c", "p3", r3[:16])
    req.max_new_tokens = 50
    assert spec.class_of(req) is LengthClass.LONG
    # the absolute thresholds (3000 / 5000) would never have promoted any of these


def test_tail_rule_gives_every_running_request_a_budget() -> None:
    spec = spec_with({"promotion.tail_running": 2, "promotion.history_quantile": None})
    r0, r3, r4 = response("p0"), response("p3"), response("p4")
    batch = [request("a", "p0", r0[:10]), request("c", "p3", r3[:10]), request("d", "p4", r4[:5])]
    assert spec.step(batch) == [r0[10:14], [], []]  # 3 running > 2: short requests stay at 0
    assert spec.step(batch[1:], num_running=2) == [r3[10:12], r4[5:7]]  # the tail: medium budget


@pytest.mark.parametrize("budgets, floor", [((0, 2, 4), 1), ((0, 0, 4), 2), ((1, 2, 4), 0)])
def test_tail_floor_is_the_lowest_class_with_a_budget(budgets: tuple[int, int, int], floor: int) -> None:
    c = DASConfig().with_overrides({f"budgets.{k}.tokens": t for k, t in zip(("short", "medium", "long"), budgets)})
    assert tail_floor(c) == floor
    spec = DASSpeculator(c)
    for cls in LengthClass:
        req = StepRequest("r", np.zeros(3, np.int32), 3, None, cls)
        assert c.budgets.of(spec.class_of(req, num_running=1)).tokens > 0


def test_tail_step_rule():
    c = DASConfig.from_dict({"promotion": {"tail_running": 32}})
    assert is_tail_step(c, 32) and is_tail_step(c, 1) and not is_tail_step(c, 33)
    assert not is_tail_step(c, None)  # unknown running count: no tail rule
    off = DASConfig.from_dict({"promotion": {"tail_running": 0}})
    assert not is_tail_step(off, 1)
