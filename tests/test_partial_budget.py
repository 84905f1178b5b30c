"""The step budget of ``--das.partial_rollout`` (``integrations/openrlhf/partial.generate_vllm``)
on real Ray object refs: groups done by the budget are returned, the rest carried, a group older
than ``partial_max_staleness`` steps is waited for, the end of the data flushes everything, and
every group comes back exactly once.

The engines are replaced by Ray tasks that return a group after a set delay, or, for the slow
group A, only once the test releases it after a given step (so no outcome depends on how fast the
machine or the Ray workers are; the scheduling rule is what is tested, the real-engine path is in
``test_openrlhf_partial.py``), and the ``SamplesGenerator`` by a stand-in with the two methods
``generate_vllm`` calls.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
from ray_fixtures import ray_cluster_fixture  # noqa: F401 - the ray_cluster fixture

from openrlhf_das.integrations.openrlhf.partial import carried_of, generate_vllm

pytestmark = [pytest.mark.ray]

DELAYS = {"A": None, "B": 0.05, "C": 0.05, "D": 0.05, "E": 0.05, "F": 0.05}  # None: until released
HOLD_S = 0.5  # how long after its release step A is still held (a step waiting for it lasts that long)
FAILSAFE_S = 60.0  # A is released after this anyway, so a wrong wait fails an assertion instead of hanging


class _Generator:
    """Stand-in for OpenRLHF's SamplesGenerator: dispatch = one Ray task per prompt group."""

    def __init__(self, ray, budget: int) -> None:
        self.args = SimpleNamespace(rollout=SimpleNamespace(batch_size=budget),
                                    algo=SimpleNamespace(dynamic_filtering_range=(0.0, 1.0)))

        @ray.remote(num_cpus=0)
        class Gate:
            def __init__(self) -> None:
                self.event = asyncio.Event()

            async def wait(self) -> None:
                await self.event.wait()

            def release(self) -> None:
                self.event.set()

        @ray.remote(num_cpus=0)
        def group(prompt: str, delay: float | None, gate) -> list[dict]:
            if delay is None:
                ray.get(gate.wait.remote())
            else:
                time.sleep(delay)
            return [{"prompt": prompt, "sample": i} for i in range(2)]

        self._group = group
        self.gate = Gate.remote()
        self.timers: list[threading.Timer] = []

    def release_later(self, delay_s: float) -> None:
        """Let the held group A finish ``delay_s`` seconds from now (``cancel_timers`` stops it)."""
        timer = threading.Timer(delay_s, lambda: self.gate.release.remote())
        timer.daemon = True
        timer.start()
        self.timers.append(timer)

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()

    def _dispatch_prompts_to_vllm(self, prompts, labels, images=None, **kwargs):
        return [self._group.remote(p, DELAYS[p], self.gate) for p in prompts]

    def _process_response_into_experience(self, response, **kwargs):
        return SimpleNamespace(prompt=response["prompt"], scores=None)


def _steps(ray, max_staleness: int, budget: int = 2, prompts: tuple[str, ...] = tuple(DELAYS),
           release_after: int = 0) -> tuple[list[list[str]], list[float], list[dict]]:
    """Run ``generate_vllm`` steps until the data is exhausted; group A is released ``HOLD_S``
    after step ``release_after`` returned."""
    gen = _Generator(ray, budget=budget)
    gen.release_later(FAILSAFE_S)
    data = iter([(None, [p], [""], [None]) for p in prompts])
    steps, seconds = [], []
    try:
        while True:
            t0 = time.perf_counter()
            exps, _consumed, exhausted = generate_vllm(gen, data, 4, False, max_staleness)
            seconds.append(time.perf_counter() - t0)
            steps.append(sorted({e.prompt for e in exps}))
            assert all(sum(e.prompt == p for e in exps) == 2 for p in steps[-1])  # whole groups
            if len(steps) - 1 == release_after:
                gen.release_later(HOLD_S)
            if exhausted:
                return steps, seconds, carried_of(gen).history
    finally:
        gen.cancel_timers()


def test_budget_carries_slow_groups_and_staleness_bounds_them(ray_cluster):
    ray = ray_cluster
    # staleness 1: the slow group A (dispatched at step 0, held until HOLD_S after it) is waited
    # for at step 1
    steps, seconds, hist = _steps(ray, max_staleness=1, release_after=0)
    assert "A" not in steps[0] and len(steps[0]) == 2  # step 0 ended at the budget, A carried
    assert hist[0]["carried_out"] >= 1
    assert "A" in steps[1] and HOLD_S * 0.9 <= seconds[1] < FAILSAFE_S  # step 1 waited for A's release
    assert sorted(p for s in steps for p in s) == sorted(DELAYS)  # every group exactly once
    assert all(h["carried_in"] + h["dispatched"] <= 4 for h in hist)  # in-flight cap

    # staleness 3: step 1 does not wait for A (held until after step 1 returned: had step 1
    # waited, only the fail-safe release would end it, with A in it); the end of the data flushes it
    steps, seconds, hist = _steps(ray, max_staleness=3, release_after=1)
    assert "A" not in steps[0] and "A" not in steps[1]
    assert "A" in steps[-1] and hist[-1]["carried_out"] == 0
    assert sorted(p for s in steps for p in s) == sorted(DELAYS)


def test_end_of_data_flushes_past_the_budget(ray_cluster):
    """At the end of the data every carried group is waited for, also once the step's budget is
    met (a step that met it and found nothing stale used to spin on an empty wait list)."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", _steps(ray_cluster, 3, budget=1,
                                                                       prompts=("B", "C", "D", "E"))))
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the last step never returned"
    steps, _seconds, hist = out["r"]
    assert sorted(p for s in steps for p in s) == ["B", "C", "D", "E"]
    assert hist[-1]["carried_out"] == 0 and len(steps[-1]) > 1  # the flush returned more than the budget

