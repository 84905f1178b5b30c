"""Online tuning of per-(class, bucket) budgets (policy/tuning.py), alone and in the speculator:
AIMD above the class budget for the long class past the first bucket; bounded, logged, driven by
the acceptance measured in the run."""

from __future__ import annotations

import logging

from openrlhf_das.config import DASConfig, LengthClass
from openrlhf_das.config import ClassBudget
from openrlhf_das.policy import BudgetTuner, Counts, RequestTuner
from openrlhf_das.speculator import DASSpeculator
from test_speculator import request, response, snapshot

L, M, S = LengthClass.LONG, LengthClass.MEDIUM, LengthClass.SHORT


def tuner(**tuning) -> BudgetTuner:
    cfg = DASConfig().with_overrides({"tuning.mode": "aimd", "tuning.min_drafted": 10, "budgets.long.tokens": 8,
                                      "budgets.long.factor": 2.0,
                                      **{f"tuning.{k}": v for k, v in tuning.items()}})
    return BudgetTuner(cfg)


def feed(t: BudgetTuner, cell, start_step: int, windows: list[tuple[int, int]]) -> None:
    """Windows of (drafted, accepted) appended to ``cell``'s cumulative counts, one per step."""
    c = t_counts = getattr(t, "_test_counts", {}).get(cell, Counts())
    for i, (d, a) in enumerate(windows):
        c = Counts(drafted=c.drafted + d, accepted=c.accepted + a)
        t.observe(start_step + i, {cell: c})
    t._test_counts = {**getattr(t, "_test_counts", {}), cell: c}
    del t_counts


def test_additive_increase_multiplicative_decrease_above_the_class_budget() -> None:
    t = tuner(increase_at=0.5, decrease_at=0.2, factor_step=0.5, max_factor=3.0)
    cell = ("long", 1)
    feed(t, cell, 1, [(10, 6)])
    assert t.budget(L, 1).tokens == 8 and t.budget(L, 1).factor == 2.5  # tokens at k = 8, factor + 0.5
    assert t.budget(L, 2) == t.config.budgets.long  # another bucket keeps the class budget
    feed(t, cell, 2, [(10, 10)] * 20)  # all accepted, forever: capped at max_factor
    assert t.budget(L, 1).factor == 3.0
    feed(t, cell, 30, [(10, 0)])  # one poor window: the excess over 2.0 is halved
    assert t.budget(L, 1).factor == 2.5
    feed(t, cell, 31, [(10, 0)] * 20)  # poor forever: never below the class budget
    assert t.budget(L, 1).tokens == 8 and t.budget(L, 1).factor == 2.0
    feed(t, cell, 60, [(10, 3)] * 5)  # between the thresholds: unchanged
    assert t.budget(L, 1).factor == 2.0


def test_reactions_are_monotone_in_the_measured_acceptance() -> None:
    """From the same state, a better-accepted window never leaves a smaller budget."""
    results = []
    for accepted in range(0, 11):
        t = tuner(increase_at=0.5, decrease_at=0.2)
        feed(t, ("long", 2), 1, [(10, 10)] * 2 + [(10, accepted)])
        b = t.budget(L, 2)
        results.append((b.tokens, b.factor))
    assert results == sorted(results)
    assert results[0][1] < results[-1][1]


def test_tokens_grow_to_k_only() -> None:
    cfg = DASConfig().with_overrides({"tuning.mode": "aimd", "tuning.min_drafted": 10, "tuning.classes": ["medium", "long"],
                                      "tuning.from_bucket": 0, "budgets.medium.tokens": 2, "budgets.long.tokens": 6})
    t = BudgetTuner(cfg)
    feed(t, ("medium", 0), 1, [(10, 10)] * 10)
    assert t.budget(M, 0).tokens == 6  # 2 + 1 per window, capped at k = 6


