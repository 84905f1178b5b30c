"""Requests leaving and re-entering the batch in a real CPU engine (issue item 4).

* Real preemption: a KV cache of 20 blocks of 128 tokens for 16 requests that each grow to two
  blocks (16-token prompts + 200 tokens) forces vLLM to preempt (recompute) requests under KV
  pressure (recipe of docs/vllm-internals.md §7). DAS must keep each request's tree across the
  gap (``rebuilds == 0``, ``resumed_requests > 0``), stay lossless, and keep drafting after
  the resume. The test steps ``LLMEngine`` itself (in-process engine) so it can read, from
  vLLM's scheduler, which requests were preempted and their per-step accepted drafts.
* ``reset_prefix_cache(reset_running_requests=True)`` between steps (forced preemption of every
  running request, as a weight sync does).
* ``AsyncLLM.pause_generation(mode="keep")`` / ``resume_generation()`` (the sync ``LLM`` has no
  pause in vLLM 0.29): outputs unchanged.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from vllm import SamplingParams

from engine_fixtures import (
    corrupt,
    das_stats,
    inproc_core,
    random_prompts,
    running_llm,
    start_async_llm,
    tiny_model,
    token_ids,
)
from openrlhf_das.config import DASConfig
from openrlhf_das.drafter import HistorySnapshot, Rollout
from openrlhf_das.engines.vllm.factory import with_das_metadata

pytestmark = pytest.mark.engine

VOCAB = 256
N = 16
PROMPT_LEN = 16
MAX_TOKENS = 200
MAX_MODEL_LEN = 256
ASYNC_MAX_TOKENS = 800  # long enough (with ~4 tokens per step) to be paused mid-generation
KV_BLOCKS = 20  # CPU block size is 128 tokens: 16 requests x 2 blocks do not fit
PIDS = [f"p{i}" for i in range(N)]
# 16 running requests: the default gate (max_running 64) allows drafting. Requests carry
# length class "long" (budget 4) in their metadata so every one of them drafts.
CONFIG = DASConfig()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    return random_prompts(N, PROMPT_LEN, VOCAB, seed=4)


@pytest.fixture(scope="module")
def params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def long_baseline(prompts, params) -> list[list[int]]:
    """Plain greedy decoding of ASYNC_MAX_TOKENS tokens; its first MAX_TOKENS tokens are the
    baseline of the MAX_TOKENS runs (greedy decoding is prefix-consistent)."""
    sp = params.clone()
    sp.max_tokens = ASYNC_MAX_TOKENS
    with running_llm(tiny_model(VOCAB)) as llm:
        return token_ids(llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False))


@pytest.fixture(scope="module")
def baseline(long_baseline) -> list[list[int]]:
    return [r[:MAX_TOKENS] for r in long_baseline]


def _snapshot_bytes(baseline: list[list[int]]) -> bytes:
    # Responses of a previous pass of the same problems, one token in 12 replaced: drafts are
    # mostly right, sometimes rejected.
    history = corrupt(baseline, every=12, vocab_size=VOCAB, seed=2)
    rollouts = [Rollout(pid, 0, np.asarray(r, np.int32)) for pid, r in zip(PIDS, history)]
    return HistorySnapshot.from_rollouts(rollouts, next_step=1).to_npz_bytes()


@pytest.fixture(scope="module")
def llm(baseline):
    with running_llm(
        tiny_model(VOCAB),
        das=CONFIG,
        max_model_len=MAX_MODEL_LEN,
        num_gpu_blocks_override=KV_BLOCKS,
        per_request_spec_decode_metrics="detailed",
    ) as engine:
        engine.collective_rpc("das_load_snapshot", args=(_snapshot_bytes(baseline), None))
        yield engine


def _step_loop(llm, prompts, params, tag: str, reset_at: tuple[int, ...] = ()) -> dict:
    """Run all requests by stepping the engine; watch preemptions in vLLM's scheduler."""
    engine = llm.llm_engine
    sched = inproc_core(llm).scheduler
    for i, p in enumerate(prompts):
        engine.add_request(f"{tag}{i}", {"prompt_token_ids": p}, with_das_metadata(params, PIDS[i], "long"))
    seen: dict[str, list] = {}  # scheduler request id -> [request, preemptions seen, verify steps before resume]
    finished = {}
    step = 0
    while engine.has_unfinished_requests():
        if step in reset_at:
            assert engine.reset_prefix_cache(reset_running_requests=True)
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        step += 1
        for rid, req in sched.requests.items():
            seen.setdefault(rid, [req, 0, 0])
        for st in seen.values():
            req = st[0]
            if req.num_preemptions > st[1]:
                st[1] = req.num_preemptions
                st[2] = len(req.spec_decode_metrics.per_step_accepted)
    outs = [finished[f"{tag}{i}"] for i in range(len(prompts))]
    preempted = [(req, boundary) for req, n, boundary in seen.values() if n > 0]
    return {
        "tokens": token_ids(outs),
        "preempted": len(preempted),
        "preemptions": sum(req.num_preemptions for req, _, _ in seen.values()),
        # accepted / drafted per preempted request, counted only in verify steps after its last resume
        "after_resume": [
            (sum(req.spec_decode_metrics.per_step_accepted[b:]), sum(req.spec_decode_metrics.per_step_drafted[b:]))
            for req, b in preempted
        ],
        "steps": step,
    }


