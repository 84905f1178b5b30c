"""A sampling profiler of the engine's host thread over a window of engine steps
(``step_profile.py --profiler host``).

The torch profiler (``step_profile.py --profiler torch``) shows what the device does and which
CUDA runtime calls the host makes, but not which Python code fills a host-bound step, and its
instrumentation slows the host it measures. This sampler reads the stack of the thread that runs
the engine loop (vLLM's engine core: ``schedule``, ``execute_model``, ``sample_tokens``, the wait
for step N's output, ``update_from_output``) every ``interval_ms`` from a side thread
(``sys._current_frames``), only while the window is open, and tallies each sample by function:

* ``inclusive``: samples with the function anywhere on the stack (its time with its callees);
* ``leaf``: samples in the function itself; a C call (a graph launch, a copy, an event wait) is
  charged to the Python function that made it.

Milliseconds per step = share of samples x window wall time / steps. Windows are counted in the
worker's ``execute_model`` calls (one per engine step): a window (delay, steps) opens at call
``delay + 1`` and closes at ``delay + steps + 1``; one engine run can sample several (the bulk
and the tail of an epoch). Overhead: one stack walk per sample while the GIL is held (tens of
microseconds), a few percent of the host at the default 1 ms interval, the same for every mode.

Runs inside the engine process through ``LLM.collective_rpc`` with a callable (``start``,
``stop``): the caller sets ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` and registers this module for
pickling by value (:func:`register`), so the engine process needs no import path to it.
Benchmark scaffolding; not part of the package.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any

ATTR = "_host_sampler"
WAIT_MARKS = ("get_output", "synchronize", ":result", ":wait")
"""Leaf functions that mean the host waits for the device or for a future (step N's output)."""


class _Window:
    """Tallies of one window: engine steps ``delay + 1 .. delay + steps``."""

    def __init__(self, delay: int, steps: int) -> None:
        if steps < 1 or delay < 0:
            raise ValueError(f"window needs steps >= 1 and delay >= 0, got delay={delay} steps={steps}")
        self.delay, self.steps = delay, steps
        self.t_open: float | None = None
        self.t_close: float | None = None
        self.steps_seen = 0
        self.samples = 0
        self.inclusive: collections.Counter[str] = collections.Counter()
        self.leaf: collections.Counter[str] = collections.Counter()

    def summary(self, top: int) -> dict[str, Any]:
        head = {"delay": self.delay, "steps": self.steps}
        if self.t_open is None or self.t_close is None or not self.samples:
            return {**head, "error": "window not reached or no samples"}
        wall = (self.t_close - self.t_open) * 1e3
        steps = max(1, self.steps_seen)
        per = wall / steps / self.samples  # ms per step of one sample

        def table(counter: collections.Counter[str]) -> list[dict[str, Any]]:
            return [{"function": k, "ms_per_step": round(v * per, 4), "share": round(v / self.samples, 4)}
                    for k, v in counter.most_common(top)]

        waiting = sum(v for k, v in self.leaf.items() if any(m in k for m in WAIT_MARKS))
        return {**head, "steps_sampled": steps, "wall_ms": round(wall, 2), "wall_ms_per_step": round(wall / steps, 4),
                "samples": self.samples, "waiting_ms_per_step": round(waiting * per, 4),
                "waiting_share": round(waiting / self.samples, 4),
                "inclusive": table(self.inclusive), "leaf": table(self.leaf)}


class HostSampler:
    """Stack samples of one thread over windows of engine steps (module docstring)."""

    def __init__(self, thread_id: int, windows: list[tuple[int, int]], interval_ms: float = 1.0) -> None:
        if not windows or interval_ms <= 0:
            raise ValueError("at least one window and interval_ms > 0 required")
        self.windows = [_Window(d, n) for d, n in windows]
        self.thread_id, self.interval = thread_id, interval_ms / 1e3
        self.step = 0
        self.current: _Window | None = None
        self._names: dict[Any, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="das-host-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def on_step(self) -> None:
        """Called at the start of every engine step (the worker's ``execute_model``)."""
        self.step += 1
        now = time.perf_counter()
        cur = self.current
        if cur is not None and self.step > cur.delay + cur.steps:
            cur.t_close, self.current = now, None
        for w in self.windows:
            if w.t_open is None and w.delay < self.step <= w.delay + w.steps:
                if self.current is not None:  # overlapping windows: the later one takes over
                    self.current.t_close = now
                w.t_open, self.current = now, w
        if self.current is not None:
            self.current.steps_seen += 1

    def _name(self, code: Any) -> str:
        name = self._names.get(code)
        if name is None:
            path = code.co_filename
            for cut in ("site-packages/", "/openrlhf_das/", "/benchmarks/", "/tests/", "/lib/python3."):
                if cut in path:
                    path = path.split(cut, 1)[1]
                    break
            name = self._names[code] = f"{path}:{code.co_name}"
        return name

    def sample_once(self) -> bool:
        """Take one sample of the thread's stack into the open window (False if none is open)."""
        w = self.current
        if w is None:
            return False
        frame = sys._current_frames().get(self.thread_id)
        names = []
        while frame is not None and len(names) < 96:
            names.append(self._name(frame.f_code))
            frame = frame.f_back
        if not names or self.current is not w:
            return False
        w.samples += 1
        w.leaf[names[0]] += 1
        w.inclusive.update(set(names))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        if self.current is not None:  # the epoch ended inside a window
            self.current.t_close, self.current = time.perf_counter(), None

    def summary(self, top: int = 60) -> list[dict[str, Any]]:
        """Per window: milliseconds per step by function (module docstring); ``steps_sampled`` <
        ``steps`` when the epoch ended first."""
        return [w.summary(top) for w in self.windows]


def start(worker: Any, windows: list[tuple[int, int]], interval_ms: float = 1.0) -> bool:
    """``collective_rpc`` body: start a sampler of the calling (engine loop) thread over
    ``windows`` ((delay, steps) in engine steps of the epoch) and count the runner's
    ``execute_model`` calls."""
    runner = worker.model_runner
    sampler = HostSampler(threading.get_ident(), [tuple(w) for w in windows], interval_ms)
    orig = runner.execute_model

    def execute_model(*args: Any, **kwargs: Any) -> Any:
        sampler.on_step()
        return orig(*args, **kwargs)

    runner.execute_model = execute_model
    setattr(worker, ATTR, (sampler, orig))
    sampler.start()
    return True


def stop(worker: Any) -> list[dict[str, Any]]:
    """``collective_rpc`` body: stop the sampler, restore ``execute_model``, return the summary."""
    sampler, orig = getattr(worker, ATTR)
    sampler.stop()
    worker.model_runner.execute_model = orig
    delattr(worker, ATTR)
    return sampler.summary()


def register() -> None:
    """Let ``collective_rpc`` ship :func:`start` / :func:`stop` by value (the engine process may
    not have ``benchmarks/`` on its import path). Call before the LLM is built (the setting is
    read from the environment at serialization)."""
    import os

    import cloudpickle

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
