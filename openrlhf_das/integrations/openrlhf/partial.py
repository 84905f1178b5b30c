"""Asynchronous partial rollouts for OpenRLHF's async trainer (``--das.partial_rollout true``).

OpenRLHF's own ``--train.partial_rollout_enable`` lets generation run while the trainer syncs
weights: ``TrainingActor.broadcast_to_vllm`` wraps the sync in ``pause_generation`` (vLLM
``mode="keep"``) / ``resume_generation`` and in-flight samples simply continue, with the KV cache
of the old weights, and nothing records where the weights changed. It still waits for the
slowest sample of every batch. This module adds the two missing parts on top of it:

**Step budget (trainer side, :func:`generate_vllm`).** ``SamplesGenerator._generate_vllm`` keeps
``--rollout.vllm_generate_batch_size`` prompt groups in flight and returns as soon as
``--rollout.batch_size`` groups are complete (one training step's worth). The groups still
running are *carried*: their Ray object refs are kept and collected first by the next step; they
keep generating in the engines meanwhile (that is the asynchronous part). A group may be carried
over at most ``partial_max_staleness`` steps; then the step waits for it. At the end of the
dataset everything in flight is waited for, so no sample is lost or duplicated and every group
(all ``n_samples_per_prompt`` samples of a prompt) reaches training whole and exactly once.

**Cut and resume at every weight sync (engine side, :class:`EnginePartialState`).** The DAS
rollout actor's ``pause_generation`` *aborts* its in-flight requests (keeping their tokens and
logprobs), and ``resume_generation`` bumps the engine's weight version and resubmits each of them
as ``prompt + tokens so far`` with ``max_tokens``/``min_tokens`` reduced and
``extra_args["das"]["generated_offset"]`` = tokens so far. Consequences:

* each continuation is the new policy's own (its KV cache is recomputed with the new weights,
  where ``mode="keep"`` would reuse KV computed by the old ones);
* DAS keeps the problem id and class, promotes on the sample's total length, and builds the
  request's suffix tree over its full context from the first decode step (the context is the
  prompt of the resumed request);
* every generated token is attributed to the weight version current when the engine delivered it
  (exact: nothing is generated between the abort and the resume). A response carries
  ``das_weight_versions = [[version, start, end], ...]`` (half-open ranges over its generated
  tokens, in order), the experience built from it gets ``info`` scalars (``das_weight_version_min``,
  ``das_weight_version_max``, ``das_off_policy``, ``das_stale_token_frac``) and the list itself
  as the attribute ``das_weight_versions``;
* chosen-token logprobs are concatenated over the segments, so OpenRLHF's importance-sampling
  correction (``--algo.advantage.is_correction_enable``, which divides by the rollout logprobs)
  weights every token by the policy that actually sampled it.

The history actor still receives each rollout once, when its group completes (the step-boundary
capture in :mod:`.samples` only sees finished responses).

Limits: multimodal requests are not cut (they continue as OpenRLHF's ``mode="keep"`` does); a
stop *string* spanning a cut is not detected (stop tokens are); groups in flight when a run stops
are not in OpenRLHF's checkpoint (their prompts count as consumed, so a resumed run skips them). The synchronous trainer is not
supported (it syncs weights without pausing the engines): the command line refuses the flag
without ``--train.async_enable --train.partial_rollout_enable``.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)

CUT_TIMEOUT_S = 120.0
"""How long ``pause_generation`` keeps aborting before it gives up on stragglers (logged)."""

SEGMENTS: contextvars.ContextVar[list[list[int]] | None] = contextvars.ContextVar("openrlhf_das_segments", default=None)
"""The running sample's ``[version, n_tokens]`` runs, in generation order (one list per sample:
set in the sample's own asyncio task by the actor's ``generate_responses``)."""


class EnginePartialState:
    """Cut/resume bookkeeping of one DAS rollout actor (lives in its event loop).

    Invariants: a request id is in ``inflight`` from the moment its sample decided to submit it
    (atomically with the gate check) until its generator ended; ``open`` is clear between
    ``pause`` and ``resume``, and no sample submits while it is clear; ``version`` counts the
    weight syncs this engine went through (``resume`` increments it).
    """

    def __init__(self) -> None:
        self.version = 0
        self.open = asyncio.Event()
        self.open.set()
        self.inflight: set[str] = set()
        self.cut: set[str] = set()
        self.stats = {"cuts": 0, "resumed_segments": 0, "syncs": 0, "cut_timeouts": 0, "tokens": 0}
        """``tokens``: generated tokens delivered to the samples (all versions)."""

    async def pause(self, llm: Any) -> None:
        """Close the gate and abort every in-flight request (repeated until none is left: a
        request whose sample was between the gate check and ``add_request`` is aborted on the
        next round)."""
        self.open.clear()
        deadline = time.monotonic() + CUT_TIMEOUT_S
        while self.inflight:
            ids = list(self.inflight)
            self.cut.update(ids)
            await llm.abort(ids)
            for _ in range(100):
                if not self.inflight:
                    break
                await asyncio.sleep(0.005)
            if self.inflight and time.monotonic() > deadline:
                self.stats["cut_timeouts"] += 1
                logger.warning("DAS partial: %d requests did not stop within %.0f s; they continue after the sync",
                               len(self.inflight), CUT_TIMEOUT_S)
                break

    def resume(self) -> None:
        self.version += 1
        self.stats["syncs"] += 1
        self.open.set()

    async def generate(
        self,
        llm: Any,
        prompt_token_ids: list[int],
        sampling_params: Any,
        tag: Callable[[Any, int], Any],
        new_request_id: Callable[[], str],
    ) -> Any:
        """One sample's generation, cut and resumed across weight syncs. ``tag(params, offset)``
        returns the per-request params (DAS metadata with ``generated_offset``). Returns the last
        ``RequestOutput`` with the whole sample in ``outputs[0]`` (token ids, logprobs, text) and
        the original prompt."""
        from vllm.inputs import TokensPrompt

        runs = SEGMENTS.get()
        tokens: list[int] = []
        logprobs: list[Any] | None = [] if sampling_params.logprobs is not None else None
        texts: list[str] = []
        cumulative = 0.0
        while True:
            while not self.open.is_set():
                await self.open.wait()
            params = copy.copy(sampling_params)
            if sampling_params.max_tokens is not None:
                params.max_tokens = sampling_params.max_tokens - len(tokens)
            params.min_tokens = max(0, (sampling_params.min_tokens or 0) - len(tokens))
            params = tag(params, len(tokens))
            rid = new_request_id()
            self.inflight.add(rid)  # no await since the gate check: atomic with it
            if tokens:
                self.stats["resumed_segments"] += 1
            final = None
            seen = 0
            try:
                async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt_token_ids + tokens), params,
                                              request_id=rid):
                    n = len(out.outputs[0].token_ids)
                    if n > seen:
                        self.stats["tokens"] += n - seen
                        if runs is not None:
                            if runs and runs[-1][0] == self.version:
                                runs[-1][1] += n - seen
                            else:
                                runs.append([self.version, n - seen])
                    seen = max(seen, n)
                    final = out
            finally:
                self.inflight.discard(rid)
            was_cut = rid in self.cut
            self.cut.discard(rid)
            if final is None:  # nothing came back (should not happen: abort yields a final output)
                if was_cut:
                    continue
                raise RuntimeError(f"vLLM returned no output for request {rid}")
            out0 = final.outputs[0]
            tokens.extend(out0.token_ids)
            if logprobs is not None and out0.logprobs is not None:
                logprobs.extend(out0.logprobs)
            texts.append(out0.text or "")
            cumulative += out0.cumulative_logprob or 0.0
            if was_cut and out0.finish_reason == "abort":
                self.stats["cuts"] += 1
                if sampling_params.max_tokens is None or len(tokens) < sampling_params.max_tokens:
                    continue
                out0.finish_reason = "length"  # cut exactly at its last token: nothing left to resume
            break
        out0.token_ids = tokens
        out0.logprobs = logprobs
        out0.text = "".join(texts)
        out0.cumulative_logprob = cumulative if sampling_params.logprobs is not None else out0.cumulative_logprob
        final.prompt_token_ids = list(prompt_token_ids)
        return final


def response_segments(runs: list[list[int]]) -> list[list[int]]:
    """``[[version, n], ...]`` runs → ``[[version, start, end], ...]`` over the response's
    generated tokens (adjacent runs of one version merged)."""
    out: list[list[int]] = []
    pos = 0
    for version, n in runs:
        if n <= 0:
            continue
        if out and out[-1][0] == version:
            out[-1][2] += n
        else:
            out.append([int(version), pos, pos + int(n)])
        pos += int(n)
    return out


def version_info(segments: list[list[int]]) -> dict[str, float]:
    """Per-sample scalars for ``Experience.info`` (OpenRLHF averages them in its step logs)."""
    if not segments:
        return {}
    total = segments[-1][2]
    last = max(v for v, _, _ in segments)
    stale = sum(e - s for v, s, e in segments if v < last)
    return {
        "das_weight_version_min": float(min(v for v, _, _ in segments)),
        "das_weight_version_max": float(last),
        "das_off_policy": float(len({v for v, _, _ in segments}) > 1),
        "das_stale_token_frac": float(stale / total) if total else 0.0,
    }


# ---------------------------------------------------------------------- trainer side
class CarriedGroups:
    """Prompt groups still generating when a step ended: ``(ref, dispatched_step)``."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, int]] = []
        self.step = 0
        self.history: list[dict[str, int]] = []
        """Per step: dispatched, carried in, carried out, completed (tests and logs)."""


