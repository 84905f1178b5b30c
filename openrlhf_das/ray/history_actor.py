"""``RolloutHistoryActor``: the Ray actor between the rollout side and the DAS engines.

Data flow per RL step ``s`` (see ``docs/history-actor.md``)::

    rollout side ── add_rollouts([...]) ──► pending (this step's finished responses)
    trainer ── end_step(s) ──► fold pending into the windowed store (window W, token cap)
                           ──► pull das_get_stats(reset=True) from every engine, merge, record
                               one step record in RUN_DIR/steps.jsonl (RunRecorder, fsync)
                           ──► length classes for the next batch (assign_length_classes)
                           ──► per-engine snapshots (npz bytes; only the engine's problems when
                               prompts are pinned by ``engine_for_problem``) → das_load_snapshot
                               on every engine, waiting for the swap (``push=True``) — or built
                               in a background thread and swapped by ``push_snapshots()``
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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import ray

from ..config import DASConfig
from ..policy import assign_length_classes
from .aggregate import merge_acceptance, merge_engine_stats
from .run_dir import RunRecorder, iter_records
from .scalars import step_scalars
from .history_store import HistoryStore
from .persistence import CheckpointError, load_checkpoint, save_checkpoint
from .rollouts import FinishedRollout, coerce_rollouts
from .sharding import shard_problems

logger = logging.getLogger(__name__)

Payload = tuple[bytes, dict[str, str]]
"""What one engine gets: snapshot npz bytes and ``{problem_id: length class}``."""


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

        Returns ``{"step", "classes": {problem_id: class}, "metrics": {"das/...": float},
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
        return {"step": step, "classes": classes, "metrics": step_scalars(record), "engines": loaded, "errors": errors}

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
        for engine, (data, classes) in zip(self.engines, payloads, strict=True):
            if id(data) not in refs:  # one object-store copy per distinct payload
                refs[id(data)] = ray.put(data)
            ref = refs[id(data)]
            calls.append(engine.das_rpc.remote("das_load_snapshot", ref, classes))
        out = []
        for i, call in enumerate(calls):
            try:
                out.append({"engine": i, "history": _rank0(ray.get(call, timeout=self.rpc_timeout_s))})
            except Exception as exc:  # noqa: BLE001 - one engine's failure must not stop the others
                logger.error("engine %d: das_load_snapshot failed: %s", i, exc)
                out.append({"engine": i, "error": f"engine {i}: das_load_snapshot failed: {_describe(exc)}"})
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
            "prompt_tokens": sum(int(r.prompt_token_ids.size) for r in pending),
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
        """Per-engine (npz bytes, classes); unpinned engines share one bytes object."""
        if not self.engines:
            return []
        if not self.pin_problems:
            data = self.store.snapshot(next_step).to_npz_bytes()
            return [(data, classes)] * len(self.engines)
        shards = shard_problems(set(self.store.problem_ids()) | set(classes), len(self.engines))
        return [
            (self.store.snapshot(next_step, shard).to_npz_bytes(), {p: c for p, c in classes.items() if p in shard})
            for shard in shards
        ]

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

