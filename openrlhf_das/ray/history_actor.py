"""``RolloutHistoryActor``: the Ray actor between the rollout side and the DAS engines.

Data flow per RL step ``s`` (see ``docs/history-actor.md``)::

    rollout side ── add_rollouts([...]) ──► pending (this step's finished responses)
    trainer ── end_step(s) ──► fold pending into the windowed store (window W, token cap)
                           ──► pull das_get_stats(reset=True) from every engine, merge, record
                               one step record in RUN_DIR/steps.jsonl (RunRecorder, fsync)
                           ──► length classes for the next batch (assign_length_classes)
                           ──► per-engine history deltas (npz bytes; only the engine's problems
                               when prompts are pinned by ``engine_for_problem``): the buckets
                               that changed since what the engine holds, with the changed length
                               classes → das_load_snapshot on every engine, waiting for the swap
                               (``push=True``) — or built in a background thread and swapped by
                               ``push_snapshots()``. An engine that holds nothing of this actor
                               (start, restart, a failed push) gets its whole snapshot instead
                           ──► every ``snapshot_every`` steps: checkpoint to RUN_DIR/history/

Engines are Ray actor handles with ``das_rpc(method, *args, **kwargs)`` forwarding to
``llm.collective_rpc(method, args=args, kwargs=kwargs)`` and returning the list over workers
(TP ranks). Every rank holds the same drafter state, so rank 0's stats stand for the engine.

Restarts: :func:`create_history_actor` starts the actor with ``max_restarts``; Ray re-runs
``__init__`` with the same arguments, which reloads the last checkpoint (history as of the last
checkpointed step) and re-reads ``steps.jsonl`` (every completed step's acceptance is there:
records are written per step, before ``end_step`` returns). Rollouts added but not yet folded
when the actor died are lost unless Ray retries the call (``max_task_retries``). A corrupt or
mismatched checkpoint is logged and refused; the actor then starts with an empty history.

Memory: the store holds ≤ ``max_tokens`` tokens at 4 bytes each (+ ~100 B per response; it
copies incoming arrays, which Ray may hand over as views of whole object-store buffers);
building snapshots transiently holds one concatenated copy of the payload plus its compressed
npz per step, and the freed heap is given back to the OS after each step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import uuid
from dataclasses import dataclass
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import ray

from ..config import DASConfig
from ..drafter import HistoryDelta
from ..policy import assign_length_classes
from .aggregate import merge_acceptance, merge_engine_stats
from .run_dir import RunRecorder, iter_records
from .scalars import step_scalars
from .history_store import BucketState, HistoryStore
from .persistence import CheckpointError, load_checkpoint, save_checkpoint
from .rollouts import FinishedRollout, coerce_rollouts
from .sharding import shard_problems

logger = logging.getLogger(__name__)


@dataclass
class Payload:
    """What one engine gets at a step boundary: ``data`` (history delta npz bytes, or the whole
    snapshot's with ``classes``), and what it then holds (``version``, ``state``, ``classes_held``)."""

    data: bytes
    classes: dict[str, str] | None
    version: str
    state: BucketState
    classes_held: dict[str, str]
    problems: frozenset[str] | None
    delta: bool
    next_step: int


@dataclass
class _Held:
    """What the actor last shipped an engine successfully."""

    version: str
    state: BucketState
    classes: dict[str, str]


class RolloutHistoryActor:
    """Windowed rollout history, per-engine snapshots, acceptance records (a Ray actor body).

    Args:
        run_dir: run directory (created; continued when it exists — see module docstring).
        config: the job's :class:`DASConfig` (or its dict form): ``window``,
            ``history_max_tokens`` (per engine), ratios for length classes.
        engines: engine actor handles (may be empty: history and records only).
        pin_problems: True when the rollout side sends every prompt of a problem to engine
            ``engine_for_problem(problem_id, len(engines))``; each engine then gets only its
            problems' history, and the store cap is ``history_max_tokens × len(engines)``.
            False: every engine gets all history (cap ``history_max_tokens``).
        snapshot_every: K; a checkpoint is written after every K-th ``end_step``.
        mode: the ``mode`` label of this run's step records.
        meta: extra run info for ``meta.json`` (new run directories only).
        rpc_timeout_s: longest wait for one engine RPC; a timed-out or failed engine is
            logged and listed in the step record's ``errors``, the step goes on.
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: DASConfig | Mapping[str, Any],
        engines: Sequence[Any] = (),
        *,
        pin_problems: bool = False,
        snapshot_every: int = 5,
        mode: str = "das",
        meta: Mapping[str, Any] | None = None,
        rpc_timeout_s: float = 600.0,
    ) -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.config = config if isinstance(config, DASConfig) else DASConfig.from_dict(config)
        self.run_dir = Path(run_dir)
        self.engines = list(engines)
        self.pin_problems = bool(pin_problems and self.engines)
        self.snapshot_every = snapshot_every
        self.mode = mode
        self.rpc_timeout_s = rpc_timeout_s
        shards = len(self.engines) if self.pin_problems else 1
        self.max_tokens = self.config.history_max_tokens * shards
        self.recorder = RunRecorder(
            self.run_dir,
            {
                "producer": "openrlhf_das.ray.RolloutHistoryActor",
                "das_config": self.config.to_dict(),
                "engines": len(self.engines),
                "pin_problems": self.pin_problems,
                "snapshot_every": snapshot_every,
                **(meta or {}),
            },
            resume=True,
        )
        self._pending: list[FinishedRollout] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="das-snapshot")
        self._build: Future[list[Payload]] | None = None
        self._session = uuid.uuid4().hex[:12]  # history versions of another actor never match
        self._versions = 0
        self._held: list[_Held | None] = [None] * len(self.engines)
        self.shipped = {"bytes": 0, "deltas": 0, "snapshots": 0, "resent": 0}
        """History payloads sent to engines: total bytes, deltas, whole snapshots, and whole
        snapshots resent after an engine refused a delta."""
        self._steps_since_checkpoint = 0
        self.last_step, self._acceptance = self._read_records()
        self.store, self.restored_step, self.restore_error = self._restore()

    # ------------------------------------------------------------------ rollout side
    def add_rollouts(self, rollouts: Sequence[FinishedRollout | Mapping[str, Any]]) -> int:
        """Queue finished responses (instances or their dict form) for the next ``end_step``;
        returns how many are queued."""
        self._pending.extend(coerce_rollouts(rollouts))
        return len(self._pending)

    def length_classes(self, problem_ids: Sequence[str]) -> dict[str, str]:
        """Length class of each problem of a batch, ranked by past lengths within the batch."""
        c = self.config
        classes = assign_length_classes(
            problem_ids, self.store.past_lengths(problem_ids), c.long_ratio, c.medium_ratio, c.unknown_class
        )
        return {p: k.value for p, k in classes.items()}

    # ------------------------------------------------------------------ step boundary
    def end_step(
        self,
        step: int,
        *,
        rollout_seconds: float | None = None,
        next_problem_ids: Sequence[str] | None = None,
        push: bool = True,
    ) -> dict[str, Any]:
        """Close RL step ``step``: fold, pull stats, record, prepare (and by default push) the
        next snapshots, checkpoint every K steps.

        ``next_problem_ids``: the next batch's problems (classes are ranked among them); None
        ranks every problem in the history. ``push=False`` builds the snapshots in the
        background; call :meth:`push_snapshots` before the next rollout.

        Length classes reach the engines with their history (one channel); the result carries
        them (``"classes": {problem_id: class}``) only for the ``next_problem_ids`` asked about
        (None otherwise). Returns ``{"step", "classes", "metrics": {"das/...": float},
        "engines": [per-engine load result] (push=True), "errors": [str]}``.
        """
        self._discard_build()
        folded = self._fold(step)
        per_engine, errors = self._pull_stats()
        das = merge_engine_stats(per_engine) if self.engines else None
        problems = list(next_problem_ids) if next_problem_ids is not None else self.store.problem_ids()
        classes = self.length_classes(problems)
        record: dict[str, Any] = {
            "step": step,
            "rollout_seconds": rollout_seconds,
            "output_tokens": folded["response_tokens"],
            "das": das,
            "history": {**self.store.stats().as_dict(), "rss_bytes": _rss_bytes()},
            "rollouts": folded,
            "classes": _count(classes.values()),
            "errors": errors,
        }
        if step <= self.last_step:
            logger.warning("step %d was already recorded (last %d); not recording it again", step, self.last_step)
        else:
            self.recorder.record(mode=self.mode, **record)
            self.last_step = step
            if das is not None:
                self._acceptance = merge_acceptance([self._acceptance, das["acceptance"]])
        self._build = self._executor.submit(self._build_payloads, step + 1, classes)
        loaded: list[dict[str, Any]] = []
        if push:
            loaded = self.push_snapshots()
            errors += [e["error"] for e in loaded if "error" in e]
        self._steps_since_checkpoint += 1
        if self._steps_since_checkpoint >= self.snapshot_every:
            self.save_checkpoint()
        _trim_heap()
        return {"step": step, "classes": classes if next_problem_ids is not None else None,
                "metrics": step_scalars(record), "engines": loaded, "errors": errors}

    def push_snapshots(self) -> list[dict[str, Any]]:
        """Ship the prepared snapshots to every engine and wait until each has swapped them in.

        Returns one entry per engine: ``{"engine": i, "history": <its new history stats>}`` or
        ``{"engine": i, "error": str}``. A no-op (``[]``) when nothing is prepared.
        """
        if self._build is None:
            return []
        payloads = self._build.result()
        self._build = None
        refs: dict[int, Any] = {}
        calls = []
        for engine, pay in zip(self.engines, payloads, strict=True):
            if id(pay.data) not in refs:  # one object-store copy per distinct payload
                refs[id(pay.data)] = ray.put(pay.data)
            calls.append(engine.das_rpc.remote("das_load_snapshot", refs[id(pay.data)], pay.classes))
        out = []
        for i, (call, pay) in enumerate(zip(calls, payloads)):
            self._held[i] = None  # until the engine confirms
            try:
                history = _rank0(ray.get(call, timeout=self.rpc_timeout_s))
            except Exception as exc:  # noqa: BLE001 - one engine's failure must not stop the others
                if pay.delta:  # e.g. the engine restarted: it holds no base for the delta
                    logger.warning("engine %d refused a history delta (%s); sending its whole snapshot", i, _describe(exc))
                    pay = self._full_payload(pay)
                    self.shipped["resent"] += 1
                    try:
                        history = _rank0(ray.get(engine_call(self.engines[i], pay), timeout=self.rpc_timeout_s))
                    except Exception as exc2:  # noqa: BLE001
                        exc = exc2
                    else:
                        exc = None
                if exc is not None:
                    logger.error("engine %d: das_load_snapshot failed: %s", i, exc)
                    out.append({"engine": i, "error": f"engine {i}: das_load_snapshot failed: {_describe(exc)}"})
                    continue
            self._held[i] = _Held(pay.version, pay.state, pay.classes_held)
            self.shipped["bytes"] += len(pay.data)
            self.shipped["deltas" if pay.delta else "snapshots"] += 1
            out.append({"engine": i, "history": history})
        return out

    # ------------------------------------------------------------------ persistence / status
    def save_checkpoint(self) -> str | None:
        """Checkpoint the history as of the last ended step; returns the state path (None if
        no step has ended since the actor started)."""
        if self.last_step < 0:
            return None
        snap = self.store.snapshot(self.last_step + 1)
        path = save_checkpoint(
            self.run_dir, self.last_step, snap, self.config.window, self.max_tokens, {"acceptance": self._acceptance}
        )
        self._steps_since_checkpoint = 0
        return str(path)

    def save_for_global_step(self, global_step: int) -> str:
        """Checkpoint the history as of the trainer's checkpoint of ``global_step`` (DAS steps
        ``<= global_step - 1``) for a resumed job (:mod:`.resume`); returns the state path."""
        from .resume import save_for_global_step

        return save_for_global_step(self, global_step)

    def resume_at(self, global_step: int) -> dict[str, Any]:
        """Continue a job resumed from the trainer's checkpoint of ``global_step``: that
        checkpoint's history, records of later steps set aside, the restored snapshot ready for
        the next :meth:`push_snapshots` (:mod:`.resume`)."""
        from .resume import rewind_to_global_step

        return rewind_to_global_step(self, global_step)

    def status(self) -> dict[str, Any]:
        """Actor state: process id, last recorded step, queue, history size, RSS, restore
        outcome, cumulative acceptance over all recorded steps of this run."""
        return {
            "pid": os.getpid(),
            "last_step": self.last_step,
            "pending_rollouts": len(self._pending),
            "history": self.store.stats().as_dict(),
            "max_tokens": self.max_tokens,
            "rss_bytes": _rss_bytes(),
            "engines": len(self.engines),
            "pin_problems": self.pin_problems,
            "restored_step": self.restored_step,
            "restore_error": self.restore_error,
            "acceptance": self._acceptance,
            "shipped": dict(self.shipped),
        }

    # ------------------------------------------------------------------ internals
    def _fold(self, step: int) -> dict[str, Any]:
        """Move pending rollouts into the store (oldest step first); summary of what came in."""
        pending, self._pending = sorted(self._pending, key=lambda r: r.step), []
        kept = sum(self.store.add(r.problem_id, r.step, r.response_token_ids) for r in pending)
        rewards = [r.reward for r in pending if r.reward is not None]
        versions = [r.policy_version for r in pending if r.policy_version is not None]
        return {
            "count": len(pending),
            "kept": int(kept),
            "late": sum(r.step != step for r in pending),  # rollouts filed under another step
            "problems": len({r.problem_id for r in pending}),
            "response_tokens": sum(r.response_length for r in pending),
            "prompt_tokens": sum(r.prompt_tokens for r in pending),
            "mean_reward": sum(rewards) / len(rewards) if rewards else None,
            "policy_versions": [min(versions), max(versions)] if versions else None,
        }

    def _pull_stats(self) -> tuple[list[dict[str, Any]], list[str]]:
        calls = [e.das_rpc.remote("das_get_stats", reset=True) for e in self.engines]
        stats, errors = [], []
        for i, call in enumerate(calls):
            try:
                stats.append(_rank0(ray.get(call, timeout=self.rpc_timeout_s)))
            except Exception as exc:  # noqa: BLE001 - record the step without this engine
                logger.error("engine %d: das_get_stats failed: %s", i, exc)
                errors.append(f"engine {i}: das_get_stats failed: {_describe(exc)}")
        return stats, errors

    def _build_payloads(self, next_step: int, classes: dict[str, str]) -> list[Payload]:
        """Per engine: a delta against what it holds, or its whole snapshot when it holds
        nothing of this actor. Engines holding the same version of the same problems (all of
        them without pinning) share one payload."""
        if not self.engines:
            return []
        if self.pin_problems:
            shards = shard_problems(set(self.store.problem_ids()) | set(classes), len(self.engines))
            problems: list[frozenset[str] | None] = [frozenset(s) for s in shards]
        else:
            problems = [None] * len(self.engines)
        out: list[Payload] = []
        shared: dict[tuple[str | None, int], Payload] = {}
        for i, shard in enumerate(problems):
            held = self._held[i]
            key = (held.version if held is not None else None, i if shard is not None else -1)
            if key in shared:
                out.append(shared[key])
                continue
            mine = classes if shard is None else {p: c for p, c in classes.items() if p in shard}
            version = self._next_version()
            if held is None:
                pay = self._full_payload(Payload(b"", None, version, {}, mine, shard, False, next_step))
            else:
                changed: dict[str, str | None] = {p: c for p, c in mine.items() if held.classes.get(p) != c}
                changed.update({p: None for p in held.classes if p not in mine})
                delta, state = self.store.delta(held.state, next_step, shard, changed)
                delta = HistoryDelta(**{**delta.__dict__, "base": held.version, "version": version})
                pay = Payload(delta.to_npz_bytes(), None, version, state, mine, shard, True, next_step)
            shared[key] = pay
            out.append(pay)
        return out

    def _full_payload(self, pay: Payload) -> Payload:
        """``pay`` as the engine's whole snapshot (same problems and classes, a new version)."""
        version = self._next_version()
        snap = self.store.snapshot(pay.next_step, pay.problems)
        return Payload(snap.to_npz_bytes(history_version=version), dict(pay.classes_held), version,
                       self.store.bucket_state(pay.problems), pay.classes_held, pay.problems, False, pay.next_step)

    def _next_version(self) -> str:
        self._versions += 1
        return f"{self._session}:{self._versions}"

    def _discard_build(self) -> None:
        """Wait for (and drop) a prepared but unpushed build: the store is about to change."""
        if self._build is not None:
            self._build.result()
            self._build = None

    def _read_records(self) -> tuple[int, dict[str, Any]]:
        """Last recorded step of this mode and the merged acceptance of all its records."""
        records = [r for r in iter_records(self.run_dir) if r.get("mode") == self.mode]
        last = max((int(r["step"]) for r in records), default=-1)
        return last, merge_acceptance((r.get("das") or {}).get("acceptance") for r in records)

    def _restore(self) -> tuple[HistoryStore, int | None, str | None]:
        store = HistoryStore(self.config.window, self.max_tokens)
        try:
            ckpt = load_checkpoint(self.run_dir, self.config.window)
        except CheckpointError as exc:
            logger.error("history checkpoint refused, starting with empty history: %s", exc)
            return store, None, str(exc)
        if ckpt is None:
            return store, None, None
        store = HistoryStore.from_snapshot(ckpt.snapshot, self.config.window, self.max_tokens)
        logger.info(
            "history restored from step %d (%d rollouts, %d tokens); last recorded step %d",
            ckpt.step, ckpt.snapshot.num_rollouts, ckpt.snapshot.num_tokens, self.last_step,
        )
        return store, ckpt.step, None