def check_openrlhf_args(args: Any) -> list[str]:
    """What is wrong with OpenRLHF's parsed ``args`` for ``--das.partial_rollout true``."""
    problems = []
    if not args.train.async_enable or not getattr(args.train, "partial_rollout_enable", False):
        problems.append("--das.partial_rollout needs OpenRLHF's async trainer with its partial mode: add "
                        "--train.async_enable --train.partial_rollout_enable (weights are synced while "
                        "samples are in flight; the synchronous trainer is not supported)")
    in_flight = getattr(args.rollout, "vllm_generate_batch_size", None) or args.rollout.batch_size
    if in_flight <= args.rollout.batch_size:
        problems.append(f"--das.partial_rollout: --rollout.vllm_generate_batch_size ({in_flight}) must exceed "
                        f"--rollout.batch_size ({args.rollout.batch_size}): a step returns after batch_size "
                        "groups and carries the rest of the groups in flight")
    return problems


def carried_of(generator: Any) -> CarriedGroups:
    st = generator.__dict__.get("_das_partial")
    if st is None:
        st = generator.__dict__["_das_partial"] = CarriedGroups()
    return st


def generate_vllm(generator: Any, dataloader_iter: Any, num_prompts: int, dynamic_filtering: bool,
                  max_staleness: int, **generate_kwargs: Any) -> tuple[list[Any], int, bool]:
    """``SamplesGenerator._generate_vllm`` with a completion budget (see the module docstring).

    Keeps ``num_prompts`` groups in flight (carried + new), returns after
    ``args.rollout.batch_size`` accepted groups, or after everything when the dataloader is
    exhausted. Returns OpenRLHF's ``(experiences, prompts_consumed, exhausted)``.
    """
    import ray
    from openrlhf.trainer.ppo_utils.samples_generator import _collect_prompt_batch

    st = carried_of(generator)
    args = generator.args
    budget = args.rollout.batch_size
    carried_in = len(st.pending)
    prompts, labels, images, exhausted = _collect_prompt_batch(dataloader_iter, max(0, num_prompts - carried_in))
    prompts_consumed = len(prompts)
    pending: list[tuple[Any, int]] = list(st.pending)
    if prompts:
        pending += [(r, st.step) for r in generator._dispatch_prompts_to_vllm(prompts, labels, images=images,
                                                                           **generate_kwargs)]
    st.pending = []
    dispatched = prompts_consumed
    accepted: list[Any] = []
    groups = 0

    def waiting_for() -> list[Any]:
        """Refs the step still waits for: all while under budget or at the end of the data,
        afterwards only groups that reached the staleness bound."""
        if exhausted or groups < budget:
            return [r for r, _ in pending]
        return [r for r, born in pending if st.step - born >= max_staleness]

    while refs := waiting_for():
        ready, _ = ray.wait(refs, num_returns=1, timeout=10.0)
        if not ready:
            continue
        ref = ready[0]
        born = next(b for r, b in pending if r is ref)
        pending = [(r, b) for r, b in pending if r is not ref]
        experiences = [generator._process_response_into_experience(resp, **generate_kwargs) for resp in ray.get(ref)]
        if dynamic_filtering and experiences and all(e.scores is not None for e in experiences):
            scores = [e.scores[0].item() for e in experiences]
            lo, hi = args.algo.dynamic_filtering_range
            if not (lo < sum(scores) / len(scores) < hi):
                experiences = []
        if experiences:
            accepted.extend(experiences)
            groups += 1
        elif dynamic_filtering and not exhausted:
            new_prompts, new_labels, new_images, exhausted = _collect_prompt_batch(dataloader_iter, 1)
            prompts_consumed += len(new_prompts)
            dispatched += len(new_prompts)
            if new_prompts:  # the replacement keeps the filtered group's age
                pending += [(r, born) for r in generator._dispatch_prompts_to_vllm(
                    new_prompts, new_labels, images=new_images, **generate_kwargs)]
    st.pending = pending
    st.history.append({"step": st.step, "dispatched": dispatched, "carried_in": carried_in,
                       "carried_out": len(pending), "completed": groups})
    logger.info("DAS partial step %d: %d groups done, %d carried in, %d new, %d carried to the next step",
                st.step, groups, carried_in, dispatched, len(pending))
    st.step += 1
    return accepted, prompts_consumed, exhausted and not pending
