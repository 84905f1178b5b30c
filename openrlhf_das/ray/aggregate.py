"""Sums of acceptance statistics: over engines (one step) and over steps (a report).

Input and output use the plain shape of ``das_get_stats()["acceptance"]``
(:meth:`openrlhf_das.policy.AcceptanceTracker.snapshot`)::

    {"total": C, "by_class": {class: C}, "by_bucket": {bucket label: C}}

where ``C`` is ``Counts.as_dict()``. Counts are summed; rates are recomputed from the sums
(never averaged), so merging is associative.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from ..policy.acceptance import Counts


def counts_of(d: Mapping[str, Any]) -> Counts:
    return Counts(int(d["drafted"]), int(d["accepted"]), int(d["verify_steps"]), int(d["decode_steps"]))


def merge_counts(items: Iterable[Mapping[str, Mapping[str, Any]]]) -> dict[str, Counts]:
    """Key-wise sum of ``{key: counts dict}`` mappings; keys keep first-seen order."""
    out: dict[str, Counts] = {}
    for item in items:
        for key, c in item.items():
            out.setdefault(key, Counts()).add(counts_of(c))
    return out


def merge_acceptance(items: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Sum of acceptance dicts (``None`` entries are skipped)."""
    acc = [a for a in items if a]
    total = Counts()
    for a in acc:
        total.add(counts_of(a["total"]))
    return {
        "total": total.as_dict(),
        "by_class": {k: c.as_dict() for k, c in merge_counts(a.get("by_class", {}) for a in acc).items()},
        "by_bucket": {k: c.as_dict() for k, c in merge_counts(a.get("by_bucket", {}) for a in acc).items()},
    }


def merge_engine_stats(per_engine: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One step's ``das_get_stats`` of every engine, summed.

    Result: ``engines`` (how many reported), ``acceptance`` (merged), ``history`` (numeric
    fields summed: problems, tokens, estimated_bytes, ...), every other numeric top-level field
    summed (``faults``, ``engine_faults``, ``propose_seconds``, ...), and
    ``propose_seconds_max`` (the slowest engine's drafter time: engines run in parallel).
    Engines without DAS (``{"enabled": False}``) count in ``engines`` only.
    """
    live = [s for s in per_engine if s.get("enabled", True)]
    out: dict[str, Any] = {"engines": len(per_engine), "acceptance": merge_acceptance(s.get("acceptance") for s in live)}
    history: dict[str, float] = {}
    for s in live:
        for k, v in (s.get("history") or {}).items():
            if _is_number(v):
                history[k] = history.get(k, 0) + v
        for k, v in s.items():
            if k != "enabled" and _is_number(v):
                out[k] = out.get(k, 0) + v
    out["history"] = history
    out["propose_seconds_max"] = max((float(s.get("propose_seconds", 0.0)) for s in live), default=0.0)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
