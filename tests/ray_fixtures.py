"""Ray test fixtures: a local 2-CPU cluster, a stand-in engine and a real CPU vLLM DAS engine.

Both engine classes expose ``das_rpc(method, *args, **kwargs)`` returning a list over workers,
the interface the history actor expects of OpenRLHF's rollout actors.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest

from openrlhf_das.config import DASConfig, LengthClass

TESTS_DIR = str(Path(__file__).resolve().parent)


# Problem trees only (no request/global tree, no live siblings), flat budget 4: every draft then
# comes from history the history actor shipped.
PROBLEM_TREE_ONLY = DASConfig().with_overrides({
    "length_policy": False,
    "flat_budget": {"tokens": 4, "factor": 1.0},
    "use_request_tree": False,
    "use_global_tree": False,
    "use_siblings": False,
    "shared_own_text": False,  # only the problem's past responses: no own text in its tree either
})


@pytest.fixture(scope="session", name="ray_cluster")
def ray_cluster_fixture() -> Iterator[Any]:
    """``ray.init(num_cpus=2)`` once per session (a fresh local cluster, no dashboard)."""
    import ray

    if not ray.is_initialized():
        # Ray workers inherit the driver's environment: make this module importable there.
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS_DIR, os.environ.get("PYTHONPATH")) if p)
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray


class StatsEngine:
    """Stand-in engine (a plain Ray actor, no vLLM): ``das_get_stats`` returns the recorded stats
    dicts given to it, one per call; ``das_load_snapshot`` keeps what it was sent.

    Two real CPU engines would cost a minute of the test budget; the payloads here have exactly
    the shape of ``DASWorkerExtension``'s RPC results (``num_workers`` copies, like TP ranks).
    """

    def __init__(self, stats: list[dict[str, Any]], num_workers: int = 1, broken: bool = False) -> None:
        self._stats = list(stats)
        self._num_workers = num_workers
        self._broken = broken
        self.loads: list[tuple[bytes, dict[str, str] | None]] = []
        """(payload bytes as received, the classes held after it) per ``das_load_snapshot``."""
        self.snapshots: list[Any] = []
        """The whole history after each load (``HistoryFeed``: deltas applied)."""
        self._feed: Any = None

    def das_rpc(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        if self._broken:
            raise RuntimeError(f"engine is broken ({method})")
        if method == "das_get_stats":
            out = self._stats.pop(0) if self._stats else {"enabled": True}
        elif method == "das_load_snapshot":
            data, classes = args
            assert isinstance(data, bytes), type(data)  # an ObjectRef argument arrives resolved
            from openrlhf_das.drafter import HistoryFeed

            if self._feed is None:
                self._feed = HistoryFeed()
            snap, classes = self._feed.receive(data, classes)  # a snapshot or a delta, as a worker gets it
            self.loads.append((data, classes))
            self.snapshots.append(snap)
            out = {"tokens": snap.num_tokens}
        else:
            raise ValueError(f"unknown RPC {method}")
        return [out] * self._num_workers

    def received(self) -> list[tuple[bytes, dict[str, str] | None]]:
        return self.loads

    def histories(self) -> list[Any]:
        return self.snapshots

    def forget_history(self) -> None:
        """As a restarted engine: the next delta finds no base."""
        self._feed = None


class VLLMEngine:
    """A real vLLM CPU engine with DAS in a Ray actor (tiny model, token-id prompts).

    The engine core runs inside the actor process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as
    OpenRLHF does with ``full_determinism``): on a loaded 2-core machine spawning the engine-core
    and worker processes took 30-200 s, in-process 15 s. Payloads are bytes and dicts either way.
    """

    def __init__(self, model_path: str, das_config: dict[str, Any] | None, max_model_len: int = 256) -> None:
        """``das_config`` None: a stock engine (no speculation), for baselines."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        from openrlhf_das.config import DASConfig
        from openrlhf_das.engines.vllm import engine_kwargs

        das = {} if das_config is None else engine_kwargs(DASConfig.from_dict(das_config))
        self.llm = LLM(
            model=model_path,
            skip_tokenizer_init=True,
            enforce_eager=True,
            dtype="float32",
            max_model_len=max_model_len,
            max_num_seqs=64,
            seed=0,
            **das,
        )

    def ready(self) -> bool:
        return True

    def das_rpc(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return self.llm.collective_rpc(method, args=args, kwargs=kwargs)

    def generate(
        self,
        prompts: list[list[int]],
        problem_ids: list[str],
        max_tokens: int | list[int],
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[list[int]]:
        """Fixed-length responses (EOS ignored; ``max_tokens`` per prompt or for all), tagged
        with their problem ids; greedy unless ``temperature`` > 0."""
        from vllm import SamplingParams

        from openrlhf_das.engines.vllm import with_das_metadata

        lengths = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
        params = [
            with_das_metadata(SamplingParams(temperature=temperature, max_tokens=n, ignore_eos=True,
                                             seed=None if seed is None else seed + i), pid)
            for i, (pid, n) in enumerate(zip(problem_ids, lengths, strict=True))
        ]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]


@contextmanager
def openrlhf_das_job(work: Path, config: DASConfig, integ: Any, rows: list[dict[str, Any]],
                     openrlhf_argv: list[str], *, num_engines: int = 1, num_cpus: int = 2,
                     max_model_len: int = 256, gpu_memory_utilization: float = 0.9,
                     extra_env: dict[str, str] | None = None) -> Iterator[SimpleNamespace]:
    """A DAS job as ``openrlhf_das.cli.train`` sets it up, minus DeepSpeed: a tiny model and a
    prompt JSONL of ``rows`` in ``work``, the DAS variables exported, the patches applied, a
    fresh local Ray cluster with ``num_engines`` fake GPUs and the DAS setup hook, DAS rollout
    engines from OpenRLHF's (patched) ``create_vllm_engines``, and OpenRLHF's real parsed
    ``args`` for ``openrlhf_argv`` plus the model/data/engine flags. Restores the environment."""
    import json

    import ray

    from openrlhf_das.cli.train import ray_runtime_env
    from openrlhf_das.integrations.openrlhf import openrlhf_cli, patches, settings
    from openrlhf_das.models.tiny import build_tiny_model

    if ray.is_initialized():  # the job needs its own cluster: fake GPUs + DAS setup hook
        ray.shutdown()
    model = build_tiny_model(work / "tiny", vocab_size=256)
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", **(extra_env or {})}
    saved = {k: os.environ.get(k) for k in (settings.DAS_CONFIG_ENV, settings.INTEGRATION_ENV, *env)}
    os.environ.update(env)
    settings.export(config, integ)
    patches.apply()
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_engines, include_dashboard=False,
             log_to_driver=False, runtime_env=ray_runtime_env(config, integ))
    try:
        from openrlhf.trainer.ray import create_vllm_engines  # the patched re-export

        assert getattr(create_vllm_engines, "__das_patched__", False)
        engines = create_vllm_engines(num_engines, 1, str(model), 0, False, False, True, max_model_len, None,
                                      gpu_memory_utilization, False, None)
        args = openrlhf_cli.parse_args([
            "--actor.model_name_or_path", str(model), "--vllm.num_engines", str(num_engines),
            "--data.prompt_dataset", str(data), "--data.input_key", "prompt", "--data.label_key", "label",
            "--ds.attn_implementation", "sdpa", *openrlhf_argv,
        ])
        yield SimpleNamespace(ray=ray, engines=engines, model=str(model), args=args, integ=integ, work=work)
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class DrafterEngine:
    """Stand-in engine with a real drafter and no vLLM (a plain Ray actor): the real worker RPCs
    (``DASWorkerExtension.das_load_snapshot``: history feed, snapshots and deltas) over a real
    ``DASSpeculator``, loaded as ``engines/vllm/drafting.py`` does (``from_npz_bytes`` →
    ``DASSpeculator.load_snapshot``). It records the bytes of every history payload it gets,
    and answers what its index holds and drafts."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = DASConfig.from_dict(config)
        self.payload_bytes: list[int] = []
        self._start()

    def _start(self) -> None:
        from openrlhf_das.drafter import HistorySnapshot
        from openrlhf_das.engines.vllm.worker_extension import DASWorkerExtension
        from openrlhf_das.speculator import DASSpeculator

        spec = DASSpeculator(self._config)

        def load_snapshot_bytes(data: bytes, classes: dict[str, str] | None = None) -> dict[str, int]:
            cls_map = {k: LengthClass(v) for k, v in classes.items()} if classes is not None else None
            spec.load_snapshot(HistorySnapshot.from_npz_bytes(data), cls_map)
            return spec.drafter.history.stats().as_dict()

        self.spec = spec
        self.worker = DASWorkerExtension()
        self.worker.model_runner = SimpleNamespace(drafter=SimpleNamespace(load_snapshot_bytes=load_snapshot_bytes))

    def das_rpc(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        if method == "das_get_stats":
            return [{"enabled": True, **self.spec.stats()}]
        if method == "das_load_snapshot":
            self.payload_bytes.append(len(args[0]))
        return [getattr(self.worker, method)(*args, **kwargs)]

    def restart(self) -> None:
        """A fresh engine process: no history, no feed."""
        self._start()

    def live_text(self, problem_id: str, step: int, tokens: list[int]) -> None:
        """In-flight sibling text of a request, finished and kept (as during a step)."""
        index = self.spec.drafter.history
        index.extend_live(problem_id, "live", step, np.asarray(tokens, np.int32))
        index.finish_live(problem_id, "live", keep=True)

    def history(self) -> dict[str, Any]:
        """Problem → [(step, sorted response lengths)], tokens, classes."""
        index = self.spec.drafter.history
        return {
            "problems": {p: index.steps_of(p) for p in sorted(index.problem_ids())},
            "lengths": {p: sorted(index.response_lengths(p)) for p in sorted(index.problem_ids())},
            "tokens": index.tokens,
            "classes": {p: c.value for p, c in sorted(self.spec.classes.items())},
        }

    def drafts(self, queries: list[tuple[str, list[int]]]) -> list[tuple[tuple[int, ...], str]]:
        from openrlhf_das.drafter import DraftRequest

        out = []
        for i, (pid, tokens) in enumerate(queries):
            d = self.spec.drafter.propose_one(DraftRequest(f"q{i}", np.asarray(tokens, np.int32), 0, pid, budget=6))
            out.append((tuple(d.token_ids), d.source))
        return out

    def take_payload_bytes(self) -> list[int]:
        out, self.payload_bytes = self.payload_bytes, []
        return out
