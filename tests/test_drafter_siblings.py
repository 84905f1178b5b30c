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
