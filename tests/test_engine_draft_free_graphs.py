"""Full CUDA graphs for draft-free steps (:mod:`openrlhf_das.engines.vllm.draft_free_graphs`).

CUDA graphs cannot be captured on this CPU machine, so these tests run vLLM's real
``CudagraphDispatcher`` and ``GPUModelRunner`` methods (key set-up, dispatch, the capture
loop's per-key set-up) on subclasses, with the runner's device-side ``_dummy_run`` replaced by
a recorder; the capture and replay themselves ran on the GPU (docs/gpu.md). The patch is applied
to the subclasses only, so engines started by other tests keep stock classes.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("vllm")
from vllm.config import CompilationConfig, CUDAGraphMode  # noqa: E402
from vllm.v1.cudagraph_dispatcher import CudagraphDispatcher  # noqa: E402
from vllm.v1.worker.gpu_model_runner import GPUModelRunner  # noqa: E402

from openrlhf_das.engines.vllm import draft_free_graphs  # noqa: E402

K = 4  # draft tokens: padded decode steps have 1 + K = 5 tokens per request
MAX_SEQS = 256


def _classes(patched: bool):
    class Dispatcher(CudagraphDispatcher):
        pass

    class Runner(GPUModelRunner):
        pass

    if patched:
        assert draft_free_graphs.install(Dispatcher, Runner)
        assert not draft_free_graphs.install(Dispatcher, Runner)  # idempotent
    return Dispatcher, Runner


def _vllm_config(mode: str = "FULL_DECODE_ONLY", lora=None, max_capture: int = 1280) -> SimpleNamespace:
    """vLLM's own CompilationConfig with the capture sizes vLLM derives for k = 4."""
    sizes = [s for s in (1, 2, 4, *range(8, 256, 8), *range(256, max_capture + 1, 16)) if s <= max_capture]
    cc = CompilationConfig(mode=0, cudagraph_mode=mode, cudagraph_capture_sizes=sizes,
                           max_cudagraph_capture_size=max_capture)
    cc.post_init_cudagraph_sizes()
    cc.adjust_cudagraph_sizes_for_spec_decode(1 + K, 1)
    return SimpleNamespace(compilation_config=cc, num_speculative_tokens=K, lora_config=lora,
                           scheduler_config=SimpleNamespace(max_num_seqs=MAX_SEQS))


def _runner(patched: bool, **config):
    Dispatcher, Runner = _classes(patched)
    cfg = _vllm_config(**config)
    dispatcher = Dispatcher(cfg)
    dispatcher.initialize_cudagraph_keys(cfg.compilation_config.cudagraph_mode, 1 + K)
    runner = object.__new__(Runner)  # no device: only the attributes the dispatch path reads
    runner.uniform_decode_query_len = 1 + K
    runner.cudagraph_dispatcher = dispatcher
    runner.compilation_config = SimpleNamespace(pass_config=SimpleNamespace(enable_sp=False), cudagraph_num_of_warmups=1)
    runner.model_config = SimpleNamespace(is_encoder_decoder=False)
    runner.input_batch = SimpleNamespace(lora_id_to_lora_request={})
    runner.vllm_config = SimpleNamespace(parallel_config=SimpleNamespace(data_parallel_size=1, tensor_parallel_size=1),
                                         observability_config=SimpleNamespace(cudagraph_metrics=False),
                                         compilation_config=runner.compilation_config)
    return runner


def _step(runner, tokens_per_request: list[int]):
    """Dispatch a decode step the way ``execute_model`` does; (mode, descriptor)."""
    n = np.array(tokens_per_request, dtype=np.int32)
    mode, desc, *_ = runner._determine_batch_execution_and_padding(
        num_tokens=int(n.sum()), num_reqs=len(n), num_scheduled_tokens_np=n,
        max_num_scheduled_tokens=int(n.max()), use_cascade_attn=False)
    return mode, desc


