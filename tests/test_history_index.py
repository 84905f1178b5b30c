"""HistoryIndex: window of W appearances, token cap with LRU eviction, live siblings, stats.

All trees are the real native suffix trees; "drafted" means a real ``speculate`` call on the
problem (or global) tree returns the recorded continuation.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pytest

from openrlhf_das.drafter import HistoryIndex
from openrlhf_das.drafter.history_index import BYTES_PER_TOKEN
from openrlhf_das.drafter.suffix_tree import SpeculateArgs, as_tokens, speculate

DEPTH = 16


def seq(start: int, n: int) -> list[int]:
    """``n`` consecutive token ids from ``start`` (all distinct, so continuations are unique)."""
    return list(range(start, start + n))


def draft(tree: Any, context: Sequence[int], budget: int = 4) -> list[int]:
    """Tokens the tree drafts after ``context`` (empty list when the tree is None)."""
    if tree is None:
        return []
    args = SpeculateArgs(budget, max_spec_factor=16.0, max_spec_offset=0.0, min_token_prob=0.1)
    return list(speculate(tree, as_tokens(context), args, "t").token_ids)


def drafted(index: HistoryIndex, pid: str, s: Sequence[int]) -> bool:
    """Whether the problem tree of ``pid`` continues the first 4 tokens of ``s`` with the next 4."""
    return draft(index.problem_tree(pid), s[:4]) == list(s[4:8])


def test_window_counts_appearances_and_drops_oldest_step() -> None:
    index = HistoryIndex(max_depth=DEPTH, window=2, max_tokens=10**6)
    a0, a1, a2 = seq(100, 10), seq(200, 10), seq(300, 10)
    b0, b9 = seq(400, 10), seq(500, 10)
    index.add_rollout("a", 0, a0)
    index.add_rollout("a", 1, a1)
    # "b" appears at steps 0 and 9: far apart in time but only two appearances -> both kept
    index.add_rollout("b", 0, b0)
    index.add_rollout("b", 9, b9)
    assert index.steps_of("a") == [0, 1]
    assert index.steps_of("b") == [0, 9]
    assert drafted(index, "a", a0) and drafted(index, "b", b0)

    index.add_rollout("a", 2, a2)  # third appearance of "a": step 0 leaves the window
    assert index.steps_of("a") == [1, 2]
    assert not drafted(index, "a", a0)
    assert draft(index.global_tree, a0[:4]) == []  # removed from the global tree as well
    assert drafted(index, "a", a1) and drafted(index, "a", a2)
    assert index.response_lengths("a") == [10, 10]
    assert index.tokens == 40  # a1, a2, b0, b9
    assert drafted(index, "b", b0)  # other problems untouched


def test_step_older_than_window_is_ignored() -> None:
    index = HistoryIndex(max_depth=DEPTH, window=2, max_tokens=10**6)
    index.add_rollout("a", 5, seq(100, 10))
    index.add_rollout("a", 7, seq(200, 10))
    old = seq(300, 10)
    assert index.add_rollout("a", 3, old) == -1
    assert index.steps_of("a") == [5, 7]
    assert index.tokens == 20
    assert not drafted(index, "a", old)
    # a step between the held ones is newer than the oldest: it enters, the oldest leaves
    mid = seq(400, 10)
    assert index.add_rollout("a", 6, mid) >= 0
    assert index.steps_of("a") == [6, 7]
    assert drafted(index, "a", mid)


def test_token_cap_evicts_least_recently_used_problem() -> None:
    index = HistoryIndex(max_depth=DEPTH, window=5, max_tokens=100)
    a, b, c, d = seq(100, 40), seq(200, 40), seq(300, 40), seq(400, 40)
    index.add_rollout("a", 0, a)
    index.add_rollout("b", 0, b)
    index.add_rollout("c", 0, c)  # 120 > 100: "a" is the least recently used
    assert "a" not in index and index.problem_tree("a") is None
    assert index.tokens == 80
    assert index.stats().evicted_problems == 1
    assert draft(index.global_tree, a[:4]) == []

    index.problem_tree("b")  # a lookup marks "b" as recently used -> "c" is now LRU
    index.add_rollout("d", 0, d)
    assert "b" in index and "d" in index and "c" not in index
    assert index.stats().evicted_problems == 2
    assert index.tokens == 80 <= index.max_tokens
    assert drafted(index, "b", b) and drafted(index, "d", d)


def test_token_cap_drops_oldest_steps_of_a_lone_problem() -> None:
    index = HistoryIndex(max_depth=DEPTH, window=5, max_tokens=100)
    s0, s1, s2 = seq(100, 40), seq(200, 40), seq(300, 40)
    for step, s in enumerate((s0, s1, s2)):
        index.add_rollout("a", step, s)
    assert index.steps_of("a") == [1, 2]
    assert index.tokens == 80
    assert index.stats().evicted_problems == 0
    assert not drafted(index, "a", s0) and drafted(index, "a", s2)


@pytest.mark.parametrize("keep", [True, False])
def test_live_sibling_insertion(keep: bool) -> None:
    index = HistoryIndex(max_depth=DEPTH, window=5, max_tokens=10**6)
    index.add_rollout("a", 0, seq(100, 10))
    live = seq(500, 12)
    index.extend_live("a", "req-1", 1, np.array(live[:5], np.int32))
    index.extend_live("a", "req-1", 1, np.array(live[5:], np.int32))  # chunks append
    assert index.stats().live_sequences == 1
    assert index.tokens == 22
    assert drafted(index, "a", live)
    assert draft(index.global_tree, live[:4]) == []  # live text stays out of the global tree
    assert index.response_lengths("a") == [10]  # live responses are not finished responses
    assert index.steps_of("a") == [0, 1]

    index.finish_live("a", "req-1", keep=keep)
    stats = index.stats()
    assert stats.live_sequences == 0
    if keep:
        assert stats.rollouts == 2 and index.tokens == 22
        assert drafted(index, "a", live)
        assert sorted(index.response_lengths("a")) == [10, 12]
    else:
        assert stats.rollouts == 1 and index.tokens == 10
        assert not drafted(index, "a", live)
        assert index.response_lengths("a") == [10]


def test_remove_sequence_from_all_trees() -> None:
    index = HistoryIndex(max_depth=DEPTH, window=5, max_tokens=10**6)
    x, y = seq(100, 10), seq(200, 10)
    sx = index.add_rollout("a", 0, x)
    index.add_rollout("a", 0, y)
    assert draft(index.global_tree, x[:4]) == x[4:8]
    index.remove(sx)
    assert not drafted(index, "a", x) and drafted(index, "a", y)
    assert draft(index.global_tree, x[:4]) == []
    assert index.tokens == 10 and index.stats().rollouts == 1
    index.remove(sx)  # unknown id: no-op
    index.remove(12345)
    assert index.tokens == 10


@pytest.mark.parametrize("global_tree", [True, False])
def test_stats_numbers(global_tree: bool) -> None:
    index = HistoryIndex(max_depth=DEPTH, window=5, max_tokens=10**6, global_tree=global_tree)
    index.add_rollout("a", 0, seq(100, 7))
    index.add_rollout("a", 1, seq(200, 5))
    index.add_rollout("b", 0, seq(300, 3))
    index.extend_live("b", "r", 1, np.array(seq(400, 4), np.int32))
    stats = index.stats()
    assert (stats.problems, stats.rollouts, stats.tokens, stats.live_sequences, stats.evicted_problems) == (
        2,
        3,
        19,
        1,
        0,
    )
    trees = 2 if global_tree else 1
    assert stats.estimated_bytes == 19 * BYTES_PER_TOKEN * trees
    assert stats.as_dict()["tokens"] == 19
    assert (index.global_tree is not None) is global_tree
    index.evict_problem("a")
    assert index.stats().evicted_problems == 1 and index.tokens == 7
