"""DASSpeculator end to end on real suffix trees: classes, budgets, gate, accounting, faults,
preemption and live siblings."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pytest

from openrlhf_das.config import DASConfig, LengthClass
from openrlhf_das.drafter import HistoryIndex, HistorySnapshot, Rollout
from openrlhf_das.speculator import DASSpeculator, StepRequest

# Five problems with disjoint token ranges; lengths rank p0 long, p1/p2 medium, p3/p4 short.
LENGTHS = {"p0": 60, "p1": 50, "p2": 45, "p3": 20, "p4": 15}
PIDS = list(LENGTHS)


def response(pid: str) -> list[int]:
    i = PIDS.index(pid)
    return list(range(1000 * (i + 1), 1000 * (i + 1) + LENGTHS[pid]))


def prompt(pid: str, variant: int = 0) -> list[int]:
    i = PIDS.index(pid)
    return [10 * i + k for k in range(5)] + [500 + variant]


def request(rid: str, pid: str, generated: Sequence[int], variant: int = 0, num_sampled: int = 0) -> StepRequest:
    p = prompt(pid, variant)
    return StepRequest(rid, np.array(p + list(generated), np.int32), len(p), pid, num_sampled=num_sampled)


def snapshot() -> HistorySnapshot:
    """Every problem answered twice identically at steps 0 and 1."""
    rollouts = [Rollout(pid, step, np.array(response(pid), np.int32)) for step in (0, 1) for pid in PIDS for _ in range(2)]
    return HistorySnapshot.from_rollouts(rollouts, next_step=2)


def speculator(overrides: dict[str, Any] | None = None) -> DASSpeculator:
    """Sibling mode (live text held back ``max_depth`` tokens; the shared own text of
    ``shared_own_text`` is tested in test_drafter_union.py), no tail rule (test_policy_promotion.py)."""
    spec = DASSpeculator(DASConfig().with_overrides({"shared_own_text": False, "promotion.tail_running": 0, **(overrides or {})}))
    spec.load_snapshot(snapshot())
    return spec


def test_classes_from_snapshot() -> None:
    spec = speculator()
    assert spec.classes == {
        "p0": LengthClass.LONG,
        "p1": LengthClass.MEDIUM,
        "p2": LengthClass.MEDIUM,
        "p3": LengthClass.SHORT,
        "p4": LengthClass.SHORT,
    }


def test_long_and_medium_draft_recorded_continuation_short_costs_nothing() -> None:
    spec = speculator()
    r0, r1, r3 = response("p0"), response("p1"), response("p3")
    tokens_before = spec.drafter.history.tokens
    out = spec.step(
        [request("a", "p0", r0[:10]), request("b", "p1", r1[:10]), request("c", "p3", r3[:10])]
    )
    assert out[0] == r0[10:14]  # long: 4 tokens
    assert out[1] == r1[10:12]  # medium: 2 tokens
    assert out[2] == []  # short: no draft ...
    assert spec.drafter._requests["c"].tree is None  # ... and no per-request tree work
    assert spec.drafter._requests["a"].tree is not None
    # live sibling text lags max_depth (32) tokens behind: nothing of these 10-token
    # responses is in the problem trees yet, so a request never matches its own tail there
    # (short "c" included: its text is live sibling text too, test_short_request_text_...)
    assert spec.drafter.history.tokens == tokens_before
    assert spec.stats()["history"]["live_sequences"] == 0


def test_online_promotion_gives_short_request_a_budget() -> None:
    spec = speculator({"promote_medium_tokens": 5, "promote_long_tokens": 12})
    r3 = response("p3")
    assert spec.step([request("c", "p3", r3[:8])]) == [r3[8:10]]  # promoted to medium
    assert spec.step([request("d", "p3", r3[:13])]) == [r3[13:17]]  # promoted to long


def test_gate_above_max_running_returns_all_empty() -> None:
    spec = speculator()
    r0 = response("p0")
    batch = [request(f"r{i}", "p0", r0[:10], variant=i) for i in range(65)]
    assert spec.step(batch) == [[]] * 65
    assert spec.step(batch[:1], num_running=65) == [[]]
    assert spec.gated_steps == 2 and spec.drafter.active_requests == []
    assert spec.step(batch[:1], num_running=64) == [r0[10:14]]  # at the limit: drafts
    assert spec.gated_steps == 2


def test_fill_gives_every_request_the_largest_budget_but_keeps_the_gate() -> None:
    spec = speculator()
    r0, r1, r3 = response("p0"), response("p1"), response("p3")
    batch = [request("a", "p0", r0[:10]), request("b", "p1", r1[:10]), request("c", "p3", r3[:10])]
    assert spec.config.fill_budget.tokens == 4 and spec.config.fill_budget.factor == 2.0
    assert spec.step(batch, padded_k=4) == [r0[10:14], r1[10:14], r3[10:14]]  # medium and short: 4 too
    verified = [request("a", "p0", r0[:15], num_sampled=5), request("b", "p1", r1[:15], num_sampled=5),
                request("c", "p3", r3[:15], num_sampled=5)]
    assert spec.step(verified, num_running=65, padded_k=4) == [[]] * 3  # a gated step stays draft-free
    short = spec.tracker.snapshot()["by_class"]["short"]
    assert (short["drafted"], short["accepted"]) == (4, 4)  # still accounted by class


def test_flat_budget_mode_ignores_classes() -> None:
    spec = speculator({"length_policy": False, "flat_budget": {"tokens": 3, "factor": 1.0}})
    r0, r3 = response("p0"), response("p3")
    out = spec.step([request("a", "p0", r0[:10]), request("c", "p3", r3[:8])])
    assert out == [r0[10:13], r3[8:11]]


def test_acceptance_accounting_through_num_sampled() -> None:
    spec = speculator()
    r0 = response("p0")
    assert spec.step([request("a", "p0", r0[:10])]) == [r0[10:14]]
    # the engine verified: 2 drafts accepted + 1 bonus token = 3 sampled
    assert spec.step([request("a", "p0", r0[:13], num_sampled=3)]) == [r0[13:17]]
    acc = spec.stats()["acceptance"]
    assert acc["total"]["drafted"] == 4 and acc["total"]["accepted"] == 2
    assert acc["total"]["verify_steps"] == 1 and acc["total"]["decode_steps"] == 1
    assert acc["by_class"]["long"]["accepted"] == 2 and acc["by_class"]["medium"]["drafted"] == 0
    assert acc["by_bucket"]["0-1k"]["accepted"] == 2


class FaultyHistory(HistoryIndex):
    """A history whose tree lookup fails for one problem (a planted fault)."""

    def problem_tree(self, problem_id: str) -> Any:
        if problem_id == "p1":
            raise RuntimeError("planted fault")
        return super().problem_tree(problem_id)


def test_fault_isolated_to_one_request() -> None:
    spec = DASSpeculator(DASConfig())
    index = FaultyHistory(max_depth=64, window=5, max_tokens=10**6)
    for r in snapshot().rollouts():
        index.add_rollout(r.problem_id, r.step, r.tokens)
    spec.swap(index, live_step=2)
    r0, r1, r2 = response("p0"), response("p1"), response("p2")
    out = spec.step([request("a", "p0", r0[:10]), request("b", "p1", r1[:10]), request("c", "p2", r2[:10])])
    assert out == [r0[10:14], [], r2[10:12]]
    assert spec.stats()["faults"] == 1


def test_reentry_after_preemption_rebuilds_request_tree() -> None:
    spec = DASSpeculator(
        DASConfig().with_overrides(
            {
                "use_problem_tree": False,
                "use_global_tree": False,
                "use_siblings": False,
                "length_policy": False,
                "flat_budget": {"tokens": 4, "factor": 2.0},
            }
        )
    )
    p = [900, 901]
    a, b = list(range(1, 9)), list(range(11, 19))

    def req(tokens: list[int]) -> StepRequest:
        return StepRequest("r", np.array(p + tokens, np.int32), len(p), "x")

    assert spec.step([req(a + a[:3])]) == [a[3:7]]  # the request repeats itself
    # re-entered with other text of the same length (not an extension): must rebuild
    assert spec.step([req(b + b[:3])]) == [b[3:7]]
    assert spec.drafter.rebuilds == 1
    # shorter than what was indexed: rebuild again, no stale continuation from the old text
    assert spec.step([req(b + b[:2])]) == [b[2:6]]
    assert spec.drafter.rebuilds == 2
    # a plain extension is not a rebuild
    assert spec.step([req(b + b[:4])]) == [b[4:8]]
    assert spec.drafter.rebuilds == 2


@pytest.mark.parametrize("keep", [True, False])
def test_sibling_text_drafts_for_same_problem_in_same_step(keep: bool) -> None:
    spec = speculator()
    x = list(range(9000, 9200))  # new text, in no history
    depth = spec.config.max_depth
    assert depth <= 64
    # A's live text enters the problem tree max_depth tokens behind: x[:100 - depth] of x[:100]
    out = spec.step([request("A", "p0", x[:100], variant=1), request("B", "p0", x[:8], variant=2)])
    assert out[1] == x[8:12]  # B drafts from A's live tokens
    assert spec.step([request("B", "p0", x[: 104 - depth], variant=2)]) == [[]]  # past A's indexed text
    spec.finish("A", keep_as_sibling=keep)  # kept: A's held-back tail joins the tree
    later = spec.step([request("C", "p0", x[:80], variant=3)])
    assert later == ([x[80:84]] if keep else [[]])


def test_without_siblings_live_text_is_not_a_source() -> None:
    spec = speculator({"use_siblings": False})
    x = list(range(9000, 9030))
    out = spec.step([request("A", "p0", x[:20], variant=1), request("B", "p0", x[:8], variant=2)])
    assert out == [[], []]


def test_next_snapshot_updates_the_index_in_place_and_drops_live_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step boundary: the engine's index is updated, not rebuilt (only changed buckets), in-flight
    sibling text leaves it as it would with a fresh index, and drafting follows the new history.
    A failing in-place update falls back to a fresh build and is counted."""
    spec = speculator()
    assert (spec.snapshot_full, spec.snapshot_incremental) == (0, 1)  # filled the empty index
    index = spec.drafter.history
    x = list(range(9000, 9200))
    spec.step([request("A", "p0", x[:100], variant=1)])  # A's live text enters p0's tree
    assert index.stats().live_sequences == 1
    # step 2: p0 now answers with new text; every other problem as before
    new = list(range(7000, 7060))
    rollouts = [Rollout(r.problem_id, r.step, r.tokens) for r in snapshot().rollouts()]
    rollouts += [Rollout("p0", 2, np.array(new, np.int32)) for _ in range(2)]
    spec.load_snapshot(HistorySnapshot.from_rollouts(rollouts, next_step=3))
    assert spec.drafter.history is index and (spec.snapshot_full, spec.snapshot_incremental) == (0, 2)
    assert index.stats().live_sequences == 0 and index.steps_of("p0") == [0, 1, 2]
    assert spec.stats()["snapshot_incremental"] == 2 and spec.stats()["last_snapshot_seconds"] > 0
    assert spec.step([request("B", "p0", new[:8], variant=2)]) == [new[8:12]]  # drafts from step 2
    assert spec.step([request("C", "p0", x[:8], variant=3)]) == [[]]  # A's live text is gone

    def broken(self: HistorySnapshot, index: HistoryIndex) -> None:
        raise RuntimeError("planted fault")

    monkeypatch.setattr(HistorySnapshot, "update_index", broken)
    spec.load_snapshot(snapshot())
    assert spec.snapshot_faults == 1 and spec.snapshot_full == 1 and spec.drafter.history is not index
    assert spec.drafter.history.steps_of("p0") == [0, 1]
    assert spec.step([request("D", "p0", response("p0")[:8], variant=4)]) == [response("p0")[8:12]]