def test_keys_added_next_to_vllms_without_collision() -> None:
    stock = _runner(False).cudagraph_dispatcher
    das = _runner(True).cudagraph_dispatcher
    stock_full = stock.cudagraph_keys[CUDAGraphMode.FULL]
    added = draft_free_graphs.draft_free_keys(das)
    assert stock_full and all(d.num_reqs * (1 + K) == d.num_tokens for d in stock_full)
    assert added and all(d.uniform and d.num_reqs == d.num_tokens <= MAX_SEQS for d in added)
    assert max(d.num_reqs for d in added) == MAX_SEQS  # added: vLLM's next size (260) exceeds it
    assert das.cudagraph_keys[CUDAGraphMode.FULL] == stock_full | added
    assert not stock_full & added
    assert das.uniform_decode_query_len == 1 + K  # restored
    # the capture loop gets them: vLLM's sizes plus one graph per 1-token key
    full = dict(das.get_capture_descs())[CUDAGraphMode.FULL]
    assert set(full) == stock_full | added


def test_one_token_steps_replay_a_graph_only_with_the_patch() -> None:
    stock, das = _runner(False), _runner(True)
    mode, desc = _step(stock, [1] * 7)  # nothing drafted for 7 requests
    assert mode == CUDAGraphMode.NONE  # vLLM: eager
    mode, desc = _step(das, [1] * 7)
    assert mode == CUDAGraphMode.FULL and (desc.num_tokens, desc.num_reqs, desc.uniform) == (10, 10, True)
    mode, desc = _step(das, [1] * 200)
    assert mode == CUDAGraphMode.FULL and desc.num_reqs == 200
    assert das.uniform_decode_query_len == 1 + K and das.cudagraph_dispatcher.uniform_decode_query_len == 1 + K


def test_padded_and_mixed_steps_dispatch_as_in_vllm() -> None:
    stock, das = _runner(False), _runner(True)
    for step in ([5] * 7, [5] * 256, [1, 5, 5], [3] * 4, [1] * 3 + [40]):
        assert _step(das, step) == _step(stock, step)
    mode, desc = _step(das, [5] * 7)  # padded drafts: vLLM's own (1 + k) graph
    assert mode == CUDAGraphMode.FULL and (desc.num_tokens, desc.num_reqs) == (35, 7)
    assert _step(das, [1, 5, 5])[0] == CUDAGraphMode.NONE  # mixed: eager, as before


def test_steps_above_the_largest_key_run_eager() -> None:
    das = _runner(True, max_capture=1280)
    mode, desc = _step(das, [1] * 251)  # vLLM would pad to 260 > max_num_seqs: to 256 here
    assert mode == CUDAGraphMode.FULL and (desc.num_tokens, desc.num_reqs) == (MAX_SEQS, MAX_SEQS)
    small = _runner(True, max_capture=160)
    assert _step(small, [1] * 150)[0] == CUDAGraphMode.FULL
    assert _step(small, [1] * 170)[0] == CUDAGraphMode.NONE  # beyond the capture sizes
    assert _step(small, [1] * 170) == _step(_runner(False, max_capture=160), [1] * 170)


def test_steps_of_every_request_need_a_covering_capture_size() -> None:
    """A maximum capture size of max_num_seqs (256) leaves vLLM 250 at k = 4 (sizes rounded to
    multiples of 5), so steps of 251-256 requests had no graph; :func:`covering_capture_size`
    (272, rounded to 260) covers them."""
    assert _step(_runner(True, max_capture=MAX_SEQS), [1] * MAX_SEQS)[0] == CUDAGraphMode.NONE
    size = draft_free_graphs.covering_capture_size(MAX_SEQS, 1 + K)
    assert size == 272
    mode, desc = _step(_runner(True, max_capture=size), [1] * MAX_SEQS)
    assert mode == CUDAGraphMode.FULL and (desc.num_tokens, desc.num_reqs) == (MAX_SEQS, MAX_SEQS)


