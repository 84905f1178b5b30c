"""History checkpoints that line up with the trainer's, and rewinding a run to one of them.

A training job resumed from its own checkpoint (OpenRLHF's ``--ckpt.load_enable``) restarts at
the trainer's global step ``G`` of that checkpoint, not where the history actor stopped: the
actor may have recorded (and checkpointed, every ``snapshot_every`` steps) steps past ``G``
before the job was cut. The redone steps must neither draft from their own earlier attempt nor
be recorded twice, and the first redone step must draft from the history as it was at ``G``.

Step numbering: DAS step ``s`` (0-based, the history actor's) is the rollout that the trainer's
global step ``s + 1`` trains on; a checkpoint of global step ``G`` therefore holds the history
of DAS steps ``<= G - 1``, and the resumed job's first rollout is DAS step ``G``.

* :func:`save_for_global_step` (at every trainer checkpoint): the store's rollouts of steps
  ``<= G - 1`` (an async generator may already have closed step ``G``) as a history checkpoint
  in ``RUN_DIR/resume/global_step<G>/history/`` (:mod:`.persistence` format; the newest
  :data:`KEEP` are kept);
* :func:`rewind_to_global_step` (when the trainer resumes at ``G``): the store becomes that
  checkpoint (else, with a warning, the actor's current store cut to steps ``<= G - 1``: its
  last periodic checkpoint), step records of steps ``>= G`` move from ``steps.jsonl`` to
  ``steps.rewound.jsonl``, ``last_step`` becomes ``G - 1``, pending rollouts are dropped, and
  the engines' snapshot of the restored history is built for the next ``push_snapshots`` (the
  first resumed generation pushes it before it starts).

Both take the :class:`~.history_actor.RolloutHistoryActor` instance (they are its
``save_for_global_step`` / ``resume_at`` methods).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..drafter import HistorySnapshot
from .run_dir import STEPS_NAME
from .history_store import HistoryStore
from .persistence import CheckpointError, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

RESUME_DIR = "resume"
REWOUND_NAME = "steps.rewound.jsonl"
KEEP = 3
"""Trainer-aligned history checkpoints kept (the newest by global step)."""
_TAG = re.compile(r"^global_step(\d+)$")


def resume_dir(run_dir: str | Path, global_step: int) -> Path:
    """Where the history checkpoint of trainer global step ``global_step`` lives (its
    ``history/`` subfolder holds the :mod:`.persistence` files)."""
    return Path(run_dir) / RESUME_DIR / f"global_step{int(global_step)}"


def upto(snapshot: HistorySnapshot, last_step: int) -> HistorySnapshot:
    """``snapshot`` restricted to rollouts of steps ``<= last_step`` (``next_step`` =
    ``last_step + 1``)."""
    return HistorySnapshot.from_rollouts([r for r in snapshot.rollouts() if r.step <= last_step], last_step + 1)


def save_for_global_step(actor: Any, global_step: int) -> str:
    """Checkpoint the actor's history of DAS steps ``<= global_step - 1``; returns the state path."""
    g = int(global_step)
    if g < 1:
        raise ValueError(f"global_step must be >= 1, got {global_step}")
    snap = upto(actor.store.snapshot(g), g - 1)
    path = save_checkpoint(resume_dir(actor.run_dir, g), g - 1, snap, actor.config.window, actor.max_tokens,
                           {"global_step": g, "actor_last_step": actor.last_step})
    _prune(Path(actor.run_dir) / RESUME_DIR, KEEP)
    return str(path)


def rewind_to_global_step(actor: Any, global_step: int) -> dict[str, Any]:
    """Make the actor continue a run resumed at trainer global step ``global_step`` (see the
    module docstring). Returns ``{"global_step", "source": "resume"|"periodic"|"none",
    "restored_step", "history": store stats, "rewound_records": n, "error": str|None}``."""
    g = int(global_step)
    last = g - 1
    actor._discard_build()
    actor._pending = []
    error = None
    source = "none"
    try:
        ckpt = load_checkpoint(resume_dir(actor.run_dir, g), actor.config.window)
    except CheckpointError as exc:
        logger.error("trainer-aligned history checkpoint of global step %d refused: %s", g, exc)
        ckpt, error = None, str(exc)
    if ckpt is not None:
        snap, source = ckpt.snapshot, "resume"
    else:
        snap = upto(actor.store.snapshot(g), last)
        if snap.num_rollouts:
            source = "periodic"
            logger.warning("no history checkpoint of global step %d: using the actor's own (step %s) cut to "
                           "steps <= %d", g, actor.restored_step, last)
    actor.store = HistoryStore.from_snapshot(snap, actor.config.window, actor.max_tokens)
    if hasattr(actor, "_held"):  # what each engine holds refers to the old store: ship whole snapshots
        actor._held = [None] * len(actor.engines)
    actor.restored_step = last if snap.num_rollouts else None
    rewound = rewind_records(actor.run_dir, last)
    actor.last_step, actor._acceptance = actor._read_records()
    actor.last_step = last
    actor._steps_since_checkpoint = 0
    actor._build = actor._executor.submit(actor._build_payloads, g, actor.length_classes(actor.store.problem_ids()))
    out = {"global_step": g, "source": source, "restored_step": actor.restored_step,
           "history": actor.store.stats().as_dict(), "rewound_records": rewound, "error": error}
    logger.info("history rewound to global step %d: %s", g, out)
    return out


def rewind_records(run_dir: str | Path, last_step: int) -> int:
    """Move the step records of steps ``> last_step`` from ``steps.jsonl`` to
    ``steps.rewound.jsonl`` (appended; ``steps.jsonl`` is replaced atomically); returns how many."""
    path = Path(run_dir) / STEPS_NAME
    if not path.is_file():
        return 0
    keep, moved = [], []
    for line in path.read_text().split("\n")[:-1]:  # a torn last line is dropped
        if not line.strip():
            continue
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            keep.append(line)
            continue
        (moved if step > last_step else keep).append(line)
    if not moved:
        return 0
    with open(Path(run_dir) / REWOUND_NAME, "a") as fh:
        fh.write("".join(m + "\n" for m in moved))
        fh.flush()
        os.fsync(fh.fileno())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    tmp.replace(path)
    return len(moved)


def _prune(root: Path, keep: int) -> None:
    tagged = sorted((int(m.group(1)), d) for d in root.iterdir() if (m := _TAG.match(d.name)) and d.is_dir())
    for _, d in tagged[:-keep]:
        shutil.rmtree(d, ignore_errors=True)