def test_only_configured_classes_and_buckets_are_tuned() -> None:
    t = tuner(increase_at=0.5)
    for cell in (("long", 0), ("medium", 1), ("medium", 0)):  # first bucket / not a tuned class
        feed(t, cell, 1, [(100, 100)] * 5)
    assert t.changes == [] and t.table() == {}
    assert t.budget(L, 0) == t.config.budgets.long and t.budget(M, 1) == t.config.budgets.medium
    assert t.tuned(("long", 1)) and not t.tuned(("long", 0)) and not t.tuned(("short", 3))


def test_cells_wait_for_enough_drafts_and_zero_budget_classes_stay_off() -> None:
    t = tuner(increase_at=0.5, classes=["short", "long"])
    t.observe(1, {("long", 1): Counts(drafted=9, accepted=9), ("short", 1): Counts(drafted=50, accepted=50)})
    assert t.budget(L, 1).tokens == 8 and t.changes == []  # 9 < min_drafted: not judged yet
    assert t.budget(S, 1).tokens == 0  # short (0 tokens) never drafts
    t.observe(2, {("long", 1): Counts(drafted=4, accepted=0)})  # the tracker was reset: re-baselined
    assert t.changes == []


def test_every_change_is_logged(caplog) -> None:
    t = tuner(increase_at=0.5, decrease_at=0.2)
    with caplog.at_level(logging.DEBUG, logger="openrlhf_das.policy.tuning"):
        feed(t, ("long", 1), 1, [(10, 10), (10, 10), (10, 0), (10, 3)])
    assert [(c["step"], c["factor"]) for c in t.changes] == [(1, 2.5), (2, 3.0), (3, 2.5)]
    assert all(set(c) == {"step", "class", "bucket", "tokens", "factor", "rate"} for c in t.changes)
    assert sum("DAS tuning" in r.getMessage() for r in caplog.records) == 3
    t.max_changes = 2
    feed(t, ("long", 1), 5, [(10, 10)])
    assert len(t.changes) == 2 and t.changes[-1]["step"] == 5  # bounded log, newest kept


def test_tuning_off_keeps_class_budgets() -> None:
    t = BudgetTuner(DASConfig())
    t.observe(1, {("long", 1): Counts(drafted=1000, accepted=1000)})
    assert t.budget(L, 1) == DASConfig().budgets.long and t.table() == {}


