"""Asynchronous partial rollouts with DAS: budgeted rollout steps that carry unfinished samples.

A :class:`PartialRolloutManager` drives a real ``vllm.LLM`` engine step by step
(``llm.llm_engine.add_request`` / ``step()`` / ``abort_request``). A *rollout step* ends when a
:class:`StepBudget` is reached (tokens generated in the step, or samples completed in the
step). Requests still running then are aborted and kept as :class:`PartialSample` records
(problem id, sample index, prompt, tokens so far, length class, weight version of every
segment). The next step resubmits them first — prompt = original prompt + tokens so far,
``max_tokens``/``min_tokens`` reduced by what was already generated — tagged with the weight
version current at that step, alongside new prompts.

DAS across the cut: a resumed request keeps its problem id and length class, and carries
``extra_args["das"]["generated_offset"]`` (tokens generated before this segment) so that the
proposer's online promotion sees the sample's total generated length. Its per-request suffix
tree is rebuilt from its full context (the prompt includes the earlier segments). Each sample
is reported as a :class:`FinishedSample` exactly once, with ``segments`` =
``[(weight_version, start, end), ...]`` over its response tokens; only finished samples go into
the DAS history (:meth:`PartialRolloutManager.load_history`).

Limits: the budget is checked after each engine step, so a step overshoots a token budget by at
most one engine step's output; stop *strings* spanning a cut are not seen (token-level stops —
EOS, ``stop_token_ids`` — are exact); ``n`` must be 1 (one request per sample); a per-request
``seed`` restarts its generator at the cut (greedy and unseeded sampling are unaffected).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

import numpy as np
from vllm.sampling_params import RequestOutputKind

from ...drafter import HistorySnapshot, Rollout

logger = logging.getLogger(__name__)

BudgetKind = Literal["tokens", "samples"]


@dataclass(frozen=True)
class StepBudget:
    """When a rollout step ends: after ``limit`` generated tokens (``kind="tokens"``, counted
    over all requests of the step) or ``limit`` completed samples (``kind="samples"``).
    ``limit=None``: run until every submitted request finished (a synchronous step)."""

    kind: BudgetKind = "tokens"
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("tokens", "samples"):
            raise ValueError(f"budget kind must be 'tokens' or 'samples', not {self.kind!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError("budget limit must be >= 1 (or None)")

    def reached(self, tokens: int, completed: int) -> bool:
        if self.limit is None:
            return False
        return (tokens if self.kind == "tokens" else completed) >= self.limit


@dataclass
class PartialSample:
    """A sample in flight between rollout steps.

    ``segments``: ``(weight_version, n_tokens)`` per segment generated so far (one per rollout
    step that produced tokens for it; consecutive segments may share a version), in order;
    ``sum(n for _, n in segments) == len(tokens)``.
    """

    problem_id: str
    sample_index: int
    prompt_token_ids: list[int]
    tokens: list[int] = field(default_factory=list)
    length_class: str | None = None
    segments: list[tuple[int, int]] = field(default_factory=list)
    logprobs: list[float] | None = None
    submissions: int = 0  # engine requests made for this sample so far

    @property
    def key(self) -> tuple[str, int]:
        return (self.problem_id, self.sample_index)


@dataclass
class FinishedSample:
    """A completed sample. ``segments``: ``(weight_version, start, end)`` over
    ``response_token_ids`` (half-open, contiguous, covering the whole response)."""

    problem_id: str
    sample_index: int
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    length_class: str | None
    segments: list[tuple[int, int, int]]
    finish_reason: str | None
    step: int
    logprobs: list[float] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.problem_id, self.sample_index)

    @property
    def off_policy(self) -> bool:
        """True if more than one weight version produced this response."""
        return len({v for v, _, _ in self.segments}) > 1


@dataclass
class StepResult:
    step: int
    weight_version: int
    finished: list[FinishedSample]
    carried: int  # samples cut and carried to the next step
    generated_tokens: int  # tokens generated in this step (all requests)
    engine_steps: int
    resumed: int  # carried-over samples resubmitted at the start of this step
    budget_reached: bool


def _segments_with_bounds(segs: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    pos = 0
    for v, n in segs:
        out.append((v, pos, pos + n))
        pos += n
    return out


class PartialRolloutManager:
    """Budgeted rollout steps with carried-over partial samples on one ``vllm.LLM``.

    ``sampling_params``: shared ``SamplingParams`` (never mutated; ``n`` must be 1, use
    ``samples_per_problem`` in :meth:`add_problems`). ``das``: attach DAS metadata
    (``extra_args["das"]``) to every request. ``resume_first``: carried samples are submitted
    before new prompts in a step (vLLM schedules in arrival order, so they finish first).
    """

    def __init__(
        self,
        llm: Any,
        sampling_params: Any,
        *,
        das: bool = True,
        weight_version: int = 0,
        resume_first: bool = True,
        history_window: int = 5,
    ) -> None:
        if getattr(sampling_params, "n", 1) != 1:
            raise ValueError("partial rollouts need n == 1 (one request per sample)")
        if sampling_params.max_tokens is None:
            raise ValueError("partial rollouts need sampling_params.max_tokens")
        self.llm = llm
        self.engine = llm.llm_engine
        self.params = sampling_params
        self.das = das
        self.weight_version = int(weight_version)
        self.resume_first = resume_first
        self.history_window = history_window
        self.step_index = 0
        self._carried: list[PartialSample] = []
        self._new: deque[PartialSample] = deque()
        self._num_samples: dict[str, int] = {}  # problem id -> samples queued so far
        self._finished_keys: set[tuple[str, int]] = set()
        self._unreported: list[FinishedSample] = []  # finished in a step that raised
        self._history: list[Rollout] = []
        self._ids = itertools.count()
        self.weight_version_errors = 0  # engine.set_weight_version calls that raised (logged)

    # ------------------------------------------------------------------ inputs / state
    def add_problems(
        self,
        problems: Iterable[tuple[str, Sequence[int]]],
        samples_per_problem: int = 1,
        length_classes: dict[str, str] | None = None,
    ) -> None:
        """Queue ``samples_per_problem`` samples of each ``(problem_id, prompt_token_ids)``.
        Sample indices continue per problem id across calls (a problem added again gets new
        indices), so ``(problem_id, sample_index)`` identifies a sample for the manager's life."""
        for pid, prompt in problems:
            pid = str(pid)
            cls = (length_classes or {}).get(pid)
            start = self._num_samples.get(pid, 0)
            self._num_samples[pid] = start + samples_per_problem
            for j in range(start, start + samples_per_problem):
                self._new.append(PartialSample(pid, j, list(prompt), length_class=cls))

    def set_weight_version(self, version: int) -> None:
        """Weights were updated: segments generated from now on carry ``version``. Also recorded
        on the engine (``LLMEngine.set_weight_version``) where vLLM supports it."""
        self.weight_version = int(version)
        setter = getattr(self.engine, "set_weight_version", None)  # vLLM without it: our counter only
        if setter is not None:
            try:
                setter(str(self.weight_version))
            except Exception:  # noqa: BLE001 - bookkeeping only; our counter is authoritative
                self.weight_version_errors += 1
                logger.warning("partial rollouts: LLMEngine.set_weight_version(%s) failed (%d so far); "
                               "segments keep our own version counter", self.weight_version,
                               self.weight_version_errors, exc_info=self.weight_version_errors == 1)

    def bump_weight_version(self) -> int:
        self.set_weight_version(self.weight_version + 1)
        return self.weight_version

    @property
    def carried(self) -> list[PartialSample]:
        """Samples cut at the end of the last step, to be resumed by the next."""
        return list(self._carried)

    @property
    def num_pending(self) -> int:
        """Samples not yet reported: carried over, queued, or finished in a step that raised."""
        return len(self._carried) + len(self._new) + len(self._unreported)

    # ------------------------------------------------------------------ one rollout step
    def _params_for(self, s: PartialSample) -> Any:
        sp = copy.copy(self.params)
        # every step's output is needed to know the tokens of a request cut mid-flight
        # (``LLM.generate`` sets FINAL_ONLY on the params it is given, which may be these)
        sp.output_kind = RequestOutputKind.CUMULATIVE
        done = len(s.tokens)
        sp.max_tokens = self.params.max_tokens - done
        if getattr(sp, "min_tokens", 0):
            sp.min_tokens = max(0, self.params.min_tokens - done)
        if self.das:
            extra = dict(sp.extra_args or {})
            meta: dict[str, Any] = {"problem_id": s.problem_id}
            if s.length_class is not None:
                meta["length_class"] = s.length_class
            if done:
                meta["generated_offset"] = done
            extra["das"] = meta
            sp.extra_args = extra
        return sp

    def run_step(self, budget: StepBudget | None = None, max_new: int | None = None) -> StepResult:
        """Run one rollout step: resubmit carried samples, submit up to ``max_new`` queued new
        samples (all if None), step the engine until ``budget`` is reached or nothing is left
        running, then cut (abort) what is still running and carry it over."""
        budget = budget or StepBudget()
        version = self.weight_version
        resumed = list(self._carried)
        self._carried = []
        take = len(self._new) if max_new is None else min(max_new, len(self._new))
        fresh = [self._new.popleft() for _ in range(take)]
        order = resumed + fresh if self.resume_first else fresh + resumed

        live: dict[str, PartialSample] = {}
        seen: dict[str, int] = {}  # request id -> output tokens of this segment seen so far
        outputs_cache: dict[str, Any] = {}
        finished: list[FinishedSample] = self._unreported
        self._unreported = []
        submitted = 0
        try:
            for s in order:
                if len(s.tokens) >= self.params.max_tokens:  # defensive: nothing left to generate
                    finished.append(self._finish(s, "length"))
                else:
                    rid = f"das-partial-{s.problem_id}-{s.sample_index}-{next(self._ids)}"
                    self.engine.add_request(rid, {"prompt_token_ids": s.prompt_token_ids + s.tokens}, self._params_for(s))
                    s.submissions += 1
                    live[rid] = s
                    seen[rid] = 0
                submitted += 1
            tokens_step, engine_steps, reached = self._step_loop(budget, version, live, seen, finished, outputs_cache)
        except BaseException:
            # nothing is lost: in-flight samples keep the tokens seen so far and are carried over,
            # unsubmitted ones go back to their queues, finished ones are reported by the next step
            self._unreported = finished
            resumed_keys = {s.key for s in resumed}
            rest = order[submitted:]
            self._carried.extend(s for s in rest if s.key in resumed_keys)
            self._new.extendleft(reversed([s for s in rest if s.key not in resumed_keys]))
            self.step_index += 1
            self._cut(live, outputs_cache, version)
            raise
        self._cut(live, outputs_cache, version)
        result = StepResult(
            self.step_index, version, finished, len(self._carried), tokens_step, engine_steps, len(resumed), reached
        )
        self.step_index += 1
        return result

    def _cut(self, live: dict[str, PartialSample], outputs_cache: dict[str, Any], version: int) -> None:
        """Abort what is still running; keep its tokens so far in the carry-over queue."""
        if not live:
            return
        try:
            self.engine.abort_request(list(live))
        finally:
            for rid, s in live.items():
                comp = outputs_cache.get(rid)
                self._commit(s, list(comp.token_ids) if comp is not None else [], comp, version)
                self._carried.append(s)
            live.clear()

    def _step_loop(
        self,
        budget: StepBudget,
        version: int,
        live: dict[str, PartialSample],
        seen: dict[str, int],
        finished: list[FinishedSample],
        outputs_cache: dict[str, Any],
    ) -> tuple[int, int, bool]:
        tokens_step = 0
        engine_steps = 0
        reached = False
        while live and self.engine.has_unfinished_requests():
            outs = self.engine.step()
            engine_steps += 1
            for out in outs:
                rid = out.request_id
                s = live.get(rid)
                if s is None:
                    continue
                comp = out.outputs[0]
                toks = list(comp.token_ids)
                tokens_step += len(toks) - seen[rid]
                seen[rid] = len(toks)
                outputs_cache[rid] = comp
                if out.finished:
                    del live[rid]
                    self._commit(s, toks, comp, version)
                    finished.append(self._finish(s, comp.finish_reason))
            if budget.reached(tokens_step, len(finished)):
                reached = bool(live)
                break
        return tokens_step, engine_steps, reached

    def _commit(self, s: PartialSample, toks: list[int], comp: Any, version: int) -> None:
        """Append a segment's tokens (and chosen-token logprobs, when requested) to ``s``."""
        if not toks:
            return
        s.tokens.extend(toks)
        s.segments.append((version, len(toks)))  # one segment per engine request (not merged)
        if comp is not None and comp.logprobs:
            chosen = [float(lp[t].logprob) for t, lp in zip(toks, comp.logprobs)]
            s.logprobs = (s.logprobs or []) + chosen

    def _finish(self, s: PartialSample, reason: str | None) -> FinishedSample:
        if s.key in self._finished_keys:
            raise RuntimeError(f"sample {s.key} finished twice")
        self._finished_keys.add(s.key)
        f = FinishedSample(
            s.problem_id,
            s.sample_index,
            s.prompt_token_ids,
            list(s.tokens),
            s.length_class,
            _segments_with_bounds(s.segments),
            reason,
            self.step_index,
            s.logprobs,
        )
        self._history.append(Rollout(s.problem_id, self.step_index, np.asarray(f.response_token_ids, np.int32)))
        return f

    # ------------------------------------------------------------------ DAS history
    def load_history(self) -> dict[str, int]:
        """Ship the finished responses of the last ``history_window`` steps to the engine's DAS
        drafter (``das_load_snapshot``); partial samples are never included."""
        nxt = self.step_index
        self._history = [r for r in self._history if r.step > nxt - 1 - self.history_window]
        snap = HistorySnapshot.from_rollouts(self._history, next_step=nxt)
        return self.llm.collective_rpc("das_load_snapshot", args=(snap.to_npz_bytes(),))[0]
