"""Brute-force reference of suffix-tree chain drafting (test helper, O(n^2) and small inputs only).

Semantics mirrored from arctic-inference 0.3.0's tree: for every proper suffix ``c`` of the
pattern (lengths 1 .. len(pattern) - 1: the native loop never tries the whole pattern) that
occurs in the sequences, walk forward choosing a most frequent next token; the running
probability is multiplied by count(c + t) / count(c); a token is emitted only while the
probability stays >= ``min_prob``; at most ``min(max_spec, floor(len(c) * factor + offset))``
tokens and never past ``depth`` total tokens. The best start is the one with the highest score.
Ties between equally frequent next tokens are explored exhaustively, so the reference returns
every chain the real tree may legally produce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RefChain:
    tokens: tuple[int, ...]
    probs: tuple[float, ...]
    match_len: int

    @property
    def score(self) -> float:
        return float(sum(self.probs))


def count(seqs: list[list[int]], c: tuple[int, ...]) -> int:
    m = len(c)
    return sum(1 for s in seqs for i in range(len(s) - m + 1) if tuple(s[i : i + m]) == c)


def chains_from(seqs, context, max_tokens, min_prob, depth) -> list[RefChain]:
    out: list[RefChain] = []

    def walk(cur: tuple[int, ...], toks: tuple[int, ...], probs: tuple[float, ...], prob: float) -> None:
        if len(toks) >= max_tokens or len(cur) >= depth:
            out.append(RefChain(toks, probs, len(context)))
            return
        base = count(seqs, cur)
        nexts = {}
        for s in seqs:
            for i in range(len(s) - len(cur)):
                if tuple(s[i : i + len(cur)]) == cur:
                    t = s[i + len(cur)]
                    nexts[t] = nexts.get(t, 0) + 1
        if not nexts:
            out.append(RefChain(toks, probs, len(context)))
            return
        top = max(nexts.values())
        new_prob = prob * (top / base) if top != base else prob
        if new_prob < min_prob:
            out.append(RefChain(toks, probs, len(context)))
            return
        for t, c in nexts.items():
            if c == top:
                walk(cur + (t,), toks + (t,), probs + (new_prob,), new_prob)

    walk(tuple(context), (), (), 1.0)
    return out


def reference_options(seqs, pattern, max_spec, factor, offset, min_prob, depth) -> dict[int, list[RefChain]]:
    """For each matching suffix length m: every chain the tree may produce from it."""
    res: dict[int, list[RefChain]] = {}
    pattern = list(pattern)
    for m in range(1, len(pattern)):
        c = tuple(pattern[-m:])
        if count(seqs, c) == 0:
            continue
        max_tokens = max(0, min(max_spec, math.floor(m * factor + offset + 1e-6)))
        res[m] = chains_from(seqs, c, max_tokens, min_prob, depth)
    return res
