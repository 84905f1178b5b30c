"""``BucketGraphs``: one CUDA graph per batch-size bucket for a fixed-shape device step.

A drafting step launched eagerly costs 1.2-5 ms of host time in kernel launches (``suffix-gpu``
on an H100, shared/device-drafting.md), more than a whole no-speculation decode step; replayed
from a CUDA graph it costs 3-20 us of host time. ``fn(B)`` must read and write only tensors
that outlive the graphs (static buffers sliced ``[:B]``) and launch device work only (no host
sync, no allocation outside the graph pool). A batch of ``n`` rows replays the graph of the
smallest bucket ``B >= n``; rows ``n..B-1`` are the caller's to neutralise (e.g. zero counts).

Capture failures are not fatal: the bucket runs eager from then on and ``failures`` counts it
(with the error logged once), so a graph problem costs speed, never a rollout. On a device
without CUDA graphs (CPU) every call is eager with ``B = n``.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

logger = logging.getLogger(__name__)


def _profiling() -> bool:
    """Whether a torch profiler is recording (a C call: cheap enough for every step)."""
    enabled = getattr(torch._C._autograd, "_profiler_enabled", None)
    return bool(enabled()) if enabled is not None else False


def bucket_sizes(max_rows: int, smallest: int = 8) -> list[int]:
    """Powers of two from ``smallest`` up to the first one >= ``max_rows`` (capped at it)."""
    sizes, b = [], max(1, smallest)
    while b < max_rows:
        sizes.append(b)
        b *= 2
    sizes.append(max_rows)
    return sorted(set(sizes))


class BucketGraphs:
    """See the module docstring."""

    def __init__(self, name: str, fn: Callable[[int], None], sizes: Sequence[int], device: torch.device,
                 enabled: bool = True, pool: object | None = None) -> None:
        self.name = name
        self.fn = fn
        self.sizes = sorted(set(int(s) for s in sizes))
        self.device = device
        self.enabled = bool(enabled) and device.type == "cuda" and torch.cuda.is_available()
        self.pool = pool
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.failed: set[int] = set()
        self.failures = 0
        self.replays = 0
        self.eager_calls = 0

    def bucket(self, n: int) -> int | None:
        for s in self.sizes:
            if s >= n:
                return s
        return None

    def capture_all(self) -> None:
        """Capture every bucket now (engine start-up: warm-up runs compile any kernels)."""
        for b in self.sizes:
            self._capture(b)

    def run(self, n: int) -> int:
        """Run the step for ``n`` rows; returns the row count it ran with (``B >= n`` when
        replayed from a graph, else ``n``). Under an active torch profiler the call is annotated
        ``das:<name>`` (``benchmarks/step_profile.py`` attributes its device time by it)."""
        if _profiling():
            with torch.profiler.record_function(f"das:{self.name}"):
                return self._run(n)
        return self._run(n)

    def _run(self, n: int) -> int:
        b = self.bucket(n) if self.enabled else None
        if b is not None and b not in self.failed:
            g = self.graphs.get(b) or self._capture(b)
            if g is not None:
                g.replay()
                self.replays += 1
                return b
        self.fn(n)
        self.eager_calls += 1
        return n

    def _capture(self, b: int) -> torch.cuda.CUDAGraph | None:
        if b in self.graphs:
            return self.graphs[b]
        if b in self.failed:
            return None
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.fn(b)  # warm-up: kernel compilation and autotuning happen outside the capture
            torch.cuda.current_stream(self.device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(g, pool=self.pool, capture_error_mode="thread_local"):
                self.fn(b)
            self.graphs[b] = g
            return g
        except Exception:  # noqa: BLE001 - a graph problem costs speed, never a rollout
            self.failed.add(b)
            self.failures += 1
            if self.failures == 1:
                logger.exception("DAS %s: CUDA graph capture failed for %d rows; that bucket runs eager", self.name, b)
            return None

    def stats(self) -> dict[str, int]:
        return {"graphs": len(self.graphs), "graph_failures": self.failures, "graph_replays": self.replays,
                "eager_calls": self.eager_calls}
