"""The step budget of ``--das.partial_rollout`` (``integrations/openrlhf/partial.generate_vllm``)
on real Ray object refs: groups done by the budget are returned, the rest carried, a group older
than ``partial_max_staleness`` steps is waited for, the end of the data flushes everything, and
every group comes back exactly once.

The engines are replaced by Ray tasks that return a group after a set delay (the scheduling rule
is what is tested; the real-engine path is in ``test_openrlhf_partial.py``), and the
``SamplesGenerator`` by a stand-in with the two methods ``generate_vllm`` calls.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from ray_fixtures import ray_cluster_fixture  # noqa: F401 - the ray_cluster fixture

from openrlhf_das.integrations.openrlhf.partial import carried_of, generate_vllm

pytestmark = [pytest.mark.ray]

SLOW_S = 4.0
DELAYS = {"A": SLOW_S, "B": 0.05, "C": 0.05, "D": 0.05, "E": 0.05, "F": 0.05}


class _Generator:
    """Stand-in for OpenRLHF's SamplesGenerator: dispatch = one Ray task per prompt group."""

    def __init__(self, ray, budget: int) -> None:
        self.args = SimpleNamespace(rollout=SimpleNamespace(batch_size=budget),
                                    algo=SimpleNamespace(dynamic_filtering_range=(0.0, 1.0)))

        @ray.remote(num_cpus=0)
        def group(prompt: str, delay: float) -> list[dict]:
            time.sleep(delay)
            return [{"prompt": prompt, "sample": i} for i in range(2)]

        self._group = group

    def _dispatch_prompts_to_vllm(self, prompts, labels, images=None, **kwargs):
        return [self._group.remote(p, DELAYS[p]) for p in prompts]

    def _process_response_into_experience(self, response, **kwargs):
        return SimpleNamespace(prompt=response["prompt"], scores=None)


def _steps(ray, max_staleness: int, budget: int = 2, prompts: tuple[str, ...] = tuple(DELAYS)
           ) -> tuple[list[list[str]], list[float], list[dict]]:
    gen = _Generator(ray, budget=budget)
    data = iter([(None, [p], [""], [None]) for p in prompts])
    steps, seconds = [], []
    while True:
        t0 = time.perf_counter()
        exps, _consumed, exhausted = generate_vllm(gen, data, 4, False, max_staleness)
        seconds.append(time.perf_counter() - t0)
        steps.append(sorted({e.prompt for e in exps}))
        assert all(sum(e.prompt == p for e in exps) == 2 for p in steps[-1])  # whole groups
        if exhausted:
            return steps, seconds, carried_of(gen).history


def test_budget_carries_slow_groups_and_staleness_bounds_them(ray_cluster):
    ray = ray_cluster
    # staleness 1: the slow group A (dispatched at step 0) is waited for at step 1
    steps, seconds, hist = _steps(ray, max_staleness=1)
    assert "A" not in steps[0] and len(steps[0]) == 2  # step 0 ended at the budget, A carried
    assert hist[0]["carried_out"] >= 1
    assert "A" in steps[1] and seconds[0] + seconds[1] >= SLOW_S * 0.9
    assert sorted(p for s in steps for p in s) == sorted(DELAYS)  # every group exactly once
    assert all(h["carried_in"] + h["dispatched"] <= 4 for h in hist)  # in-flight cap

    # staleness 3: step 1 does not wait for A; the end of the data flushes it
    steps, seconds, hist = _steps(ray, max_staleness=3)
    assert "A" not in steps[0] and "A" not in steps[1]
    assert seconds[1] < SLOW_S / 2
    assert "A" in steps[-1] and hist[-1]["carried_out"] == 0
    assert sorted(p for s in steps for p in s) == sorted(DELAYS)


def test_end_of_data_flushes_past_the_budget(ray_cluster):
    """At the end of the data every carried group is waited for, also once the step's budget is
    met (a step that met it and found nothing stale used to spin on an empty wait list)."""
    import threading

    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", _steps(ray_cluster, 3, budget=1,
                                                                       prompts=("B", "C", "D", "E"))))
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the last step never returned"
    steps, _seconds, hist = out["r"]
    assert sorted(p for s in steps for p in s) == ["B", "C", "D", "E"]
    assert hist[-1]["carried_out"] == 0 and len(steps[-1]) > 1  # the flush returned more than the budget

