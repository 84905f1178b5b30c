"""Asynchronous partial rollouts with DAS (issue 8): ``openrlhf_das.engines.vllm.partial``.

Real in-process CPU vLLM engines (float32, greedy). A rollout step ends at a small token
budget, so requests are cut, carried over and resumed in later steps:

* (a) final tokens equal an uninterrupted greedy run; no sample lost or duplicated;
* (b) resumed requests draft from their full context (their per-request tree is built from
  prompt + earlier segments; accepted drafts > 0 in a step of resumed requests only);
* (c) weight-version tags per segment when the version changes between steps (the weight
  update is simulated by bumping the version counter; weights are not changed);
* (d) ``generated_offset`` makes a resumed request promote at its total generated length.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from openrlhf_das.config import DASConfig, LengthClass
from openrlhf_das.speculator import DASSpeculator, StepRequest

VOCAB = 256
N_PROBLEMS = 6
SAMPLES = 2
PROMPT_LEN = 16
MAX_TOKENS = 48
CONFIG = DASConfig()


# ---------------------------------------------------------------------------------- engine
@pytest.fixture(scope="module")
def engine():
    from vllm import SamplingParams

    from engine_fixtures import random_prompts, running_llm, tiny_model, token_ids

    prompts = random_prompts(N_PROBLEMS, PROMPT_LEN, VOCAB, seed=11)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    with running_llm(tiny_model(VOCAB), das=CONFIG, max_num_seqs=8) as llm:
        # the uninterrupted reference (same engine, same weights, one synchronous step)
        ref = token_ids(llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False))
        yield SimpleNamespace(llm=llm, prompts=prompts, params=params, ref=ref)


def _problems(prompts, start=0):
    return [(f"p{i}", p) for i, p in enumerate(prompts, start)]


def _drain(mgr, budget, max_steps=40, between=None):
    """Run steps until nothing is pending; returns (results, finished samples)."""
    results, finished = [], []
    for _ in range(max_steps):
        if not mgr.num_pending:
            break
        if between is not None and results:
            between(mgr, results[-1])
        r = mgr.run_step(budget)
        results.append(r)
        finished += r.finished
    assert not mgr.num_pending, "rollout did not drain"
    return results, finished


def _check_segments(f, max_tokens=MAX_TOKENS):
    pos = 0
    for v, a, b in f.segments:
        assert a == pos and b > a
        pos = b
    assert pos == len(f.response_token_ids) <= max_tokens


# ---------------------------------------------------------------------------------- (a)
@pytest.mark.engine
def test_cut_resume_equals_uninterrupted_greedy(engine):
    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, StepBudget

    mgr = PartialRolloutManager(engine.llm, engine.params)
    mgr.add_problems(_problems(engine.prompts), SAMPLES)
    results, finished = _drain(mgr, StepBudget("tokens", 60))

    assert results[0].carried > 0 and results[0].budget_reached
    assert any(r.resumed > 0 for r in results[1:])
    keys = [f.key for f in finished]
    assert len(keys) == len(set(keys)) == N_PROBLEMS * SAMPLES
    assert set(keys) == {(f"p{i}", j) for i in range(N_PROBLEMS) for j in range(SAMPLES)}
    cut = [f for f in finished if len(f.segments) > 1]
    assert cut, "no sample spanned a cut"
    for f in finished:
        i = int(f.problem_id[1:])
        assert f.response_token_ids == engine.ref[i], (f.key, f.segments)
        _check_segments(f)
        assert f.prompt_token_ids == engine.prompts[i]


@pytest.mark.engine
def test_samples_budget(engine):
    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, StepBudget

    mgr = PartialRolloutManager(engine.llm, engine.params)
    mgr.add_problems(_problems(engine.prompts), SAMPLES)
    results, finished = _drain(mgr, StepBudget("samples", 3))
    assert results[0].carried > 0
    assert all(len(r.finished) >= 3 or r is results[-1] for r in results)
    assert sorted(f.key for f in finished) == sorted({f.key for f in finished})
    assert len(finished) == N_PROBLEMS * SAMPLES
    for f in finished:
        assert f.response_token_ids == engine.ref[int(f.problem_id[1:])]


# ---------------------------------------------------------------------------------- (b)
@pytest.mark.engine
def test_resumed_requests_draft_from_full_context(engine):
    from engine_fixtures import das_stats, inproc_drafter
    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, StepBudget

    llm = engine.llm
    drafter = inproc_drafter(llm).speculator.drafter
    mgr = PartialRolloutManager(llm, engine.params)
    mgr.add_problems(_problems(engine.prompts), SAMPLES)
    first = mgr.run_step(StepBudget("tokens", 80))
    assert first.carried > 0
    # history = finished samples only (the repeating workload: resumed samples' own problems
    # were answered before, by their finished siblings or earlier tests' identical outputs)
    mgr.load_history()
    expected = {tuple(s.prompt_token_ids + s.tokens) for s in mgr.carried if s.tokens}
    assert expected
    seen: dict[str, int] = {}
    contexts: set[tuple[int, ...]] = set()
    orig_update = drafter.update

    def spy(request_id, tokens, num_prompt_tokens, problem_id, *args, **kwargs):
        if request_id not in seen:  # the first tree update of this request: its full context
            seen[request_id] = num_prompt_tokens
            contexts.add(tuple(int(t) for t in tokens[:num_prompt_tokens]))
        return orig_update(request_id, tokens, num_prompt_tokens, problem_id, *args, **kwargs)

    das_stats(llm, reset=True)
    drafter.update = spy
    try:
        second = mgr.run_step(StepBudget(), max_new=0)  # resumed requests only
    finally:
        del drafter.update
    stats = das_stats(llm, reset=True)
    assert second.resumed == first.carried and second.carried == 0
    assert expected <= contexts, "a resumed request's tree did not start from prompt + earlier tokens"
    assert stats["acceptance"]["total"]["accepted"] > 0, stats["acceptance"]
    assert stats["engine_faults"] == 0 and stats["bad_metadata"] == 0


# ---------------------------------------------------------------------------------- (c)
@pytest.mark.engine
def test_weight_version_segments(engine):
    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, StepBudget

    mgr = PartialRolloutManager(engine.llm, engine.params, weight_version=7)
    mgr.add_problems(_problems(engine.prompts[:3]), SAMPLES)
    versions_by_step: dict[int, int] = {}

    def update_weights(m, last):  # simulated weight sync between rollout steps
        m.bump_weight_version()

    results = []
    finished = []
    for _ in range(40):
        if not mgr.num_pending:
            break
        if results:
            update_weights(mgr, results[-1])
            if len(results) == 2:  # new prompts arrive under version 9, alongside resumed ones
                mgr.add_problems(_problems(engine.prompts[3:], 3), SAMPLES)
        r = mgr.run_step(StepBudget("tokens", 50))
        versions_by_step[r.step] = r.weight_version
        results.append(r)
        finished += r.finished
    assert not mgr.num_pending
    assert versions_by_step[0] == 7 and versions_by_step[1] == 8
    assert engine.llm.llm_engine.get_weight_version() == str(mgr.weight_version)
    assert len({f.key for f in finished}) == len(finished) == N_PROBLEMS * SAMPLES
    multi = [f for f in finished if f.off_policy]
    assert multi, "no sample mixed weight versions"
    for f in finished:
        _check_segments(f)
        vs = [v for v, _, _ in f.segments]
        assert vs == sorted(set(vs)), f.segments  # strictly increasing, one segment per step
        assert f.segments[-1][0] == versions_by_step[f.step]
        assert f.response_token_ids == engine.ref[int(f.problem_id[1:])]
    late = [f for f in finished if int(f.problem_id[1:]) >= 3]
    assert late and all(f.segments[0][0] >= 9 for f in late)


# ---------------------------------------------------------------------------------- (d)
def test_generated_offset_promotes_at_total_length():
    cfg = DASConfig(promote_medium_tokens=10, promote_long_tokens=20)
    spec = DASSpeculator(cfg)
    prompt = list(range(2, 10))
    toks = np.array(prompt + [5] * 4, np.int32)  # 4 tokens generated in this segment

    def cls(offset):
        return spec.class_of(StepRequest("r", toks, len(prompt), "p", LengthClass.SHORT, 0, offset))

    assert cls(0) is LengthClass.SHORT
    assert cls(6) is LengthClass.SHORT  # 10 total: not above the threshold
    assert cls(7) is LengthClass.MEDIUM  # 11 total
    assert cls(17) is LengthClass.LONG  # 21 total
    assert StepRequest("r", toks, len(prompt), generated_offset=17).generated == 21


def test_proposer_reads_generated_offset():
    from vllm import SamplingParams

    from openrlhf_das.engines.vllm.factory import with_das_metadata
    from openrlhf_das.engines.vllm.proposer import DASProposer

    base = SamplingParams(max_tokens=8)
    reqs = {
        "a": with_das_metadata(base, "p", "short", generated_offset=37),
        "b": with_das_metadata(base, "q"),
        "c": SamplingParams(max_tokens=8, extra_args={"das": {"problem_id": "r", "generated_offset": "x"}}),
    }
    prop = DASProposer.__new__(DASProposer)
    prop.runner = SimpleNamespace(requests={k: SimpleNamespace(sampling_params=v) for k, v in reqs.items()})
    prop._meta = {}
    prop.bad_metadata = 0
    assert reqs["a"].extra_args["das"] == {"problem_id": "p", "length_class": "short", "generated_offset": 37}
    assert "generated_offset" not in reqs["b"].extra_args["das"]
    assert prop._meta_of("a") == ("p", LengthClass.SHORT, 37)
    assert prop._meta_of("b") == ("q", None, 0)
    assert prop._meta_of("c") == (None, None, 0) and prop.bad_metadata == 1


@pytest.mark.engine
def test_resumed_params_carry_offset(engine):
    """The manager's resubmission: prompt + tokens so far, max_tokens reduced, offset set."""
    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, PartialSample

    mgr = PartialRolloutManager(engine.llm, engine.params)
    s = PartialSample("p0", 0, [3, 4, 5], tokens=[7] * 10, length_class="long", segments=[(0, 10)])
    sp = mgr._params_for(s)
    assert sp.max_tokens == MAX_TOKENS - 10 and engine.params.max_tokens == MAX_TOKENS
    assert sp.extra_args["das"] == {"problem_id": "p0", "length_class": "long", "generated_offset": 10}
    assert engine.params.extra_args is None or "das" not in engine.params.extra_args


