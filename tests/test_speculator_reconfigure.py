"""DASSpeculator.reconfigure: policy knobs change between steps; history and stats survive."""

from __future__ import annotations

import numpy as np

from openrlhf_das.config import DASConfig
from openrlhf_das.drafter import HistorySnapshot, Rollout
from openrlhf_das.speculator import DASSpeculator, StepRequest

RESPONSE = np.arange(10, 60, dtype=np.int32)


def _speculator(config: DASConfig) -> DASSpeculator:
    spec = DASSpeculator(config)
    spec.load_snapshot(HistorySnapshot.from_rollouts([Rollout("p", 0, RESPONSE)], next_step=1))
    return spec


def _req(n_generated: int) -> StepRequest:
    return StepRequest("r", np.concatenate([[1, 2, 3], RESPONSE[:n_generated]]).astype(np.int32), 3, "p")


def test_reconfigure_switches_budget_and_gate_but_keeps_history_and_stats() -> None:
    spec = _speculator(DASConfig.from_dict({"length_policy": False, "flat_budget": {"tokens": 2, "factor": 4.0},
                                            "gate": {"mode": "off"}}))
    assert spec.step([_req(5)]) == [RESPONSE[5:7].tolist()]
    spec.reconfigure(spec.config.with_overrides({"flat_budget.tokens": 4}))
    assert spec.step([StepRequest("r", _req(7).tokens, 3, "p", num_sampled=3)]) == [RESPONSE[7:11].tolist()]
    assert spec.tracker.total.accepted == 2  # the first draft's verify result was kept
    spec.reconfigure(spec.config.with_overrides({"gate.mode": "max_running", "gate.max_running": 1}))
    assert spec.step([_req(11), StepRequest("other", _req(11).tokens, 3, "p")]) == [[], []]
    assert spec.drafter.history.problem_ids() == ["p"]


def test_global_tree_is_a_fallback_unless_configured_otherwise() -> None:
    """Problem p's history continues a pattern two ways (score 2 over 4 tokens); problem q's six
    responses continue it one way, so the global tree scores 3. With ``global_fallback`` p's own
    tree wins; without it the best score (global) does. A problem with no draft of its own falls
    back to the global tree either way. The knob switches between steps."""
    pattern = list(range(7, 13))
    rollouts = [Rollout("p", 0, np.array(pattern + [100, 101, 102, 103], np.int32)),
                Rollout("p", 0, np.array(pattern + [200, 201, 202, 203], np.int32))]
    rollouts += [Rollout("q", 0, np.array(pattern + [300, 301, 302, 303], np.int32)) for _ in range(6)]
    cfg = DASConfig.from_dict({"length_policy": False, "flat_budget": {"tokens": 4, "factor": 4.0},
                               "gate": {"mode": "off"}, "use_siblings": False})
    assert cfg.global_fallback  # the default
    spec = DASSpeculator(cfg)
    spec.load_snapshot(HistorySnapshot.from_rollouts(rollouts, next_step=1))

    def draft(pid: str, rid: str) -> list[int]:
        return spec.step([StepRequest(rid, np.array([1, 2, 3] + pattern, np.int32), 3, pid)])[0]

    assert draft("p", "a") in ([100, 101, 102, 103], [200, 201, 202, 203])
    assert draft("new", "b") == [300, 301, 302, 303]  # no tree of its own: the global tree
    spec.reconfigure(cfg.with_overrides({"global_fallback": False}))
    assert draft("p", "c") == [300, 301, 302, 303]  # best score wins
