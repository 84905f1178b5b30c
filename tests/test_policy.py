"""Length-aware policy: classes, promotion, gates, cost table, quota, acceptance bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrlhf_das.config import LengthClass
from openrlhf_das.drafter import Draft
from openrlhf_das.policy import (
    AcceptanceTracker,
    CostModelGate,
    CostTable,
    MaxRunningGate,
    apply_quota,
    assign_length_classes,
    bucket_labels,
    promote,
)
from openrlhf_das.policy.gate import COST_TABLE_FORMAT

S, M, L = LengthClass.SHORT, LengthClass.MEDIUM, LengthClass.LONG


# ---------------------------------------------------------------------------- length classes
def test_assign_ranks_by_mean_then_max() -> None:
    lengths = {f"p{i}": [100 * i, 100 * i] for i in range(10)}  # p9 longest mean
    lengths["tie_lo"] = [450, 450]  # mean 450, max 450
    lengths["tie_hi"] = [100, 800]  # mean 450, max 800 -> ranks above tie_lo
    pids = [*lengths, "p3"]  # duplicates are fine
    classes = assign_length_classes(pids, lengths, long_ratio=0.25, medium_ratio=0.25)
    # 12 known problems: 3 long, 3 medium, 6 short
    assert [p for p in lengths if classes[p] is L] == ["p7", "p8", "p9"]
    assert [p for p in lengths if classes[p] is M] == ["p5", "p6", "tie_hi"]
    assert classes["tie_lo"] is S and classes["p0"] is S
    assert len(classes) == 12


def test_assign_default_ratios_and_unknown() -> None:
    lengths = {f"p{i}": [10 * (i + 1)] for i in range(10)}
    classes = assign_length_classes([*lengths, "new", "empty"], {**lengths, "empty": []}, unknown_class=S)
    counts = {c: sum(1 for p in lengths if classes[p] is c) for c in LengthClass}
    assert counts == {L: 2, M: 4, S: 4}  # 20% / 40% / rest
    assert classes["p9"] is L and classes["p0"] is S
    assert classes["new"] is S and classes["empty"] is S  # unknown_class, not ranked
    assert assign_length_classes(["new"], {}, unknown_class=L) == {"new": L}


def test_assign_ratios_cover_everything() -> None:
    lengths = {f"p{i}": [i + 1] for i in range(4)}
    classes = assign_length_classes(list(lengths), lengths, long_ratio=0.5, medium_ratio=0.5)
    assert [classes[p] for p in lengths] == [M, M, L, L]
    classes = assign_length_classes(list(lengths), lengths, long_ratio=0.0, medium_ratio=0.0)
    assert set(classes.values()) == {S}


@pytest.mark.parametrize(
    "cls, generated, expected",
    [
        (S, 3000, S),  # thresholds are strict
        (S, 3001, M),
        (S, 5000, M),
        (S, 5001, L),
        (M, 4000, M),
        (M, 5001, L),
        (L, 0, L),  # never demotes
        (M, 0, M),
    ],
)
def test_promote_default_thresholds(cls: LengthClass, generated: int, expected: LengthClass) -> None:
    assert promote(cls, generated) is expected


def test_promote_custom_thresholds() -> None:
    assert promote(S, 11, promote_medium_tokens=10, promote_long_tokens=20) is M
    assert promote(S, 21, promote_medium_tokens=10, promote_long_tokens=20) is L
    assert promote(S, 10, promote_medium_tokens=10, promote_long_tokens=20) is S


# ---------------------------------------------------------------------------- gates
def test_max_running_gate() -> None:
    gate = MaxRunningGate(64)
    assert gate.allows(1) and gate.allows(64)
    assert not gate.allows(65)


def _table_file(tmp_path: Path, points: list[tuple[int, int, float]], fmt: str = COST_TABLE_FORMAT) -> Path:
    path = tmp_path / "cost.json"
    path.write_text(json.dumps({"format": fmt, "points": [{"batch": b, "tokens": n, "seconds": t} for b, n, t in points]}))
    return path


def test_cost_table_interpolation(tmp_path: Path) -> None:
    points = [(1, 1, 1.0), (1, 11, 2.0), (4, 4, 2.0), (4, 14, 4.0)]
    table = CostTable.load(_table_file(tmp_path, points))
    assert table.seconds(1, 1) == pytest.approx(1.0)
    assert table.seconds(1, 6) == pytest.approx(1.5)  # along tokens
    assert table.seconds(4, 9) == pytest.approx(3.0)
    assert table.seconds(2, 6) == pytest.approx(1.5 + (2.4 - 1.5) / 3)  # then along batch
    assert table.seconds(1, 100) == pytest.approx(2.0)  # clamped to the profiled range
    assert table.seconds(16, 4) == pytest.approx(2.0)


def test_cost_table_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        CostTable.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not a verify-cost table"):
        CostTable.load(_table_file(tmp_path, [(1, 1, 1.0)], fmt="other"))
    with pytest.raises(ValueError, match="no points"):
        CostTable.load(_table_file(tmp_path, []))
    for bad in [(0, 1, 1.0), (4, 2, 1.0), (1, 1, 0.0)]:  # batch < 1, tokens < batch, t <= 0
        with pytest.raises(ValueError, match="bad cost point"):
            CostTable([bad])


def _draft(n: int, score: float) -> Draft:
    return Draft(tuple(range(n)), tuple([score / n] * n), score, n, "problem")


def test_cost_gate_keeps_drafts_when_verification_is_free() -> None:
    table = CostTable([(8, 8, 0.01), (8, 1000, 0.01)])  # flat: memory-bound, extra tokens free
    drafts = [_draft(4, 0.5), Draft(), _draft(2, 1.9), _draft(8, 0.1)]
    assert CostModelGate(table).keep(drafts, num_running=8) == [True, False, True, True]


def test_cost_gate_drops_drafts_when_verification_is_expensive() -> None:
    table = CostTable([(8, 8, 8.0), (8, 1000, 1000.0)])  # time proportional to tokens
    drafts = [_draft(4, 3.9), _draft(2, 1.0), Draft()]
    assert CostModelGate(table).keep(drafts, num_running=8) == [False, False, False]


def test_cost_gate_keeps_only_profitable_prefix() -> None:
    # T(2, n) = 1 + 0.25 (n - 2): baseline rate 2 tok/s; A: (2+3.6)/2 = 2.8 -> keep;
    # A+B: (2+4.0)/3 = 2.0 < 2.8 -> B dropped even though it is listed first.
    table = CostTable([(2, 2, 1.0), (2, 102, 26.0)])
    a, b = _draft(4, 3.6), _draft(4, 0.4)
    assert CostModelGate(table).keep([b, a], num_running=2) == [False, True]
    assert CostModelGate(table).keep([Draft(), Draft()], num_running=2) == [False, False]


def test_cost_gate_on_a_padded_engine_keeps_all_drafts_or_none() -> None:
    drafts = [_draft(1, 0.9), Draft(), _draft(3, 0.2)]
    # memory-bound: padding 8 requests to 1 + 4 tokens is nearly free -> draft the whole step,
    # including the weak draft the unpadded rule would drop (its filler is verified anyway)
    cheap = CostTable([(8, 8, 1.0), (8, 40, 1.01)])
    assert CostModelGate(cheap).keep(drafts, num_running=8, padded_k=4) == [True, False, True]
    # compute-bound: 5x the tokens at 2x the time needs more than 8 accepted tokens: none
    dear = CostTable([(8, 8, 1.0), (8, 40, 2.0)])
    assert CostModelGate(dear).keep(drafts, num_running=8, padded_k=4) == [False, False, False]
    strong = [_draft(4, 3.0)] * 3  # 8 + 9 accepted over 2x the time beats 8 tokens: all
    assert CostModelGate(dear).keep(strong, num_running=8, padded_k=4) == [True] * 3


# ---------------------------------------------------------------------------- quota
def test_quota_serves_long_first_then_medium_in_batch_order() -> None:
    classes = [M, L, S, L, M]
    assert apply_quota([2, 4, 1, 4, 2], classes, quota=9) == [1, 4, 0, 4, 0]
    assert apply_quota([2, 4, 1, 4, 2], classes, quota=12) == [2, 4, 0, 4, 2]  # short is served last
    assert apply_quota([2, 4, 1, 4, 2], classes, quota=13) == [2, 4, 1, 4, 2]
    assert apply_quota([2, 0, 1, 4, 2], classes, quota=3) == [0, 0, 0, 3, 0]


# ---------------------------------------------------------------------------- acceptance
def test_bucket_labels() -> None:
    assert bucket_labels((1000, 2000, 4000, 8000)) == ["0-1k", "1k-2k", "2k-4k", "4k-8k", "8k+"]
    assert bucket_labels((10, 1500, 3000)) == ["0-10", "10-1500", "1500-3k", "3k+"]


def test_acceptance_tracker_counts() -> None:
    t = AcceptanceTracker(edges=(10, 20))
    assert [t.bucket_of(x) for x in (0, 9, 10, 19, 20, 10**6)] == [0, 0, 1, 1, 2, 2]
    t.on_proposed("a", 4, L, 5)
    t.on_verified("a", 3)  # 2 of 4 accepted
    t.on_proposed("b", 2, M, 25)
    t.on_verified("b", 5)  # more sampled than drafted: capped at 2
    t.on_proposed("c", 0, S, 15)
    t.on_verified("c", 1)  # decode step without a draft
    t.on_verified("unknown", 4)  # never proposed: ignored
    t.on_proposed("d", 3, L, 12)
    t.on_verified("d", 0)  # no verify result (e.g. aborted): ignored
    t.on_proposed("e", 3, L, 12)
    t.forget("e")
    t.on_verified("e", 4)

    snap = t.snapshot()
    assert snap["total"] == {
        "drafted": 6,
        "accepted": 4,
        "verify_steps": 2,
        "decode_steps": 3,
        "acceptance_rate": pytest.approx(4 / 6),
        "accepted_per_step": pytest.approx(2.0),
    }
    assert snap["by_class"]["long"]["accepted"] == 2 and snap["by_class"]["long"]["drafted"] == 4
    assert snap["by_class"]["medium"]["accepted"] == 2
    assert snap["by_class"]["short"]["decode_steps"] == 1 and snap["by_class"]["short"]["drafted"] == 0
    assert list(snap["by_bucket"]) == ["0-10", "10-20", "20+"]
    assert [snap["by_bucket"][k]["accepted"] for k in ("0-10", "10-20", "20+")] == [2, 0, 2]
    assert snap["by_bucket"]["10-20"]["decode_steps"] == 1

    t.reset()
    assert t.snapshot()["total"]["decode_steps"] == 0
    assert all(c["drafted"] == 0 for c in t.snapshot()["by_class"].values())
