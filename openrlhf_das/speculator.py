"""``DASSpeculator``: one decode step of DAS, independent of any inference engine.

Per step: record the acceptance of the previous drafts → batch gate → per-request budget from
the request's length class (with online promotion) → optional per-step quota → drafts from the
:class:`~openrlhf_das.drafter.Drafter` → optional cost-model filter → bookkeeping.

The vLLM proposer (``openrlhf_das.engines.vllm``) and the replay benchmark both drive this
class, so what is measured offline is what runs in the engine. Requests that get no budget
(short class, gated step) cost no tree work: their trees catch up when they next get a budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .config import DASConfig, LengthClass
from .drafter import Draft, Drafter, DraftRequest, HistoryIndex, HistorySnapshot
from .drafter.suffix_tree import EMPTY_DRAFT
from .policy import AcceptanceTracker, CostModelGate, CostTable, MaxRunningGate, apply_quota, assign_length_classes, promote


@dataclass
class StepRequest:
    """What the speculator needs to know of a running request at one decode step.

    ``tokens``: prompt + output so far (int32); ``num_sampled``: tokens the previous verify step
    emitted for it (accepted drafts + 1; 0 when unknown/first step); ``length_class``: class
    assigned by the trainer side (None = use the engine's own classification).
    """

    request_id: str
    tokens: np.ndarray
    num_prompt_tokens: int
    problem_id: str | None = None
    length_class: LengthClass | None = None
    num_sampled: int = 0


class DASSpeculator:
    """Drafter + length-aware policy + acceptance accounting."""

    def __init__(self, config: DASConfig, history: HistoryIndex | None = None, live_step: int = 0) -> None:
        self.config = config
        if history is None:
            history = self.empty_history()
        self.drafter = Drafter(
            history,
            max_depth=config.max_depth,
            min_token_prob=config.min_token_prob,
            max_spec_offset=config.max_spec_offset,
            use_request_tree=config.use_request_tree,
            use_problem_tree=config.use_problem_tree,
            use_global_tree=config.use_global_tree,
            use_siblings=config.use_siblings,
            live_step=live_step,
        )
        self.tracker = AcceptanceTracker(config.length_buckets)
        self.classes: dict[str, LengthClass] = {}
        self.gated_steps = 0
        self.steps = 0
        self.reconfigure(config)

    def reconfigure(self, config: DASConfig) -> None:
        """Switch policy knobs between steps (budgets, gate, quota, draft thresholds). History,
        request trees and statistics are kept; tree-shape knobs (``max_depth``, ``window``,
        sources of the index) take effect with the next snapshot."""
        self.config = config
        d = self.drafter
        d.min_token_prob, d.max_spec_offset = config.min_token_prob, config.max_spec_offset
        d.use_request_tree, d.use_problem_tree = config.use_request_tree, config.use_problem_tree
        d.use_global_tree, d.use_siblings = config.use_global_tree, config.use_siblings
        self._max_running = MaxRunningGate(config.gate.max_running) if config.gate.mode == "max_running" else None
        self._cost_gate = (
            CostModelGate(CostTable.load(config.gate.cost_table))
            if config.gate.mode == "cost_model" and config.gate.cost_table
            else None
        )

    # ------------------------------------------------------------------ history
    def empty_history(self) -> HistoryIndex:
        c = self.config
        return HistoryIndex(c.max_depth, c.window, c.history_max_tokens, c.use_global_tree)

    def load_snapshot(self, snapshot: HistorySnapshot, classes: Mapping[str, LengthClass] | None = None) -> None:
        """Build the index of ``snapshot`` and swap it in; classes default to a ranking of the
        snapshot's problems by their past lengths."""
        c = self.config
        index = snapshot.build_index(c.max_depth, c.window, c.history_max_tokens, c.use_global_tree)
        self.swap(index, snapshot.next_step, classes)

    def swap(self, index: HistoryIndex, live_step: int, classes: Mapping[str, LengthClass] | None = None) -> None:
        if classes is None:
            pids = index.problem_ids()
            c = self.config
            classes = assign_length_classes(
                pids, {p: index.response_lengths(p) for p in pids}, c.long_ratio, c.medium_ratio, c.unknown_class
            )
        self.drafter.swap_history(index, live_step)
        self.classes = dict(classes)

    # ------------------------------------------------------------------ per step
    def class_of(self, req: StepRequest) -> LengthClass:
        base = req.length_class or self.classes.get(req.problem_id or "", self.config.unknown_class)
        generated = int(req.tokens.size) - req.num_prompt_tokens
        return promote(base, generated, self.config.promote_medium_tokens, self.config.promote_long_tokens)

    def gate_allows(self, num_running: int) -> bool:
        """False when the batch gate switches drafting off for a step of ``num_running``."""
        return self._max_running is None or self._max_running.allows(num_running)

    def observe_gated(self, request_ids: Sequence[str], sampled: Sequence[Sequence[int]]) -> None:
        """A gated step: record verify results of pending drafts only (O(1) once none are left)."""
        self.steps += 1
        self.gated_steps += 1
        if self.tracker.has_pending:
            for rid, s in zip(request_ids, sampled):
                self.tracker.on_verified(rid, len(s))

    def step(self, batch: Sequence[StepRequest], num_running: int | None = None) -> list[list[int]]:
        """Drafts (token-id lists, possibly empty) aligned with ``batch``."""
        self.steps += 1
        tracker = self.tracker
        for req in batch:
            tracker.on_verified(req.request_id, req.num_sampled)
        running = len(batch) if num_running is None else num_running
        if not self.gate_allows(running):
            self.gated_steps += 1
            return [[] for _ in batch]

        c = self.config
        classes = [self.class_of(r) for r in batch]
        if c.length_policy:
            budgets = [c.budgets.of(k) for k in classes]
        else:
            budgets = [c.flat_budget] * len(batch)
        tokens = [b.tokens for b in budgets]
        if c.step_quota_tokens is not None:
            tokens = apply_quota(tokens, classes, c.step_quota_tokens)

        live = [i for i, t in enumerate(tokens) if t > 0]
        drafts: list[Draft] = [EMPTY_DRAFT] * len(batch)
        if live:
            reqs = [
                DraftRequest(
                    batch[i].request_id,
                    batch[i].tokens,
                    batch[i].num_prompt_tokens,
                    batch[i].problem_id,
                    tokens[i],
                    budgets[i].factor,
                )
                for i in live
            ]
            for i, d in zip(live, self.drafter.propose(reqs)):
                drafts[i] = d
            if self._cost_gate is not None:
                keep = self._cost_gate.keep(drafts, running)
                drafts = [d if k else EMPTY_DRAFT for d, k in zip(drafts, keep)]
            for i in live:
                r = batch[i]
                tracker.on_proposed(r.request_id, len(drafts[i]), classes[i], int(r.tokens.size) - r.num_prompt_tokens)
        return [list(d.token_ids) for d in drafts]

    def finish(self, request_id: str, keep_as_sibling: bool = True) -> None:
        """The request left the engine (finished/aborted); free its per-request state."""
        self.drafter.finish(request_id, keep_as_sibling)
        self.tracker.forget(request_id)

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        return {
            "acceptance": self.tracker.snapshot(),
            "history": self.drafter.history.stats().as_dict(),
            "faults": self.drafter.faults,
            "rebuilds": self.drafter.rebuilds,
            "steps": self.steps,
            "gated_steps": self.gated_steps,
            "active_requests": len(self.drafter.active_requests),
        }