def create_history_actor(
    run_dir: str | Path,
    config: DASConfig | Mapping[str, Any],
    engines: Sequence[Any] = (),
    *,
    name: str | None = None,
    num_cpus: float = 1,
    max_restarts: int = 4,
    max_task_retries: int = -1,
    **kwargs: Any,
) -> Any:
    """Start a :class:`RolloutHistoryActor` (``kwargs`` go to its ``__init__``).

    ``max_restarts``: how often Ray recreates it after a crash or ``ray.kill(actor,
    no_restart=False)``; each restart reloads the last checkpoint. ``max_task_retries=-1``
    re-runs calls that were in flight when it died (``add_rollouts`` is then not lost).
    """
    cls = ray.remote(RolloutHistoryActor)
    options: dict[str, Any] = {"num_cpus": num_cpus, "max_restarts": max_restarts, "max_task_retries": max_task_retries}
    if name is not None:
        options["name"] = name
    return cls.options(**options).remote(str(run_dir), config, list(engines), **kwargs)


def engine_call(engine: Any, pay: Payload) -> Any:
    """``das_load_snapshot`` of ``pay`` on ``engine`` (a Ray call)."""
    return engine.das_rpc.remote("das_load_snapshot", pay.data, pay.classes)


def _rank0(result: Any) -> Any:
    """Rank 0's entry of a ``collective_rpc`` result (a list over workers)."""
    return result[0] if isinstance(result, list) else result


def _describe(exc: BaseException) -> str:
    """One line for an RPC failure: the remote exception (not Ray's traceback dump)."""
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {cause}".splitlines()[0]


def _count(classes: Any) -> dict[str, int]:
    out = {"short": 0, "medium": 0, "long": 0}
    for c in classes:
        out[c] = out.get(c, 0) + 1
    return out


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Building snapshots allocates and frees ~2 copies of the payload each step; glibc keeps
    such memory otherwise (measured: a 8M-token store plateaued at 283 MB RSS without, 228 MB
    with; ``benchmarks/history_actor_memory.py``)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def _rss_bytes() -> int:
    """Resident set size of this process (bytes; 0 where /proc is unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0