@pytest.mark.engine
def test_resumed_request_promotes_at_total_length_in_engine(engine):
    """In the engine: short-class samples cut after > promote_medium_tokens tokens are medium
    from the first decode step of their resumed request (without the offset they would restart
    at 0 generated tokens and stay short for another promote_medium_tokens tokens)."""
    from engine_fixtures import inproc_drafter
    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, StepBudget

    llm = engine.llm
    spec = inproc_drafter(llm).speculator
    # absolute thresholds only (no run limit, no problem quantile, no tail rule): the class then
    # depends on the generated length alone, which is what the offset must carry
    llm.collective_rpc("das_update_config", args=({"promote_medium_tokens": 12, "promote_long_tokens": 1000,
                                                   "promotion.tail_running": 0,
                                                   "promotion.history_quantile": None},))
    first: dict[str, tuple[int, int, LengthClass]] = {}
    orig = spec.class_of

    def spy(req, *args, **kwargs):
        c = orig(req, *args, **kwargs)
        first.setdefault(req.request_id, (req.generated, req.generated_offset, c))
        return c

    try:
        mgr = PartialRolloutManager(llm, engine.params)
        mgr.add_problems(_problems(engine.prompts[:4]), 1, length_classes={f"p{i}": "short" for i in range(4)})
        cut = mgr.run_step(StepBudget("tokens", 4 * 20))
        offsets = sorted(len(s.tokens) for s in mgr.carried)
        assert cut.carried == 4 and min(offsets) > 12, offsets
        first.clear()
        spec.class_of = spy
        mgr.run_step(StepBudget(), max_new=0)
    finally:
        spec.__dict__.pop("class_of", None)
        llm.collective_rpc("das_update_config", args=({"promote_medium_tokens": CONFIG.promote_medium_tokens,
                                                        "promote_long_tokens": CONFIG.promote_long_tokens,
                                                        "promotion.tail_running": CONFIG.promotion.tail_running,
                                                        "promotion.history_quantile":
                                                            CONFIG.promotion.history_quantile},))
    assert len(first) == 4
    for generated, offset, c in first.values():
        assert offset in offsets and generated >= offset > 12
        assert c is LengthClass.MEDIUM