def _kept_max(max_capture: int, query_len: int) -> int:
    """vLLM's own largest capture size after its spec-decode rounding
    (``CompilationConfig.adjust_cudagraph_sizes_for_spec_decode``), from the default sizes of
    ``max_capture`` truncated as ``VllmConfig`` does."""
    sizes = draft_free_graphs.default_capture_sizes(max_capture)
    cc = CompilationConfig(mode=0, cudagraph_mode="FULL_DECODE_ONLY", cudagraph_capture_sizes=sizes,
                           max_cudagraph_capture_size=sizes[-1])
    cc.post_init_cudagraph_sizes()
    cc.adjust_cudagraph_sizes_for_spec_decode(query_len, 1)
    return cc.max_cudagraph_capture_size


@pytest.mark.parametrize("query_len", [1, 2, 5, 9, 17])
@pytest.mark.parametrize("tokens", [1, 3, 7, 100, 255, 256, 257, 1000, 1010, 1011, 1024, 4096])
def test_covering_capture_size_is_the_smallest_that_covers(tokens, query_len) -> None:
    size = draft_free_graphs.covering_capture_size(tokens, query_len)
    assert size in draft_free_graphs.default_capture_sizes(size)  # vLLM keeps it as given
    assert _kept_max(size, query_len) >= tokens
    smaller = [s for s in draft_free_graphs.default_capture_sizes(size) if query_len <= s < size]
    assert not smaller or _kept_max(smaller[-1], query_len) < tokens  # (vLLM refuses a size < query_len)


@pytest.mark.parametrize("mode", ["NONE", "PIECEWISE_STUB"])
def test_no_keys_without_full_decode_graphs(mode) -> None:
    if mode == "PIECEWISE_STUB":  # PIECEWISE needs inductor; the dispatcher skips FULL keys the same way
        Dispatcher, _ = _classes(True)
        cfg = _vllm_config()
        d = Dispatcher(cfg)
        d.initialize_cudagraph_keys(CUDAGraphMode.NONE, 1 + K)
        assert draft_free_graphs.draft_free_keys(d) == frozenset()
        return
    das = _runner(True, mode=mode)
    assert draft_free_graphs.draft_free_keys(das.cudagraph_dispatcher) == frozenset()
    assert _step(das, [1] * 7)[0] == CUDAGraphMode.NONE


def test_no_keys_with_lora() -> None:
    lora = SimpleNamespace(specialize_active_lora=False, max_loras=1)
    Dispatcher, _ = _classes(True)
    cfg = _vllm_config(lora=lora)
    cfg.compilation_config.cudagraph_specialize_lora = False
    d = Dispatcher(cfg)
    d.initialize_cudagraph_keys(CUDAGraphMode.FULL_DECODE_ONLY, 1 + K)
    assert draft_free_graphs.draft_free_keys(d) == frozenset()


def test_capture_runs_one_token_keys_with_query_length_one(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.accelerator, "synchronize", lambda *a, **k: None)  # no device here
    das = _runner(True)
    seen: list[tuple[int, bool, int, int, CUDAGraphMode]] = []

    def dummy_run(num_tokens, cudagraph_runtime_mode=None, uniform_decode=False, **_):
        # what vLLM's _dummy_run derives its batch from: max_query_len = uniform_decode_query_len
        seen.append((num_tokens, uniform_decode, das.uniform_decode_query_len,
                     das.cudagraph_dispatcher.uniform_decode_query_len, cudagraph_runtime_mode))

    das._dummy_run = dummy_run
    keys = draft_free_graphs.draft_free_keys(das.cudagraph_dispatcher)
    one = next(d for d in keys if d.num_tokens == 10)
    five = next(d for d in das.cudagraph_dispatcher.cudagraph_keys[CUDAGraphMode.FULL] - keys if d.num_tokens == 10)
    das._warmup_and_capture(one, cudagraph_runtime_mode=CUDAGraphMode.FULL)
    das._warmup_and_capture(five, cudagraph_runtime_mode=CUDAGraphMode.FULL)
    assert seen == [(10, True, 1, 1, CUDAGraphMode.NONE), (10, True, 1, 1, CUDAGraphMode.FULL),
                    (10, True, 5, 5, CUDAGraphMode.NONE), (10, True, 5, 5, CUDAGraphMode.FULL)]
    assert das.uniform_decode_query_len == 1 + K


