"""arctic-inference's ``SuffixDecodingCache`` behind the replay's speculator interface.

The reference the union drafter (``DASConfig.shared_own_text``) is measured against: the cache's
global tree holds the history responses the replay ships and, while a request runs, its own
output (``add_active_response``); its local tree holds the request's prompt and output; a draft
is the better-scoring of the two (arctic's own rule). ``scope``:

* ``global``  – one cache for every problem (vLLM's ``suffix`` method);
* ``problem`` – one cache per problem (its history and its running requests only);
* ``both``    – a request runs in both and the better-scoring draft wins.

Every request drafts at every step with the flat budget ``tokens`` / ``factor`` and arctic's
matching (the last ``max_depth`` tokens as context); no gate. Duck-types what
``replay.simulate_step`` and ``replay.replay`` use of :class:`~openrlhf_das.speculator.DASSpeculator`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from arctic_inference.suffix_decoding import SuffixDecodingCache

from openrlhf_das.config import DASConfig
from openrlhf_das.drafter import HistorySnapshot
from openrlhf_das.speculator import StepRequest

SCOPES = ("global", "problem", "both")


class ArcticSpeculator:
    def __init__(self, scope: str, tokens: int, factor: float, config: DASConfig) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.scope = scope
        self.tokens, self.factor = tokens, factor
        self.config = config.with_overrides({"length_policy": False, "flat_budget": {"tokens": tokens, "factor": factor},
                                             "gate.mode": "off"})
        self.depth = config.max_depth
        self._global: SuffixDecodingCache | None = None
        self._problems: dict[str, SuffixDecodingCache] = {}
        self._fed: dict[str, int] = {}  # request id -> response tokens given to the caches
        self._caches_of: dict[str, list[SuffixDecodingCache]] = {}
        self.load_snapshot(HistorySnapshot.from_rollouts([], 0))

    # --------------------------------------------------------------- history
    def load_snapshot(self, snapshot: HistorySnapshot, classes=None) -> None:
        """Fresh caches holding the snapshot's responses (as finished, cached requests)."""
        self._global = SuffixDecodingCache(self.depth) if self.scope in ("global", "both") else None
        self._problems = {}
        for i, r in enumerate(snapshot.rollouts()):
            hid = f"history/{i}"
            for cache in self._caches(r.problem_id):
                cache.start_request(hid, np.zeros(0, np.int32))
                cache.add_active_response(hid, np.ascontiguousarray(r.tokens, np.int32))
                cache.stop_request(hid)
        self._fed.clear()
        self._caches_of.clear()

    def _caches(self, problem_id: str) -> list[SuffixDecodingCache]:
        out = [self._global] if self._global is not None else []
        if self.scope in ("problem", "both"):
            if problem_id not in self._problems:
                self._problems[problem_id] = SuffixDecodingCache(self.depth)
            out.append(self._problems[problem_id])
        return out

    # --------------------------------------------------------------- per step
    def gate_allows(self, num_running: int) -> bool:
        return True

    def observe_gated(self, request_ids, sampled) -> None:  # pragma: no cover - never gated
        pass

    def step(self, batch: Sequence[StepRequest], num_running: int | None = None, padded_k: int = 0,
             live_siblings: bool = True) -> list[list[int]]:
        out: list[list[int]] = []
        for req in batch:
            tokens = np.ascontiguousarray(req.tokens, np.int32)
            caches = self._caches_of.get(req.request_id)
            if caches is None:
                caches = self._caches_of[req.request_id] = self._caches(req.problem_id or "")
                for cache in caches:
                    cache.start_request(req.request_id, tokens[: req.num_prompt_tokens])
                self._fed[req.request_id] = req.num_prompt_tokens
            fed = self._fed[req.request_id]
            if tokens.size > fed:
                for cache in caches:
                    cache.add_active_response(req.request_id, tokens[fed:])
                self._fed[req.request_id] = tokens.size
            context = tokens[-self.depth:]
            best = None
            for cache in caches:
                d = cache.speculate(req.request_id, context, self.tokens, self.factor, self.config.max_spec_offset,
                                    self.config.min_token_prob)
                if best is None or d.score > best.score:
                    best = d
            out.append(list(best.token_ids) if best is not None else [])
        return out

    def finish(self, request_id: str, keep_as_sibling: bool = True) -> None:
        for cache in self._caches_of.pop(request_id, []):
            cache.stop_request(request_id)
        self._fed.pop(request_id, None)

    def stats(self) -> dict:
        return {"scope": self.scope, "problems": len(self._problems)}
