"""Stand-in DAS engine for ``snapshot_load.py --data-path``: a Ray actor with the real worker
RPCs (:class:`~openrlhf_das.engines.vllm.worker_extension.DASWorkerExtension`) over a real
:class:`~openrlhf_das.speculator.DASSpeculator`, without vLLM (``das_rpc`` as OpenRLHF's rollout
actor has it). Its proposer loads history bytes as ``engines/vllm/drafting.py`` does
(``HistorySnapshot.from_npz_bytes`` → ``DASSpeculator.load_snapshot``). It counts the bytes and
seconds of every RPC it receives."""

from __future__ import annotations

import pickle
import time
from types import SimpleNamespace
from typing import Any

from openrlhf_das.config import DASConfig, LengthClass
from openrlhf_das.drafter import HistorySnapshot
from openrlhf_das.engines.vllm.worker_extension import DASWorkerExtension
from openrlhf_das.speculator import DASSpeculator


class HostLoader:
    """The part of ``DASDrafting`` the history RPCs reach (``load_snapshot_bytes``, ``stats``)."""

    def __init__(self, config: DASConfig) -> None:
        self.speculator = DASSpeculator(config)

    def load_snapshot_bytes(self, data: bytes, classes: dict[str, str] | None = None) -> dict[str, int]:
        snap = HistorySnapshot.from_npz_bytes(data)
        cls_map = {k: LengthClass(v) for k, v in classes.items()} if classes is not None else None
        self.speculator.load_snapshot(snap, cls_map)
        return self.speculator.drafter.history.stats().as_dict()

    def stats(self, reset: bool = False) -> dict[str, Any]:
        return {"enabled": True, **self.speculator.stats()}


class CountingEngine:
    def __init__(self, config: dict[str, Any]) -> None:
        self.worker = DASWorkerExtension()
        self.worker.model_runner = SimpleNamespace(drafter=HostLoader(DASConfig.from_dict(config)))
        self.log: list[dict[str, Any]] = []

    def das_rpc(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        nbytes = sum(len(a) if isinstance(a, (bytes, bytearray)) else len(pickle.dumps(a, protocol=5)) for a in args)
        nbytes += len(pickle.dumps(kwargs, protocol=5)) if kwargs else 0
        t0 = time.perf_counter()
        out = getattr(self.worker, method)(*args, **kwargs)
        self.log.append({"method": method, "bytes": nbytes, "seconds": time.perf_counter() - t0})
        return [out]

    def take_log(self) -> list[dict[str, Any]]:
        log, self.log = self.log, []
        return log

    def history(self) -> dict[str, Any]:
        """Problem → steps → response token lists of this engine's index (finished responses)."""
        index = self.worker.model_runner.drafter.speculator.drafter.history
        return {p: index.steps_of(p) for p in sorted(index.problem_ids())} | {"_tokens": index.tokens}
