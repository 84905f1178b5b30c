"""``Drafter``: picks, per request and decode step, the best draft among its sources.

Sources (each optional, see ``DASConfig``):

* ``request`` – a per-request tree over the request's own prompt + output so far. It is kept in
  sync incrementally while the request is drafted for (a request with no budget leaves it
  behind; it catches up at the next budget) and rebuilt from the full token list when a request
  re-enters after a preemption or a pause (or whenever its tokens are not an extension of what
  was seen).
* ``problem`` – the problem's tree in the :class:`HistoryIndex` (its last W steps of
  responses, plus live GRPO siblings of the current step).
* ``global`` – the index's global tree over all problems' recent responses; with
  ``global_fallback`` only consulted when the other sources give no draft.

With ``shared_own_text`` a running request's output goes into its problem tree *and* the global
tree as it is generated, with no hold-back (arctic's ``SuffixDecodingCache`` scheme): one match
then counts the problem's history, its siblings and the request's own text together, instead of
the best of separate matches. Without it, sibling text (``use_siblings``) enters only the problem
tree, ``max_depth`` tokens behind. The per-request tree stays useful beside shared own text (it
matches the prompt, and the own text undiluted by history): on the real H100 trace, epoch 1 with
budget 8 x 1, tokens per verify step were 2.257 with it and 2.237 without.

The draft with the highest score wins (ties: request < problem < global order of preference).
A draft is capped by ``min(budget, floor(match_len * factor + offset))`` and stops when the
running probability drops below ``min_token_prob`` (both inside the native tree).

Fault isolation: an exception while drafting one request yields no draft for it (counted in
``faults``); the other requests are unaffected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .history_index import HistoryIndex
from .suffix_tree import EMPTY_DRAFT, Draft, SpeculateArgs, as_tokens, new_tree, speculate

logger = logging.getLogger(__name__)


@dataclass
class DraftRequest:
    """One request at one decode step.

    ``tokens`` is the full context (prompt + output so far, int32); ``num_prompt_tokens``
    separates the two; ``budget`` is the most draft tokens allowed (0 = skip); ``factor`` the
    match-length factor of its length class.
    """

    request_id: str
    tokens: np.ndarray
    num_prompt_tokens: int
    problem_id: str | None = None
    budget: int = 0
    factor: float = 1.0


@dataclass
class _RequestState:
    tree: Any  # own tree; None until the request is first drafted for (or without request trees)
    indexed: int  # tokens of the request seen (the text its live sibling text is cut from)
    last_token: int  # token at position indexed-1 (cheap extension check)
    problem_id: str | None
    live_indexed: int  # response tokens appended to the problem tree as a live sibling
    live_tail: np.ndarray | None = None  # response tokens held back from the problem tree (copy)
    own_indexed: int = 0  # tokens indexed in ``tree`` (<= indexed: it catches up when drafted for)


class Drafter:
    """Multi-source suffix-tree drafter (core; no vLLM/Ray imports)."""

    def __init__(
        self,
        history: HistoryIndex,
        *,
        max_depth: int = 64,
        pattern_tokens: int | None = None,
        min_token_prob: float = 0.1,
        max_spec_offset: float = 0.0,
        use_request_tree: bool = True,
        use_problem_tree: bool = True,
        use_global_tree: bool = True,
        global_fallback: bool = True,
        use_siblings: bool = True,
        shared_own_text: bool = False,
        live_step: int = 0,
    ) -> None:
        self.history = history
        self.max_depth = max_depth
        self.pattern_tokens = pattern_tokens
        """Context suffix matched per ``speculate`` (tokens); None = ``max_depth``."""
        self.min_token_prob = min_token_prob
        self.max_spec_offset = max_spec_offset
        self.use_request_tree = use_request_tree
        self.use_problem_tree = use_problem_tree
        self.use_global_tree = use_global_tree
        self.global_fallback = global_fallback
        self.use_siblings = use_siblings
        self.shared_own_text = shared_own_text
        self.live_step = live_step
        self.faults = 0
        self.rebuilds = 0
        self._requests: dict[str, _RequestState] = {}

    # ------------------------------------------------------------------ history swap
    def swap_history(self, history: HistoryIndex, live_step: int) -> None:
        """Atomically replace the history (between steps). Live sibling text of requests still
        running is re-inserted lazily at their next update."""
        self.history = history
        self.live_step = live_step
        for st in self._requests.values():
            st.live_indexed = 0

    # ------------------------------------------------------------------ request lifecycle
    @property
    def active_requests(self) -> list[str]:
        return list(self._requests)

    def update(self, request_id: str, tokens: np.ndarray, num_prompt_tokens: int, problem_id: str | None,
               live: bool = True, own: bool = True) -> None:
        """Bring the request's own tree (and, with ``live``, its live sibling text) up to
        ``tokens``. ``live=False`` leaves the sibling text to :meth:`update_live` (a caller that
        does it off its critical path, one step behind). ``own=False``: the own tree is left
        as it is (a request not drafted for this step; it catches up when next drafted for),
        only what was seen of the request advances, so its live sibling text still does."""
        arr = as_tokens(tokens)
        st = self._requests.get(request_id)
        n = arr.size
        if st is not None and (n < st.indexed or (st.indexed and int(arr[st.indexed - 1]) != st.last_token)):
            # not an extension of what we indexed (preempted and re-entered with other text)
            self._drop_live(request_id, st)
            st = None
            self.rebuilds += 1
        if st is None:
            st = _RequestState(None, 0, -1, problem_id, 0)
            self._requests[request_id] = st
        if own and self.use_request_tree and n > st.own_indexed:
            if st.tree is None:
                st.tree = new_tree(self.max_depth)
            st.tree.extend_ndarray(0, arr[st.own_indexed :])
            st.own_indexed = n
        if n > st.indexed:
            st.indexed = n
            st.last_token = int(arr[n - 1])
        if live:
            self._extend_live(request_id, st, arr, num_prompt_tokens, problem_id)

    def update_live(self, request_id: str, tokens: np.ndarray, num_prompt_tokens: int, problem_id: str | None) -> None:
        """Append the request's live sibling text as :meth:`update` would have, up to what it
        saw (``tokens`` beyond that are ignored; no-op for a request not seen yet)."""
        st = self._requests.get(request_id)
        if st is not None:
            self._extend_live(request_id, st, as_tokens(tokens)[: st.indexed], num_prompt_tokens, problem_id)

    def _extend_live(self, request_id: str, st: _RequestState, arr: np.ndarray, num_prompt_tokens: int,
                     problem_id: str | None) -> None:
        shared = self.shared_own_text
        if not (self.use_siblings or shared) or problem_id is None:
            return
        # Siblings only: the newest ``max_depth`` tokens are held back, otherwise the request's
        # own pattern would always match its own live text in the problem tree, which halves its
        # draft probabilities and makes every suffix length match (3x slower speculate). Shared
        # own text wants exactly that match, so nothing is held back.
        n = arr.size
        start = num_prompt_tokens + st.live_indexed
        end = n if shared else max(n - self.max_depth, start)
        if end > start:
            self.history.extend_live(problem_id, request_id, self.live_step, arr[start:end], to_global=shared)
            st.live_indexed = end - num_prompt_tokens
        st.live_tail = arr[end:n].copy()

    def finish(self, request_id: str, keep_as_sibling: bool = True) -> None:
        """The request left the batch for good (finished or aborted)."""
        st = self._requests.pop(request_id, None)
        if st is None:
            return
        if st.problem_id is not None:
            if keep_as_sibling and st.live_tail is not None and st.live_tail.size:
                self.history.extend_live(st.problem_id, request_id, self.live_step, st.live_tail,
                                         to_global=self.shared_own_text)
            self.history.finish_live(st.problem_id, request_id, keep=keep_as_sibling)

    def _drop_live(self, request_id: str, st: _RequestState) -> None:
        if st.problem_id is not None:
            self.history.finish_live(st.problem_id, request_id, keep=False)
        del self._requests[request_id]

    # ------------------------------------------------------------------ drafting
    def propose_one(self, req: DraftRequest) -> Draft:
        """Best draft for one request (no state update; call :meth:`update` first)."""
        if req.budget <= 0:
            return EMPTY_DRAFT
        st = self._requests.get(req.request_id)
        pattern = as_tokens(req.tokens[-(self.pattern_tokens or self.max_depth) :])
        args = SpeculateArgs(req.budget, req.factor, self.max_spec_offset, self.min_token_prob)
        best = EMPTY_DRAFT
        if self.use_request_tree and st is not None and st.tree is not None:
            best = speculate(st.tree, pattern, args, "request")
        if req.problem_id is not None and self.use_problem_tree:
            tree = self.history.problem_tree(req.problem_id)
            if tree is not None:
                d = speculate(tree, pattern, args, "problem")
                if d.score > best.score:
                    best = d
        if (
            self.use_global_tree
            and self.history.global_tree is not None
            and not (self.global_fallback and best.token_ids)
        ):
            d = speculate(self.history.global_tree, pattern, args, "global")
            if d.score > best.score:
                best = d
        return best

    def propose(self, batch: Sequence[DraftRequest], live: bool = True) -> list[Draft]:
        """Update and draft every request of ``batch``; results align with ``batch``.

        Requests with ``budget <= 0`` get no draft, no ``speculate`` call and no own-tree work
        (their own tree catches up from its last length when they next get a budget), but their
        new tokens still go into the problem (and, with ``shared_own_text``, global) tree as live
        sibling text, so their siblings draft from them. ``live``: as in :meth:`update`.
        """
        out: list[Draft] = []
        for req in batch:
            try:
                drafted = req.budget > 0
                self.update(req.request_id, req.tokens, req.num_prompt_tokens, req.problem_id, live, own=drafted)
                out.append(self.propose_one(req) if drafted else EMPTY_DRAFT)
            except Exception:  # noqa: BLE001 - fault isolation is the contract
                self.faults += 1
                logger.exception("DAS drafter fault for request %s; no draft this step", req.request_id)
                out.append(EMPTY_DRAFT)
        return out