@pytest.mark.engine
def test_logprobs_concatenate_across_cuts(engine):
    """Chosen-token logprobs (what IS correction uses) survive the cut: equal to an
    uninterrupted run's within float32 noise (the resumed prefix is recomputed by prefill)."""
    from vllm import SamplingParams

    from engine_fixtures import chosen_logprobs, token_ids
    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, StepBudget

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=0)
    prompts = engine.prompts[:3]
    outs = engine.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    ref_tok, ref_lp = token_ids(outs), chosen_logprobs(outs)
    mgr = PartialRolloutManager(engine.llm, params)
    mgr.add_problems(_problems(prompts), 1)
    results, finished = _drain(mgr, StepBudget("tokens", 40))
    assert results[0].carried > 0
    for f in finished:
        i = int(f.problem_id[1:])
        assert f.response_token_ids == ref_tok[i]
        assert len(f.logprobs) == len(f.response_token_ids)
        np.testing.assert_allclose(f.logprobs, ref_lp[i], atol=1e-3)


def _negate_final_norm(worker):
    # the final RMSNorm's weight is read directly at every forward (CPU linear layers keep a
    # prepacked copy of their weights, so editing lm_head.weight in place would not take)
    worker.model_runner.model.model.norm.weight.data.neg_()
    return True


