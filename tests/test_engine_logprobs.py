"""Logprobs returned by a DAS engine equal those of plain decoding (issue item 3).

Greedy decoding on the tiny float32 model, ``logprobs=1``, in both ``raw_logprobs`` (vLLM's
default) and ``processed_logprobs`` (what OpenRLHF sets) modes: the tokens are identical, so
the returned logprobs of the chosen tokens (and the top-1 entries) must match plain decoding
position by position. The history is a lightly corrupted copy of the plain pass, so the
verifier both accepts and rejects drafts in these runs.

The SmolLM2 counterpart (processed logprobs over 200 math prompts) is in
``test_engine_lossless.py``. A last test checks processed logprobs under *sampling*
(T = 0.8, where processed != raw) against a reference computed from the full raw distribution
that plain decoding assigns to the same sequences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from vllm import SamplingParams

from engine_fixtures import (
    chosen_logprobs,
    corrupt,
    das_stats,
    load_history,
    random_prompts,
    running_llm,
    tiny_model,
    token_ids,
)
from openrlhf_das.config import DASConfig
from openrlhf_das.engines.vllm.factory import with_das_metadata

pytestmark = pytest.mark.engine

VOCAB = 256
N = 24
MAX_TOKENS = 64
PIDS = [f"p{i}" for i in range(N)]
# 24 requests: the default gate allows drafting; "long" metadata gives every request budget 4.
# Promotion off (no tail rule, no history quantile): the padded run's "short" requests must draft
# only through fill_padded_drafts, which by_class["short"] shows only while they stay short.
CONFIG = DASConfig.from_dict({"promotion": {"tail_running": 0, "history_quantile": None}})
TOL = 1e-4  # float32 engine; observed differences are ~1e-6 or exactly 0


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    return random_prompts(N, 16, VOCAB, seed=3)


def _top1(outputs) -> list[list[tuple[int, float]]]:
    """(token, logprob) of the rank-1 entry at every position."""
    res = []
    for o in outputs:
        rows = []
        for lp in o.outputs[0].logprobs:
            tok, best = next((t, l) for t, l in lp.items() if l.rank == 1)
            rows.append((tok, float(best.logprob)))
        res.append(rows)
    return res


@pytest.fixture(scope="module", params=[("raw_logprobs", False), ("processed_logprobs", False),
                                        ("processed_logprobs", True)],
                ids=["raw", "processed", "processed-pad_drafts"])
def runs(request, prompts) -> dict:
    """Plain and DAS passes; the last variant pads drafts to k with filler tokens
    (``pad_drafts``), which the verifier must reject without changing tokens or logprobs."""
    mode, pad = request.param
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=1)
    reqs = [{"prompt_token_ids": p} for p in prompts]
    with running_llm(tiny_model(VOCAB), logprobs_mode=mode) as llm:
        plain = llm.generate(reqs, sp, use_tqdm=False)
    history = corrupt(token_ids(plain), every=6, vocab_size=VOCAB, seed=1)
    config = CONFIG.with_overrides({"pad_drafts": True}) if pad else CONFIG
    with running_llm(tiny_model(VOCAB), das=config, logprobs_mode=mode) as llm:
        load_history(llm, PIDS, history)
        # padded: mixed classes, which fill_padded_drafts gives the full budget anyway
        classes = ["short", "medium", "long"] if pad else ["long"]
        das = llm.generate(reqs, [with_das_metadata(sp, pid, classes[i % len(classes)]) for i, pid in enumerate(PIDS)],
                           use_tqdm=False)
        stats = das_stats(llm)
    return {"mode": mode + (" pad_drafts" if pad else ""), "plain": plain, "das": das, "stats": stats}


def test_tokens_identical(runs) -> None:
    assert token_ids(runs["das"]) == token_ids(runs["plain"])


def test_pad_drafts_auto_is_off_on_an_eager_cpu_engine(runs) -> None:
    # pad_drafts defaults to auto (None): a CPU engine has no CUDA graphs, so it does not pad
    assert runs["stats"]["pad_drafts"] is ("pad_drafts" in runs["mode"])


def test_drafts_accepted_and_rejected(runs) -> None:
    total = runs["stats"]["acceptance"]["total"]
    print(f"{runs['mode']}: {total}")
    assert 0 < total["accepted"] < total["drafted"]
    if runs["stats"]["pad_drafts"]:  # short requests draft only through fill_padded_drafts
        assert runs["stats"]["acceptance"]["by_class"]["short"]["drafted"] > 0


def test_chosen_logprobs_match(runs) -> None:
    a = np.concatenate([np.array(x) for x in chosen_logprobs(runs["das"])])
    b = np.concatenate([np.array(x) for x in chosen_logprobs(runs["plain"])])
    assert a.shape == b.shape == (N * MAX_TOKENS,)
    diff = float(np.max(np.abs(a - b)))
    print(f"{runs['mode']}: max |logprob(DAS) - logprob(plain)| = {diff:.3g} over {a.size} tokens")
    assert np.all(np.isfinite(a))
    assert diff <= TOL


def test_top1_entries_match(runs) -> None:
    das, plain = _top1(runs["das"]), _top1(runs["plain"])
    for d_rows, p_rows in zip(das, plain):
        assert [t for t, _ in d_rows] == [t for t, _ in p_rows]
        assert max(abs(x - y) for (_, x), (_, y) in zip(d_rows, p_rows)) <= TOL


def test_processed_logprobs_under_sampling(prompts) -> None:
    """T = 0.8 sampling with DAS in processed mode: each returned logprob must be
    ``log_softmax(logits / T)`` of the chosen token, computed here from the full raw
    distribution a plain engine assigns to the same prompt + output (prompt logprobs)."""
    temp = 0.8
    sp = SamplingParams(temperature=temp, max_tokens=32, ignore_eos=True, logprobs=1, seed=7)
    reqs = [{"prompt_token_ids": p} for p in prompts[:12]]
    with running_llm(tiny_model(VOCAB)) as llm:
        history = token_ids(llm.generate(reqs, sp, use_tqdm=False))
    with running_llm(tiny_model(VOCAB), das=CONFIG, logprobs_mode="processed_logprobs") as llm:
        load_history(llm, PIDS[:12], history)
        das = llm.generate(reqs, [with_das_metadata(sp, pid, "long") for pid in PIDS[:12]], use_tqdm=False)
        total = das_stats(llm)["acceptance"]["total"]
    seqs = [p + t for p, t in zip(prompts[:12], token_ids(das))]
    score = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=VOCAB)
    with running_llm(tiny_model(VOCAB), max_logprobs=VOCAB) as llm:
        scored = llm.generate([{"prompt_token_ids": s} for s in seqs], score, use_tqdm=False)
    worst = 0.0
    for p, o, s in zip(prompts[:12], das, scored):
        for j, (tok, got) in enumerate(zip(o.outputs[0].token_ids, chosen_logprobs([o])[0])):
            full = s.prompt_logprobs[len(p) + j]
            raw = np.array([full[t].logprob for t in range(VOCAB)], np.float64)
            ref = raw[tok] / temp - math.log(np.exp(raw / temp - (raw / temp).max()).sum()) - (raw / temp).max()
            worst = max(worst, abs(got - ref))
    print(f"processed logprobs at T={temp}: max |DAS - reference| = {worst:.3g}; acceptance {total}")
    assert total["accepted"] > 0
    assert worst <= 1e-3