def test_query_length_restored_when_vllm_raises(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.accelerator, "synchronize", lambda *a, **k: None)  # no device here
    das = _runner(True)

    def boom(*_, **__):
        raise RuntimeError("capture failed")

    das._dummy_run = boom
    one = next(iter(draft_free_graphs.draft_free_keys(das.cudagraph_dispatcher)))
    with pytest.raises(RuntimeError):
        das._warmup_and_capture(one, cudagraph_runtime_mode=CUDAGraphMode.FULL)
    assert das.uniform_decode_query_len == 1 + K and das.cudagraph_dispatcher.uniform_decode_query_len == 1 + K


def _proposer(plain_graphs: bool):
    from openrlhf_das.engines.vllm.proposer import DASProposer

    p = object.__new__(DASProposer)  # the padding step only: no engine needed
    p._pads, p._plain_graphs, p.plain_steps, p.max_model_len = True, plain_graphs, 0, 64
    tok = np.zeros((2, 64), dtype=np.int64)
    tok[:, :3] = [[7, 8, 9], [4, 5, 6]]
    batch = SimpleNamespace(num_tokens_no_spec=np.array([3, 3]), token_ids_cpu=tok)
    return p, batch


def test_padded_proposer_leaves_draft_free_steps_undrafted() -> None:
    p, batch = _proposer(plain_graphs=True)
    assert p._pad([[], []], K, batch, [[9], [6]]) == [[], []]  # a 1-token step: its own graph
    assert p.plain_steps == 1
    assert p._pad([[3], []], K, batch, [[9], [6]]) == [[3, 3, 3, 3], [6, 6, 6, 6]]  # one drafts: all padded
    assert p.plain_steps == 1
    stock, batch = _proposer(plain_graphs=False)  # no 1-token graphs: pad every step (the old way)
    assert stock._pad([[], []], K, batch, [[9], [6]]) == [[9, 9, 9, 9], [6, 6, 6, 6]]
    assert stock.plain_steps == 0


def _warn_proposer(plain_graphs: bool, capture_sizes: list[int]):
    from openrlhf_das.config import DASConfig
    from openrlhf_das.engines.vllm.proposer import DASProposer

    p = object.__new__(DASProposer)
    p.num_speculative_tokens, p.das_config, p._plain_graphs = K, DASConfig(), plain_graphs  # gate: max_running 64
    p.vllm_config = SimpleNamespace(
        model_config=SimpleNamespace(enforce_eager=False),
        compilation_config=SimpleNamespace(cudagraph_mode=CUDAGraphMode.FULL_DECODE_ONLY,
                                           cudagraph_capture_sizes=capture_sizes),
        scheduler_config=SimpleNamespace(max_num_seqs=MAX_SEQS))
    return p


def test_coverage_warnings_follow_what_steps_can_occur(monkeypatch) -> None:
    from openrlhf_das.engines.vllm import drafting as drafting_module

    warned: list[str] = []  # the proposer's warnings only (caplog also gets other loggers' records)

    class Recorder:
        def warning(self, msg, *args) -> None:
            warned.append(msg % args)

    monkeypatch.setattr(drafting_module, "logger", Recorder())
    sizes = list(range(5, 505, 5))  # vLLM 0.26's default cap (512 tokens) at k = 4: 100 requests
    dispatcher = _runner(True).cudagraph_dispatcher  # 1-token keys up to max_num_seqs
    _warn_proposer(True, sizes)._warn_uncovered_decode_steps(dispatcher)
    assert warned == []  # drafted steps have <= 64 requests; draft-free ones have graphs
    p = _warn_proposer(False, sizes)  # every step padded: up to max_num_seqs requests
    p._warn_uncovered_decode_steps(None)
    assert p.graph_max_requests == 100
    assert len(warned) == 1 and "at most 100 requests" in warned[0] and "=1280" in warned[0]
    warned.clear()
    small = _runner(True, max_capture=160).cudagraph_dispatcher  # 1-token keys up to 160 requests
    _warn_proposer(True, sizes)._warn_uncovered_decode_steps(small)
    assert len(warned) == 1 and "draft-free decode steps of at most 160 requests" in warned[0]
