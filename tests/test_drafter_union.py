"""The union drafter (``shared_own_text``): a running request's text in its problem tree and the
global tree, so one match counts history, siblings and own text (arctic's scheme); measured
against arctic-inference's own ``SuffixDecodingCache`` on the committed real trace."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from arctic_baseline import SCOPES, ArcticSpeculator  # noqa: E402
from replay import CostModel, read_trace, replay  # noqa: E402

from openrlhf_das.config import DASConfig  # noqa: E402
from openrlhf_das.drafter import Drafter, DraftRequest, HistoryIndex  # noqa: E402

TRACES = sorted((ROOT / "benchmarks" / "traces").glob("*.jsonl*"))


def test_own_text_goes_into_problem_and_global_trees_and_leaves_with_the_request() -> None:
    index = HistoryIndex(max_depth=8, window=5, max_tokens=10**6, global_tree=True)
    index.add_rollout("p", 0, [9, 9, 9])
    drafter = Drafter(index, max_depth=8, use_request_tree=False, shared_own_text=True, global_fallback=False)
    prompt, out = [1, 2], [5, 6, 7, 5, 6]
    req = DraftRequest("r", np.array(prompt + out, np.int32), 2, "p", budget=4, factor=2.0)
    [draft] = drafter.propose([req])
    # the request's own "5 6 -> 7" is found through the shared trees (no request tree)
    assert draft.token_ids[:1] == (7,) and draft.source in ("problem", "global")
    other = Drafter(index, max_depth=8, use_request_tree=False, use_problem_tree=False, global_fallback=False)
    [seen] = other.propose([DraftRequest("s", np.array([3, 5, 6], np.int32), 1, "q", 4, 2.0)])
    assert seen.token_ids[:1] == (7,) and seen.source == "global"  # another problem sees it globally
    drafter.finish("r", keep_as_sibling=False)
    [gone] = other.propose([DraftRequest("s", np.array([3, 5, 6, 5, 6], np.int32), 1, "q", 4, 2.0)])
    assert 7 not in gone.token_ids  # removed from the global tree with the request
    assert index.stats().live_sequences == 0


def test_siblings_mode_still_holds_back_the_newest_tokens() -> None:
    index = HistoryIndex(max_depth=4, window=5, max_tokens=10**6, global_tree=True)
    drafter = Drafter(index, max_depth=4, use_request_tree=False, use_siblings=True)
    drafter.propose([DraftRequest("r", np.arange(10, dtype=np.int32), 0, "p", 2, 1.0)])
    assert index.stats().tokens == 6  # 10 generated, the newest max_depth = 4 held back


def _tokens_per_verify_step(res, first_epoch: int = 1) -> float:
    steps = res.steps[first_epoch:]
    tokens, accepted = sum(s["tokens"] for s in steps), sum(s["accepted"] for s in steps)
    return tokens / (tokens - accepted)


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_union_drafter_beats_arctic_suffix_cache(trace: Path) -> None:
    """Every request drafts at every step with budget 16 x 1 (no gate): tokens per verify step of
    epochs >= 1 (history from the earlier epochs), on the first 8 problems of the trace."""
    head, steps = read_trace(trace)
    assert head.get("synthetic") is False
    keep = sorted({s.problem_id for s in steps[min(steps)]})[:8]
    steps = {k: [s for s in v if s.problem_id in keep] for k, v in steps.items()}
    base = DASConfig().with_overrides({"shared_own_text": True, "pattern_tokens": None})  # arctic's context
    cost = CostModel()
    ours = _tokens_per_verify_step(replay(steps, ["flat+all"], base, cost, flat_tokens=16, flat_factor=1.0)["flat+all"])
    extra = {s: ArcticSpeculator(s, 16, 1.0, base) for s in SCOPES}
    theirs = {s: _tokens_per_verify_step(r) for s, r in replay(steps, [], base, cost, extra=extra).items()}
    assert all(v > 1.5 for v in theirs.values())  # arctic drafts for real on this trace
    assert ours >= max(theirs.values()), (ours, theirs)
