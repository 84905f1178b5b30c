"""Stable problem ids for OpenRLHF prompts.

OpenRLHF carries no dataset index: a prompt travels as its text (``PromptDataset`` yields
``(datasource, prompt, label, image)``). DAS keys history by problem, so:

* a row with an explicit id field (``problem_id``, else ``id``; non-empty) is that problem: the
  id is ``str(row[field])``;
* any other row is identified by its prompt text: ``sha1(prompt.encode("utf-8")).hexdigest()[:16]``
  (the prompt after OpenRLHF's input template / chat template, i.e. exactly what is generated
  from).

Both are pure functions of the row, so every process (driver, trainer actors, rollout actors,
the history actor) computes the same id, run after run — never Python's ``hash()``, which is
salted per process.

Explicit ids reach the rest of the job through :func:`register` (called by the patched
``PromptDataset`` preprocessing, in the process that owns the dataloader and dispatches the
prompts); :func:`resolve` maps a prompt text back to its id there, falling back to the hash.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any, Mapping

logger = logging.getLogger(__name__)

ID_FIELDS = ("problem_id", "id")
"""Row fields read as an explicit problem id, in order of preference."""

_lock = threading.Lock()
_by_prompt: dict[str, str] = {}
_conflicts = 0
_resolutions = 0


def prompt_hash(prompt: str) -> str:
    """16 hex chars of sha1 of the prompt text (UTF-8)."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


def explicit_id(row: Mapping[str, Any] | Any) -> str | None:
    """The row's own id (first non-empty of :data:`ID_FIELDS`), or None."""
    getter = getattr(row, "get", None)
    if getter is None:
        return None
    for field in ID_FIELDS:
        value = getter(field)
        if value is not None and str(value) != "":
            return str(value)
    return None


def problem_id_for_row(row: Mapping[str, Any] | Any, prompt: str) -> str:
    """The problem id of a dataset row whose prompt text (as generated from) is ``prompt``."""
    return explicit_id(row) or prompt_hash(prompt)


def register(row: Mapping[str, Any] | Any, prompt: str) -> str:
    """Remember the id of ``prompt`` (explicit ids only; hashed ids need no registry) and
    return it. Two rows with the same prompt text but different ids keep the first id (a
    warning is logged once): the engines only ever see the text."""
    global _conflicts
    pid = explicit_id(row)
    if pid is None:
        return prompt_hash(prompt)
    with _lock:
        old = _by_prompt.setdefault(prompt, pid)
        if old != pid:
            _conflicts += 1
            if _conflicts == 1:
                logger.warning("DAS: identical prompt text under problem ids %r and %r; using %r", old, pid, old)
            return old
    return pid


def resolve(prompt: str) -> str:
    """The problem id of a prompt text seen in this process (registered id, else the hash)."""
    global _resolutions
    _resolutions += 1
    pid = _by_prompt.get(prompt)
    return pid if pid is not None else prompt_hash(prompt)


def resolutions() -> int:
    """How many times :func:`resolve` ran in this process (the trainer resolves each dispatched
    prompt once; the id then travels with the request and its responses)."""
    return _resolutions


def registered() -> int:
    """How many prompts have an explicit id registered in this process."""
    return len(_by_prompt)


def reset() -> None:
    """Forget all registered ids (tests)."""
    global _conflicts
    with _lock:
        _by_prompt.clear()
        _conflicts = 0
