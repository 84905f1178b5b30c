"""Worker-side RPCs of a DAS engine, reached through ``LLM.collective_rpc`` /
``AsyncLLM.collective_rpc`` (pass this class as ``worker_extension_cls``).

Payloads are plain: snapshot bytes (npz, loaded with ``allow_pickle=False``), dicts of strings
and numbers. Every TP rank holds its own drafter; feed all ranks the same snapshot.

History arrives as a whole snapshot or as a :class:`~openrlhf_das.drafter.HistoryDelta` against
the last one (what the history actor sends between steps); each rank's
:class:`~openrlhf_das.drafter.HistoryFeed` turns it into the whole snapshot, which the proposer
loads as before (``load_snapshot_bytes``: host trees updated in place, or the device indexes
rebuilt), so every engine kind ends up with the same history either way.
"""

from __future__ import annotations

from typing import Any

from ... import versions
from ...drafter import HistoryFeed


class DASWorkerExtension:
    """Mixed into vLLM's worker class by ``worker_extension_cls``."""

    def _das_proposer(self) -> Any:
        drafter = getattr(self.model_runner, "drafter", None)  # type: ignore[attr-defined]
        if drafter is None or not hasattr(drafter, "load_snapshot_bytes"):
            raise RuntimeError("this engine has no DAS proposer (speculative method 'suffix' or 'ngram_gpu' + DAS config needed)")
        return drafter

    def das_load_snapshot(self, data: bytes, classes: dict[str, str] | None = None) -> dict[str, int]:
        """Swap in the history of ``data`` (a snapshot, or a delta against the last one; a delta
        of another base raises ``SnapshotError`` and changes nothing); returns the new history
        stats."""
        proposer = self._das_proposer()
        if hasattr(proposer, "speculator") and proposer.speculator is None:  # a stock engine: say so before parsing
            raise RuntimeError("DAS is not enabled on this engine (no DAS config at start)")
        feed = self.__dict__.get("_das_feed")
        if feed is None:
            feed = self._das_feed = HistoryFeed()
        deltas = feed.deltas
        snap, classes = feed.receive(data, classes)
        if feed.deltas != deltas:  # the proposer loads whole snapshots: hand it the result, uncompressed
            data = snap.to_npz_bytes(compress=False)
        return proposer.load_snapshot_bytes(data, classes)

    def das_update_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Apply dotted DAS-config overrides (e.g. ``{"gate.mode": "off"}``) between steps."""
        return self._das_proposer().update_config(overrides)

    def das_get_config(self) -> dict[str, Any] | None:
        """The engine's DAS config (``additional_config["das"]`` at start, with any
        ``das_update_config`` since); None for an engine started without one."""
        config = self._das_proposer().das_config
        return None if config is None else config.to_dict()

    def das_get_stats(self, reset: bool = False) -> dict[str, Any]:
        """Acceptance per class/bucket, history size, faults; ``reset`` zeroes acceptance.
        ``disabled_features``: patches switched off in this worker's process (feature -> why;
        :mod:`openrlhf_das.versions`), empty on the tested versions."""
        return {**self._das_proposer().stats(reset=reset), "disabled_features": versions.disabled_features()}
