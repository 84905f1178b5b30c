"""The drafter's choice over its three sources vs a brute-force reference (hypothesis): the best
score of the three, or with ``global_fallback`` the best of the request and problem trees and the
global tree only when those give no draft."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openrlhf_das.drafter import Drafter, DraftRequest, HistoryIndex
from reference_suffix import reference_options

DEPTH = 8
seq = st.lists(st.integers(0, 3), min_size=1, max_size=14)


def _bounds(options):
    """(max over starts of the worst tie-branch score, max over starts of the best)."""
    lo = max((min(c.score for c in cs) for cs in options.values()), default=0.0)
    hi = max((max(c.score for c in cs) for cs in options.values()), default=0.0)
    return lo, hi


def _legal(options, draft) -> bool:
    cs = options.get(draft.match_len, [])
    return any(
        c.tokens == draft.token_ids and np.allclose(c.probs, draft.probs, atol=1e-5) for c in cs
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(st.tuples(st.sampled_from(["a", "b"]), seq), min_size=0, max_size=5),
    context=seq,
    prompt_len=st.integers(0, 3),
    budget=st.integers(1, 6),
    factor=st.sampled_from([0.5, 1.0, 2.0]),
    min_prob=st.sampled_from([0.1, 0.3, 0.6]),
    pattern_tokens=st.sampled_from([None, 2, 4]),
    fallback=st.booleans(),
)
def test_propose_matches_brute_force(history, context, prompt_len, budget, factor, min_prob, pattern_tokens, fallback):
    index = HistoryIndex(max_depth=DEPTH, window=10, max_tokens=10**6, global_tree=True)
    for pid, toks in history:
        index.add_rollout(pid, 0, toks)
    drafter = Drafter(index, max_depth=DEPTH, pattern_tokens=pattern_tokens, min_token_prob=min_prob,
                      use_siblings=False, global_fallback=fallback)
    prompt_len = min(prompt_len, len(context))
    req = DraftRequest("r", np.array(context, np.int32), prompt_len, "a", budget, factor)
    [draft] = drafter.propose([req])

    pattern = context[-(pattern_tokens or DEPTH):]
    sources = {
        "request": [context],
        "problem": [t for p, t in history if p == "a"],
        "global": [t for _, t in history],
    }
    opts = {
        name: reference_options(seqs, pattern, budget, factor, 0.0, min_prob, DEPTH) if seqs else {}
        for name, seqs in sources.items()
    }
    if fallback and max(_bounds(opts[n])[1] for n in ("request", "problem")) > 0.0:
        del opts["global"]  # the own and problem trees have a draft: the global tree is not consulted
    lo = max(_bounds(o)[0] for o in opts.values())
    hi = max(_bounds(o)[1] for o in opts.values())
    if hi == 0.0:
        assert len(draft) == 0
        return
    assert len(draft) > 0
    assert draft.source in opts and _legal(opts[draft.source], draft)
    assert lo - 1e-5 <= draft.score <= hi + 1e-5
    assert len(draft) <= min(budget, int(draft.match_len * factor + 1e-6))
    assert all(p >= min_prob - 1e-6 for p in draft.probs)