@pytest.fixture(scope="module")
def kv_pressure(llm, prompts, params) -> dict:
    das_stats(llm, reset=True)
    before = das_stats(llm)
    res = _step_loop(llm, prompts, params, "kv")
    res["stats"] = das_stats(llm)
    res["before"] = before
    return res


def test_real_preemption_happens(kv_pressure) -> None:
    st = kv_pressure["stats"]
    print(
        f"KV pressure: {kv_pressure['preempted']} of {N} requests preempted "
        f"({kv_pressure['preemptions']} preemptions) in {kv_pressure['steps']} steps; "
        f"DAS resumed_requests={st['resumed_requests']} rebuilds={st['rebuilds']}"
    )
    assert kv_pressure["preempted"] > 0
    assert st["resumed_requests"] - kv_pressure["before"]["resumed_requests"] > 0


def test_preemption_is_lossless(kv_pressure, baseline) -> None:
    assert kv_pressure["tokens"] == baseline


def test_trees_survive_preemption(kv_pressure) -> None:
    st = kv_pressure["stats"]
    assert st["rebuilds"] == 0
    assert st["faults"] == 0 and st["engine_faults"] == 0 and st["bad_metadata"] == 0


def test_drafts_accepted_after_resume(kv_pressure) -> None:
    after = kv_pressure["after_resume"]
    print(f"accepted/drafted after the last resume, per preempted request: {after}")
    print(f"whole run: {kv_pressure['stats']['acceptance']['total']}")
    assert sum(a for a, _ in after) > 0
    # every preempted request that drafted after its resume also got drafts accepted
    assert all(a > 0 for a, d in after if d > 0)
    assert sum(1 for _, d in after if d > 0) >= len(after) // 2


def test_forced_preemption_reset_prefix_cache(llm, prompts, params, baseline) -> None:
    before = das_stats(llm)
    res = _step_loop(llm, prompts, params, "reset", reset_at=(5, 40, 90))
    st = das_stats(llm)
    print(f"reset_prefix_cache x3: {res['preemptions']} preemptions; rebuilds={st['rebuilds']}")
    assert res["tokens"] == baseline
    assert res["preemptions"] > 0
    assert st["rebuilds"] == before["rebuilds"] == 0
    assert st["faults"] == 0 and st["engine_faults"] == 0


async def _pause_resume(prompts, params, baseline) -> dict:
    engine = start_async_llm(tiny_model(VOCAB), das=CONFIG)
    try:
        await engine.collective_rpc("das_load_snapshot", args=(_snapshot_bytes(baseline), None))
        progress = [0] * len(prompts)

        async def run(i: int):
            final = None
            sp = with_das_metadata(params, PIDS[i], "long")
            async for out in engine.generate({"prompt_token_ids": prompts[i]}, sp, request_id=f"async{i}"):
                progress[i] = len(out.outputs[0].token_ids)
                final = out
            return final

        tasks = [asyncio.create_task(run(i)) for i in range(len(prompts))]
        while max(progress) < 16:
            await asyncio.sleep(0.002)
        await engine.pause_generation(mode="keep")
        assert await engine.is_paused()
        # outputs already on their way when the pause took effect: wait until none arrives for 0.2 s
        at_pause, deadline = list(progress), time.monotonic() + 30
        while True:
            await asyncio.sleep(0.2)
            if progress == at_pause or time.monotonic() > deadline:
                break
            at_pause = list(progress)
        await asyncio.sleep(1.0)
        frozen = list(progress)
        await engine.resume_generation()
        outs = await asyncio.gather(*tasks)
        stats = (await engine.collective_rpc("das_get_stats"))[0]
        return {"tokens": token_ids(outs), "at_pause": at_pause, "frozen": frozen, "stats": stats}
    finally:
        engine.shutdown()


def test_async_pause_resume_keep(prompts, params, long_baseline) -> None:
    sp = params.clone()
    sp.max_tokens = ASYNC_MAX_TOKENS
    res = asyncio.run(_pause_resume(prompts, sp, long_baseline))
    st = res["stats"]
    print(f"pause(keep) at output lengths {res['at_pause']}; acceptance {st['acceptance']['total']}; "
          f"resumed={st['resumed_requests']} rebuilds={st['rebuilds']}")
    assert max(res["at_pause"]) < ASYNC_MAX_TOKENS  # paused mid-generation
    assert res["frozen"] == res["at_pause"]  # nothing generated while paused
    assert res["tokens"] == long_baseline
    assert st["rebuilds"] == 0 and st["faults"] == 0 and st["engine_faults"] == 0
    assert st["acceptance"]["total"]["accepted"] > 0
