"""Online AIMD tuning of per-(class, bucket) budgets (policy/tuning.py), alone and in the
speculator: bounded, logged, driven by the acceptance measured in the run."""

from __future__ import annotations

import numpy as np

from openrlhf_das.config import DASConfig, LengthClass
from openrlhf_das.policy import BudgetTuner, Counts
from openrlhf_das.speculator import DASSpeculator, StepRequest
from test_speculator import prompt, request, response, snapshot

L, M, S = LengthClass.LONG, LengthClass.MEDIUM, LengthClass.SHORT


def tuner(**tuning) -> BudgetTuner:
    cfg = DASConfig().with_overrides({"tuning.mode": "aimd", "tuning.min_drafted": 10, "budgets.long.tokens": 8,
                                      **{f"tuning.{k}": v for k, v in tuning.items()}})
    return BudgetTuner(cfg)


def test_additive_increase_multiplicative_decrease_within_bounds() -> None:
    t = tuner(increase_at=0.5, decrease_at=0.2, factor_step=0.5, max_factor=3.0)
    cell = {("medium", 0): Counts(drafted=10, accepted=6, verify_steps=5, decode_steps=5)}
    t.observe(1, cell)
    assert t.budget(M, 0).tokens == 3 and t.budget(M, 0).factor == 1.5  # 2 + 1, 1.0 + 0.5
    assert t.budget(M, 1).tokens == 2  # another bucket keeps the class budget
    for step in range(2, 30):  # all accepted, forever: capped at k = 8 and max_factor
        cell[("medium", 0)] = Counts(drafted=10 * step, accepted=10 * step)
        t.observe(step, cell)
    assert t.budget(M, 0).tokens == 8 and t.budget(M, 0).factor == 3.0
    cell[("medium", 0)] = Counts(drafted=300, accepted=280)  # window: 10 drafted, 0 accepted
    t.observe(31, cell)
    assert t.budget(M, 0).tokens == 4 and t.budget(M, 0).factor == 1.5  # halved
    for step in range(32, 40):
        cell[("medium", 0)] = Counts(drafted=300 + 10 * (step - 31), accepted=280)
        t.observe(step, cell)
    assert t.budget(M, 0).tokens == 1 and t.budget(M, 0).factor == 0.5  # min_tokens, min_factor
    assert [c["tokens"] for c in t.changes][:2] == [3, 4] and all(set(c) >= {"step", "rate"} for c in t.changes)


def test_cells_wait_for_enough_drafts_and_zero_budget_classes_stay_off() -> None:
    t = tuner(increase_at=0.5)
    t.observe(1, {("long", 1): Counts(drafted=9, accepted=9), ("short", 0): Counts(drafted=50, accepted=50)})
    assert t.budget(L, 1).tokens == 8 and t.changes == []  # 9 < min_drafted: not judged yet
    assert t.budget(S, 0).tokens == 0  # short (0 tokens) never drafts
    t.observe(2, {("long", 1): Counts(drafted=4, accepted=0)})  # the tracker was reset: re-baselined
    assert t.changes == []


def test_tuning_off_keeps_class_budgets() -> None:
    t = BudgetTuner(DASConfig())
    t.observe(1, {("medium", 0): Counts(drafted=1000, accepted=1000)})
    assert t.budget(M, 0) == DASConfig().budgets.medium and t.table() == {}


def test_speculator_grows_a_well_accepted_cell_from_measured_acceptance() -> None:
    cfg = DASConfig().with_overrides({"shared_own_text": False, "promotion.tail_running": 0, "tuning.mode": "aimd",
                                      "tuning.min_drafted": 2, "tuning.increase_at": 0.9, "tuning.factor_step": 1.0,
                                      "budgets.long.tokens": 6})
    spec = DASSpeculator(cfg)
    spec.load_snapshot(snapshot())
    r1 = response("p1")  # p1: medium (2 tokens), its history is exactly this response
    pos, sampled, lengths = 2, 0, []
    while pos < 40:
        [draft] = spec.step([request("b", "p1", r1[:pos], num_sampled=sampled)])
        assert draft == r1[pos:pos + len(draft)]  # drafts are the recorded continuation
        lengths.append(len(draft))
        sampled = len(draft) + 1  # every draft token accepted (+ the bonus token)
        pos += sampled
    assert lengths[0] == 2 and max(lengths) == 6  # grew from the class budget to k, no further
    assert spec.stats()["tuning"]["medium/0"]["tokens"] == 6 and spec.stats()["tuning_changes"] >= 4
