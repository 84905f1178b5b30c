"""Live sibling text must not dilute a request's own drafts (it lags max_depth tokens)."""

from __future__ import annotations

import numpy as np
import pytest

from openrlhf_das.drafter import Drafter, DraftRequest, HistoryIndex


@pytest.mark.parametrize("siblings", [True, False])
def test_own_live_text_does_not_dilute_problem_tree_drafts(siblings: bool) -> None:
    index = HistoryIndex(max_depth=16, window=5, max_tokens=10**6, global_tree=False)
    index.add_rollout("p", 0, np.arange(1, 41, dtype=np.int32))
    drafter = Drafter(index, max_depth=16, use_request_tree=False, use_siblings=siblings)
    tokens = np.concatenate([[100, 101], np.arange(1, 31)]).astype(np.int32)  # 30 generated
    [d] = drafter.propose([DraftRequest("r", tokens, 2, "p", budget=4, factor=2.0)])
    assert d.token_ids == (31, 32, 33, 34)
    assert d.probs == (1.0, 1.0, 1.0, 1.0)  # a self-match would have halved these
    # the part older than max_depth did enter the problem tree as a live sibling
    assert index.stats().live_sequences == (1 if siblings else 0)
    assert index.tokens == 40 + (30 - 16 if siblings else 0)


def _sibling_setup():
    index = HistoryIndex(max_depth=16, window=5, max_tokens=10**6, global_tree=False)
    return index, Drafter(index, max_depth=16)


def test_sibling_text_deferred_to_update_live_is_the_same_text() -> None:
    """``update(live=False)`` indexes the request's own tree only; ``update_live`` later appends
    exactly the sibling text a live update would have (up to what was indexed), so a sibling of
    the same problem drafts from it either way (the async engine path defers it one step)."""
    tokens = np.concatenate([[100, 101], np.arange(1, 41)]).astype(np.int32)  # 40 generated
    live_index, live = _sibling_setup()
    live.update("r", tokens[:32], 2, "p")
    index, deferred = _sibling_setup()
    deferred.update("r", tokens[:32], 2, "p", live=False)
    assert index.tokens == 0  # nothing shared yet
    deferred.update_live("r", tokens, 2, "p")  # longer than indexed: capped at the 32 indexed
    assert index.tokens == live_index.tokens == 30 - 16
    sibling = DraftRequest("s", np.asarray([100, 101, 1, 2, 3, 4], np.int32), 2, "p", budget=4, factor=2.0)
    assert deferred.propose([sibling])[0].token_ids == live.propose([sibling])[0].token_ids == (5, 6, 7, 8)
    deferred.update_live("unknown", tokens, 2, "p")  # a request never indexed: nothing to share
    assert index.stats().live_sequences == 1  # "r" only (the sibling's 4 tokens are held back)
