"""``pad_drafts`` auto: :func:`openrlhf_das.engines.vllm.compat.full_decode_graphs` on vLLM's own
``CUDAGraphMode`` values (the GPU modes cannot run here; their config objects can). Padding is
chosen exactly when decode steps replay full CUDA graphs, which vLLM captures only for uniform
(1 + k)-token steps once speculation is on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")
from vllm.config import CUDAGraphMode  # noqa: E402

from openrlhf_das.engines.vllm.compat import full_decode_graphs, graph_decode_requests  # noqa: E402


def _config(mode, enforce_eager: bool = False, sizes=None) -> SimpleNamespace:
    return SimpleNamespace(model_config=SimpleNamespace(enforce_eager=enforce_eager),
                           compilation_config=SimpleNamespace(cudagraph_mode=mode, cudagraph_capture_sizes=sizes))


@pytest.mark.parametrize("mode, pads", [
    (CUDAGraphMode.FULL_DECODE_ONLY, True),  # the measured GPU setting (docs/gpu.md)
    (CUDAGraphMode.FULL_AND_PIECEWISE, True),  # vLLM's default with torch.compile
    (CUDAGraphMode.FULL, True),
    (CUDAGraphMode.PIECEWISE, False),  # decode replays piecewise graphs whatever its shape
    (CUDAGraphMode.NONE, False),  # eager, and every CPU engine
])
def test_pads_exactly_with_full_decode_graphs(mode, pads) -> None:
    assert full_decode_graphs(_config(mode)) is pads


def test_eager_or_unknown_engines_do_not_pad() -> None:
    assert full_decode_graphs(_config(CUDAGraphMode.FULL_DECODE_ONLY, enforce_eager=True)) is False
    assert full_decode_graphs(_config(None)) is False
    assert full_decode_graphs(SimpleNamespace()) is False


def test_graph_coverage_of_padded_decode_steps() -> None:
    # with k = 4 vLLM 0.26 keeps capture sizes that are multiples of 5, under its 512-token cap
    spec_sizes = [5, 10, 20, 40, 80, 160, 320, 480, 510]
    full = CUDAGraphMode.FULL_DECODE_ONLY
    assert graph_decode_requests(_config(full, sizes=spec_sizes), 5) == 102  # 510 tokens / 5
    assert graph_decode_requests(_config(full, sizes=[*spec_sizes, 1280]), 5) == 256  # a wider size added
    assert graph_decode_requests(_config(full, sizes=[1, 2, 4, 8, 512]), 1) == 512  # no speculation
    assert graph_decode_requests(_config(full, sizes=[1, 2, 4, 8]), 5) == 0  # no multiple of 5: none
    assert graph_decode_requests(_config(CUDAGraphMode.NONE, sizes=spec_sizes), 5) == 0
    assert graph_decode_requests(_config(full, enforce_eager=True, sizes=spec_sizes), 5) == 0