def test_speculator_grows_a_well_accepted_cell_from_measured_acceptance() -> None:
    cfg = DASConfig().with_overrides({"shared_own_text": False, "promotion.tail_running": 0, "tuning.mode": "aimd",
                                      "tuning.min_drafted": 2, "tuning.increase_at": 0.9, "tuning.factor_step": 1.0,
                                      "tuning.classes": ["medium"], "tuning.from_bucket": 0,
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


# ---------------------------------------------------------------------------- per request
def request_tuner(**request) -> RequestTuner:
    cfg = DASConfig().with_overrides({"budgets.long.tokens": 8, "budgets.long.factor": 2.0, "tuning.max_factor": 6.0,
                                      "tuning.request.mode": "aimd", "tuning.request.window": 10,
                                      **{f"tuning.request.{k}": v for k, v in request.items()}})
    return RequestTuner(cfg)


def test_request_scale_follows_its_own_acceptance_within_bounds() -> None:
    t = request_tuner(increase_at=0.5, decrease_at=0.2, scale_step=0.5, max_scale=4.0, min_scale=1.0)
    medium = ClassBudget(tokens=2, factor=1.0)
    t.observe("a", 6, 6)
    assert t.scale("a") == 1.0  # 6 < window: not judged yet
    t.observe("a", 4, 3)  # window of 10 at 0.9
    assert t.scale("a") == 1.5 and t.budget("a", medium) == ClassBudget(tokens=3, factor=1.5)
    for _ in range(20):
        t.observe("a", 10, 10)
    assert t.scale("a") == 4.0  # max_scale
    assert t.budget("a", ClassBudget(tokens=8, factor=2.0)) == ClassBudget(tokens=8, factor=6.0)  # k, max_factor
    t.observe("a", 10, 1)  # poor: the excess over 1 halved
    assert t.scale("a") == 2.5
    for _ in range(10):
        t.observe("a", 10, 0)
    assert t.scale("a") == 1.0  # min_scale 1: never below the cell budget
    assert t.budget("b", medium) == medium and t.scale("b") == 1.0  # another request: untouched
    t.forget("a")
    assert t.scale("a") == 1.0 and t.changes > 0


def test_request_scale_below_one_only_outside_the_tail() -> None:
    t = request_tuner(decrease_at=0.2, min_scale=0.25)  # default max_scale 1
    long = ClassBudget(tokens=8, factor=2.0)
    for _ in range(5):
        t.observe("a", 10, 0)
    assert t.scale("a") == 0.25 and t.budget("a", long) == ClassBudget(tokens=2, factor=0.5)
    assert t.budget("a", long, tail=True) == long  # a tail step: at least the cell budget
    assert t.budget("a", ClassBudget(tokens=0, factor=1.0)).tokens == 0  # no budget stays none
    assert t.budget("a", ClassBudget(tokens=1, factor=1.0)).tokens == 1  # at least one token
    monotone = []
    for accepted in range(11):  # from the same state, a better window never leaves a smaller scale
        u = request_tuner(increase_at=0.5, decrease_at=0.2, min_scale=0.25, max_scale=2.0)
        u.observe("a", 10, 10)
        u.observe("a", 10, accepted)
        monotone.append(u.scale("a"))
    assert monotone == sorted(monotone) and monotone[0] < monotone[-1]


def test_request_tuning_off_keeps_budgets() -> None:
    t = RequestTuner(DASConfig())
    t.observe("a", 100, 0)
    assert t.scale("a") == 1.0 and t.budget("a", DASConfig().budgets.long) == DASConfig().budgets.long


def test_request_tuning_defaults_only_cut() -> None:
    t = RequestTuner(DASConfig().with_overrides({"tuning.request.mode": "aimd"}))
    for _ in range(10):
        t.observe("a", 16, 16)  # well accepted: max_scale 1 keeps the budget
    assert t.scale("a") == 1.0
    for _ in range(10):
        t.observe("a", 16, 0)
    assert t.scale("a") == 0.25  # min_scale


def test_speculator_scales_a_request_by_its_own_acceptance() -> None:
    """Two requests of one class: the one whose drafts are accepted grows to k, the one whose
    drafts are rejected falls to its min_scale share of the class budget."""
    cfg = DASConfig().with_overrides({"shared_own_text": False, "promotion.tail_running": 0,
                                      "budgets.medium.tokens": 4, "budgets.medium.factor": 4.0, "budgets.long.tokens": 8,
                                      "tuning.request.mode": "aimd", "tuning.request.window": 4,
                                      "tuning.request.scale_step": 1.0, "tuning.request.min_scale": 0.25,
                                      "tuning.request.max_scale": 2.0})
    spec = DASSpeculator(cfg)
    spec.load_snapshot(snapshot())
    r1 = response("p1")  # p1: medium
    good, bad, last_good, last_bad = 2, 2, 0, 0
    lengths_good, lengths_bad = [], []
    for _ in range(12):
        d_good, d_bad = spec.step([request("g", "p1", r1[:good], num_sampled=last_good),
                                   request("b", "p1", r1[:bad], variant=1, num_sampled=last_bad)])
        lengths_good.append(len(d_good))
        lengths_bad.append(len(d_bad))
        last_good = len(d_good) + 1  # every draft token accepted
        good += last_good
        last_bad = 1  # every draft token rejected
        bad += 1
    assert lengths_good[0] == 4 and max(lengths_good) == 8  # grew from the class budget to k
    assert lengths_bad[0] == 4 and lengths_bad[-1] == 1  # 4 x 0.25
    assert spec.stats()["request_tuning_changes"] >= 3
    spec.finish("g")
    assert "g" not in spec.request_tuner.requests
