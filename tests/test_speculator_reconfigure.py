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