@pytest.mark.parametrize("deferred", [False, True])
def test_short_request_text_is_live_sibling_text(deferred: bool) -> None:
    """A short-class request (budget 0) gets no draft and no per-request tree work, but its text
    still reaches its problem's tree as live sibling text, so its siblings draft from it; with
    ``live_siblings=False`` through :meth:`update_siblings` (the async engine's order)."""
    spec = speculator({"promotion.history_quantile": None})  # S stays short at 110 tokens
    x = list(range(9000, 9200))  # new text, in no history
    depth = spec.config.max_depth
    short = request("S", "p3", x[:100], variant=1)
    batch = [short, StepRequest("B", np.array(prompt("p3", 2) + x[:8], np.int32), 6, "p3", LengthClass.LONG)]
    out = spec.step(batch, live_siblings=not deferred)
    assert out[0] == []
    assert spec.drafter._requests["S"].tree is None  # no own-tree work for the short request
    if deferred:
        spec.update_siblings(batch)
    # S's text (x[:100 - depth]) is in p3's tree now: B drafts from it next step
    later = spec.step([StepRequest("B", np.array(prompt("p3", 2) + x[:10], np.int32), 6, "p3", LengthClass.LONG)])
    assert later == [x[10:14]]
    # only the new tokens are appended when S grows
    tokens = spec.drafter.history.tokens
    spec.step([request("S", "p3", x[:110], variant=1)])
    assert spec.drafter.history.tokens == tokens + 10
    spec.finish("S")  # the held-back tail joins the tree
    assert spec.step([StepRequest("C", np.array(prompt("p3", 3) + x[:100], np.int32), 6, "p3", LengthClass.LONG)]) == [x[100:104]]