@pytest.mark.engine
def test_real_weight_change_between_steps(engine):
    """An actual weight change between steps (final norm negated through ``collective_rpc``, then
    restored): the segment before the cut is the old policy's output, the segment after it is
    the new policy's greedy continuation of prompt + that prefix, tagged with the new version."""
    from engine_fixtures import token_ids
    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, StepBudget

    llm = engine.llm
    prompts = engine.prompts[:3]
    mgr = PartialRolloutManager(llm, engine.params)
    mgr.add_problems(_problems(prompts), 1)
    cut = mgr.run_step(StepBudget("tokens", 3 * 16))
    assert cut.carried == 3
    prefixes = {s.problem_id: list(s.tokens) for s in mgr.carried}
    assert all(prefixes.values())
    negated = False
    try:
        assert llm.collective_rpc(_negate_final_norm) == [True]
        negated = True
        llm.reset_prefix_cache()
        mgr.bump_weight_version()
        res = mgr.run_step(StepBudget())
        expect = {}
        for pid, pre in prefixes.items():
            i = int(pid[1:])
            sp = engine.params.clone()
            sp.max_tokens = MAX_TOKENS - len(pre)
            expect[pid] = token_ids(llm.generate([{"prompt_token_ids": prompts[i] + pre}], sp, use_tqdm=False))[0]
    finally:
        if negated:
            llm.collective_rpc(_negate_final_norm)
            llm.reset_prefix_cache()
    assert len(res.finished) == 3 and not mgr.num_pending
    changed = 0
    for f in res.finished:
        i = int(f.problem_id[1:])
        pre = prefixes[f.problem_id]
        assert [(v, a, b) for v, a, b in f.segments] == [(0, 0, len(pre)), (1, len(pre), len(f.response_token_ids))]
        assert pre == engine.ref[i][: len(pre)]
        assert f.response_token_ids[len(pre):] == expect[f.problem_id]
        changed += f.response_token_ids != engine.ref[i]
    assert changed > 0, "negating the final norm did not change any output"
    # restored: the old policy's outputs are back
    assert token_ids(llm.generate([{"prompt_token_ids": prompts[0]}], engine.params, use_tqdm=False))[0] == engine.ref[0]


