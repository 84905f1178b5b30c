"""Flat ``das/...`` scalars of one step record: what TensorBoard, W&B and the trainer's
status dict get (one name, one meaning everywhere).

Names (all optional; a scalar is present only when its source is known):

* ``das/rollout_seconds``, ``das/output_tokens``
* ``das/acceptance_rate`` (accepted / drafted), ``das/accepted_per_step`` (accepted draft
  tokens per verify step), ``das/drafted``, ``das/accepted``
* ``das/bucket/<label>/{acceptance_rate,accepted_per_step,drafted}`` per response-length bucket
* ``das/class/<class>/{acceptance_rate,accepted_per_step,drafted}`` per length class
* ``das/engine_history_tokens``, ``das/engine_history_bytes`` (summed over engines, estimated)
* ``das/actor_history_tokens``, ``das/actor_history_bytes`` (the history actor's store)
* ``das/faults``, ``das/engine_faults``, ``das/propose_seconds``
* ``das/snapshot_faults`` (incremental history updates that failed and were rebuilt),
  ``das/last_snapshot_seconds`` (the engines' last history swap before this step's record,
  summed over engines: time the trainer waited at the step boundary)
"""

from __future__ import annotations

from typing import Any, Mapping


def step_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("rollout_seconds", "output_tokens"):
        if record.get(key) is not None:
            out[f"das/{key}"] = float(record[key])
    das = record.get("das") or {}
    acc = das.get("acceptance") or {}
    if acc:
        tot = acc["total"]
        for k in ("acceptance_rate", "accepted_per_step", "drafted", "accepted"):
            out[f"das/{k}"] = float(tot[k])
        for group, name in (("by_bucket", "bucket"), ("by_class", "class")):
            for label, c in acc.get(group, {}).items():
                for k in ("acceptance_rate", "accepted_per_step", "drafted"):
                    out[f"das/{name}/{label}/{k}"] = float(c[k])
    hist = das.get("history") or {}
    if "tokens" in hist:
        out["das/engine_history_tokens"] = float(hist["tokens"])
    if "estimated_bytes" in hist:
        out["das/engine_history_bytes"] = float(hist["estimated_bytes"])
    for k in ("faults", "engine_faults", "propose_seconds", "snapshot_faults", "last_snapshot_seconds"):
        if k in das:
            out[f"das/{k}"] = float(das[k])
    actor = record.get("history") or {}
    if "tokens" in actor:
        out["das/actor_history_tokens"] = float(actor["tokens"])
        out["das/actor_history_bytes"] = float(actor.get("token_bytes", 4 * actor["tokens"]))
    return out
