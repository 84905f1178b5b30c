"""Fault isolation in a real CPU engine (issue item 5).

Faults are planted inside the drafter of an in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
``distributed_executor_backend="uni"``: the worker, hence the proposer, lives in the test
process, so ``monkeypatch`` reaches it). A fault must never fail ``generate``: outputs stay
identical to plain decoding and the fault is counted.
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from engine_fixtures import das_stats, load_history, random_prompts, running_llm, tiny_model, token_ids
from openrlhf_das.config import DASConfig
from openrlhf_das.drafter.drafter import Drafter
from openrlhf_das.engines.vllm.factory import with_das_metadata
from openrlhf_das.speculator import DASSpeculator

pytestmark = pytest.mark.engine

VOCAB = 256
N = 12
FAULTY = "p3"  # problem whose drafting raises
PIDS = [f"p{i}" for i in range(N)]
# 12 requests: the default gate (max_running 64) allows drafting; every request is "long"
# (budget 4) through its metadata, so each one drafts.
CONFIG = DASConfig()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    return random_prompts(N, 16, VOCAB, seed=5)


@pytest.fixture(scope="module")
def params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=80, ignore_eos=True)


@pytest.fixture(scope="module")
def baseline(prompts, params) -> list[list[int]]:
    with running_llm(tiny_model(VOCAB)) as llm:
        return token_ids(llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False))


@pytest.fixture(scope="module")
def llm(baseline):
    with running_llm(tiny_model(VOCAB), das=CONFIG) as engine:
        load_history(engine, PIDS, baseline)
        yield engine


def _generate(llm, prompts, params, metas):
    sps = [with_das_metadata(params, pid, cls) if (pid, cls) != (None, None) else params for pid, cls in metas]
    return token_ids(llm.generate([{"prompt_token_ids": p} for p in prompts], sps, use_tqdm=False))


def _delta(after: dict, before: dict, key: str) -> int:
    return after[key] - before[key]


def test_drafter_fault_in_one_request(llm, prompts, params, baseline, monkeypatch) -> None:
    real = Drafter.propose_one

    def propose_one(self, req):
        if req.problem_id == FAULTY:
            raise RuntimeError("planted drafter fault")
        return real(self, req)

    monkeypatch.setattr(Drafter, "propose_one", propose_one)
    before = das_stats(llm, reset=True)
    out = _generate(llm, prompts, params, [(pid, "long") for pid in PIDS])
    after = das_stats(llm)
    print(f"drafter fault: faults={_delta(after, before, 'faults')} acceptance={after['acceptance']['total']}")
    assert out == baseline
    assert _delta(after, before, "faults") > 0  # once per step of the faulty request
    assert _delta(after, before, "engine_faults") == 0  # isolated inside the drafter
    # the other requests kept drafting
    assert after["acceptance"]["total"]["accepted"] > 0


def test_engine_level_fault(llm, prompts, params, baseline, monkeypatch) -> None:
    das_stats(llm, reset=True)
    _generate(llm, prompts, params, [(pid, "long") for pid in PIDS])
    clean = das_stats(llm)["acceptance"]["total"]["acceptance_rate"]
    real = DASSpeculator.step
    calls = {"n": 0}

    def step(self, batch, num_running=None, **kwargs):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise RuntimeError("planted speculator fault")
        return real(self, batch, num_running, **kwargs)

    monkeypatch.setattr(DASSpeculator, "step", step)
    before = das_stats(llm, reset=True)
    out = _generate(llm, prompts, params, [(pid, "long") for pid in PIDS])
    after = das_stats(llm)
    faults = _delta(after, before, "engine_faults")
    print(f"engine fault: engine_faults={faults} of {calls['n']} steps; acceptance={after['acceptance']['total']} "
          f"(clean run: rate {clean:.3f})")
    assert out == baseline
    assert faults == calls["n"] // 3 > 0
    assert after["acceptance"]["total"]["accepted"] > 0
    # a faulty step leaves nothing pending: acceptance stats are not skewed by the faults
    assert abs(after["acceptance"]["total"]["acceptance_rate"] - clean) < 0.1, clean


def test_bad_metadata_is_counted_not_fatal(llm, prompts, params, baseline) -> None:
    bogus_class = params.clone()
    bogus_class.extra_args = {"das": {"problem_id": PIDS[0], "length_class": "bogus"}}
    not_a_dict = params.clone()
    not_a_dict.extra_args = {"das": "p1"}
    sps = [bogus_class, not_a_dict] + [with_das_metadata(params, pid, "long") for pid in PIDS[2:]]
    before = das_stats(llm, reset=True)
    out = token_ids(llm.generate([{"prompt_token_ids": p} for p in prompts], sps, use_tqdm=False))
    after = das_stats(llm)
    print(f"bad metadata: bad_metadata={_delta(after, before, 'bad_metadata')}")
    assert out == baseline
    assert _delta(after, before, "bad_metadata") == 2
    assert _delta(after, before, "engine_faults") == 0 and _delta(after, before, "faults") == 0
    assert after["acceptance"]["total"]["accepted"] > 0


def test_corrupt_snapshot_is_refused_and_engine_keeps_working(llm, prompts, params, baseline) -> None:
    before = das_stats(llm)
    with pytest.raises(Exception):
        llm.collective_rpc("das_load_snapshot", args=(b"not an npz", None))
    after = das_stats(llm)
    assert after["history"] == before["history"]  # old history still in place
    das_stats(llm, reset=True)
    out = _generate(llm, prompts, params, [(pid, "long") for pid in PIDS])
    assert out == baseline
    assert das_stats(llm)["acceptance"]["total"]["accepted"] > 0