@pytest.mark.engine
def test_stop_tokens_finish_mid_step(engine):
    """Samples ending on a stop token at different lengths (some inside a step, some after a
    resume) match the uninterrupted run, with their finish reasons."""
    from vllm import SamplingParams

    from engine_fixtures import token_ids
    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, StepBudget

    stop = [engine.ref[0][9], engine.ref[1][30]]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop_token_ids=stop)
    outs = engine.llm.generate([{"prompt_token_ids": p} for p in engine.prompts], params, use_tqdm=False)
    ref = token_ids(outs)
    reasons = [o.outputs[0].finish_reason for o in outs]
    assert "stop" in reasons and len({len(r) for r in ref}) > 2
    mgr = PartialRolloutManager(engine.llm, params)
    mgr.add_problems(_problems(engine.prompts), 1)
    results, finished = _drain(mgr, StepBudget("tokens", 50))
    assert results[0].carried > 0 and len(finished) == N_PROBLEMS
    for f in finished:
        i = int(f.problem_id[1:])
        assert (f.response_token_ids, f.finish_reason) == (ref[i], reasons[i])


@pytest.mark.engine
def test_engine_error_mid_step_loses_nothing(engine):
    """A planted engine error in the middle of a step: the step raises, its in-flight samples
    are carried over with their tokens so far, and later steps finish everything exactly once
    with the uninterrupted outputs."""
    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, StepBudget

    eng = engine.llm.llm_engine
    mgr = PartialRolloutManager(engine.llm, engine.params)
    mgr.add_problems(_problems(engine.prompts), SAMPLES)
    first = mgr.run_step(StepBudget("tokens", 60)).finished  # most samples are cut here
    calls = {"n": 0}
    real_step = eng.step

    def faulty_step():
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("planted engine fault")
        return real_step()

    eng.step = faulty_step
    try:
        with pytest.raises(RuntimeError, match="planted"):
            mgr.run_step(StepBudget())
    finally:
        del eng.step
    assert not eng.has_unfinished_requests()  # the failed step's requests were aborted
    assert any(len(s.segments) >= 2 for s in mgr.carried)  # progress made before the fault is kept
    _, finished = _drain(mgr, StepBudget("tokens", 70))
    finished = first + finished
    assert len({f.key for f in finished}) == len(finished) == N_PROBLEMS * SAMPLES
    for f in finished:
        _check_segments(f)
        assert f.response_token_ids == engine.ref[int(f.problem_id[1:])]


@pytest.mark.engine
def test_smollm2_fp32_cut_resume_identity():
    """A real model (SmolLM2-135M-Instruct, float32): chat prompts, EOS at various lengths;
    cut/resume outputs equal the uninterrupted greedy run.

    Keep this test last in the file: shutting down a second in-process engine tears down
    vLLM's process-global parallel state, which the module's tiny engine still uses."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from engine_fixtures import running_llm, smollm2_fp32, token_ids
    from openrlhf_das.engines.vllm.partial import PartialRolloutManager, StepBudget

    model = smollm2_fp32()
    tok = AutoTokenizer.from_pretrained(model)
    texts = ["What is 2+3?", "Say hello.", "Count from 1 to 20.", "What is the capital of France?"]
    prompts = []
    for t in texts:
        ids = tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True)
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    params = SamplingParams(temperature=0.0, max_tokens=24)
    with running_llm(model, das=CONFIG, max_num_seqs=8, max_model_len=256) as llm:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        ref, reasons = token_ids(outs), [o.outputs[0].finish_reason for o in outs]
        mgr = PartialRolloutManager(llm, params)
        mgr.add_problems(_problems(prompts), 1)
        results, finished = _drain(mgr, StepBudget("tokens", 30))
    assert "stop" in reasons and "length" in reasons
    assert results[0].carried > 0 and len(finished) == len(prompts)
    assert any(len(f.segments) > 1 for f in finished)
    for f in finished:
        i = int(f.problem_id[1:])
        assert (f.response_token_ids, f.finish_reason) == (ref[i], reasons[i]), f.key
