"""Shared helpers for the real-engine tests (``tests/test_engine_*.py``, marker ``engine``).

Everything here starts real vLLM V1 engines on CPU; nothing is mocked. Import what a test file
needs explicitly (``from engine_fixtures import ...``); this is not a conftest.

Engines:

* :func:`start_llm` / :func:`running_llm` build ``vllm.LLM`` with CPU-friendly defaults
  (``enforce_eager``, float32, 1 GiB KV cache) and the DAS settings of
  :func:`openrlhf_das.engines.vllm.engine_kwargs` (the DAS config travels in the engine's
  ``additional_config``; nothing of it is left in the environment).
* ``in_process=True`` runs the engine core and the worker inside the test process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``distributed_executor_backend="uni"``): starts in
  ~2 s instead of ~20-30 s, and lets a test monkeypatch the drafter or read the scheduler.
  ``in_process=False`` is the production path (spawned engine-core and worker processes that
  load the plugin themselves and get the DAS config with the engine's config).
* ``async_cpu=True`` (in-process only) keeps vLLM's async scheduling, which the CPU platform
  switches off (``vllm/platforms/cpu.py``); see ``cpu_async.cpu_async_scheduling``.
* vLLM caches its environment variables once an engine core is up
  (``vllm.envs.enable_envs_cache``); :func:`start_llm` drops that cache before each start so
  per-engine settings (multiprocessing, KV cache size) take effect.

Models: :func:`tiny_model` (random small-vocab Llama, built once per process per setting) and
:func:`smollm2_fp32` (SmolLM2-135M-Instruct dequantized to float32; float32 because the CPU
engine is then batch-invariant, which token-identity tests need: in bfloat16 even two no-spec
runs with different batch compositions disagree on ~40 % of 48-token greedy outputs).
"""

from __future__ import annotations

import atexit
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from cpu_async import cpu_async_scheduling
from openrlhf_das.config import DASConfig
from openrlhf_das.drafter import HistorySnapshot, Rollout

_ENV_KEYS = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING")
_TMP: list[str] = []
_TINY: dict[tuple, Path] = {}

SMOLLM2 = "smollm2-135m-instruct"


# ---------------------------------------------------------------------------------- models
def _tmpdir(prefix: str) -> Path:
    path = tempfile.mkdtemp(prefix=prefix)
    if not _TMP:
        atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True) for p in _TMP])
    _TMP.append(path)
    return Path(path)


def tiny_model(vocab_size: int = 256, seed: int = 0, logit_std: float = 2.5) -> str:
    """Path of a random tiny Llama (see ``openrlhf_das.models.tiny``), built once per process."""
    from openrlhf_das.models import build_tiny_model

    key = (vocab_size, seed, logit_std)
    if key not in _TINY:
        _TINY[key] = build_tiny_model(_tmpdir("das-tiny-"), vocab_size=vocab_size, seed=seed,
                                      logit_std=logit_std, max_positions=2048)
    return str(_TINY[key])


def smollm2_fp32() -> str:
    """SmolLM2-135M-Instruct as a float32 HF folder (converted once, then cached)."""
    from openrlhf_das.models import materialize

    return str(materialize(SMOLLM2, dtype="float32"))


def shortest_math_prompts(model: str, n: int) -> tuple[list[str], list[list[int]]]:
    """(problem ids, chat-templated prompt token ids) of the ``n`` shortest MATH-500 prompts of
    the shipped dataset, with ``model``'s chat template."""
    from transformers import AutoTokenizer

    from openrlhf_das.data import load_math, to_chat_messages

    tok = AutoTokenizer.from_pretrained(model)
    ds = load_math("math500")
    rows = []
    for pid, text in zip(ds["problem_id"], ds["prompt"]):
        ids = tok.apply_chat_template(to_chat_messages(text), add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        rows.append((len(ids), pid, ids))
    rows.sort(key=lambda r: r[0])
    return [r[1] for r in rows[:n]], [r[2] for r in rows[:n]]


def random_prompts(n: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """``n`` token-id prompts avoiding ids 0/1 (eos/unk of the tiny tokenizer)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(2, vocab_size, size=length).tolist() for _ in range(n)]


# ---------------------------------------------------------------------------------- engines
@contextmanager
def _engine_env(in_process: bool, kv_cache_gib: int) -> Iterator[None]:
    import vllm.envs

    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    vllm.envs.disable_envs_cache()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_llm(
    model: str,
    *,
    das: DASConfig | None = None,
    stock_suffix: dict[str, Any] | None = None,
    in_process: bool = True,
    kv_cache_gib: int = 1,
    async_cpu: bool | None = None,
    **kwargs: Any,
) -> Any:
    """A ``vllm.LLM`` on CPU.

    ``das``: a DAS engine (``engine_kwargs(das)``: method ``suffix`` + DAS worker extension).
    ``stock_suffix``: a ``method: "suffix"`` speculative config started *without* a DAS config
    (the plugin is installed, so the proposer is a ``DASProposer`` delegating to stock), with
    the DAS worker extension. Neither: plain decoding (no speculation).
    ``async_cpu`` (in-process engines only, :func:`cpu_async_scheduling`): True: async
    scheduling; False: synchronous scheduling, but ``ngram_gpu`` engines can start.
    """
    from vllm import LLM

    from openrlhf_das.engines.vllm import WORKER_EXTENSION, engine_kwargs

    if das is not None and stock_suffix is not None:
        raise ValueError("das and stock_suffix are exclusive")
    args: dict[str, Any] = dict(enforce_eager=True, dtype="float32", max_model_len=1024, seed=0)
    if in_process:
        args["distributed_executor_backend"] = "uni"
    if async_cpu is not None:
        if not in_process:
            raise ValueError("async_cpu needs an in-process engine (the patches live in this process)")
        if async_cpu:
            args["async_scheduling"] = True
    args.update(kwargs)
    patches = nullcontext() if async_cpu is None else cpu_async_scheduling(keep_async=async_cpu)
    with _engine_env(in_process, kv_cache_gib), patches:
        if das is not None:
            args.update(engine_kwargs(das))
        elif stock_suffix is not None:
            args.update(speculative_config=dict(stock_suffix), worker_extension_cls=WORKER_EXTENSION)
        return LLM(model=model, **args)


def start_async_llm(model: str, *, das: DASConfig | None = None, kv_cache_gib: int = 1, **kwargs: Any) -> Any:
    """A ``vllm.v1.engine.async_llm.AsyncLLM`` on CPU (always multiprocess: vLLM's asyncio
    client needs a separate engine-core process). Stop it with ``engine.shutdown()``."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from openrlhf_das.engines.vllm import engine_kwargs

    args: dict[str, Any] = dict(enforce_eager=True, dtype="float32", max_model_len=1024, seed=0)
    args.update(kwargs)
    with _engine_env(False, kv_cache_gib):
        if das is not None:
            args.update(engine_kwargs(das))
        return AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **args))


def shutdown_llm(llm: Any) -> None:
    """Stop the engine (processes or in-process core) and free its memory."""
    try:
        llm.llm_engine.engine_core.shutdown()
    finally:
        del llm
        gc.collect()


@contextmanager
def running_llm(model: str, **kwargs: Any) -> Iterator[Any]:
    llm = start_llm(model, **kwargs)
    try:
        yield llm
    finally:
        shutdown_llm(llm)


def inproc_core(llm: Any) -> Any:
    """The ``EngineCore`` of an in-process engine (scheduler at ``.scheduler``)."""
    return llm.llm_engine.engine_core.engine_core


def count_steps(llm: Any) -> list[int]:
    """Record, from now on, the requests of every non-empty engine step of an in-process engine
    (its scheduler's ``schedule`` wrapped); returns the list it appends to."""
    scheduler = inproc_core(llm).scheduler
    schedule, steps = scheduler.schedule, []

    def counting_schedule(*args: Any, **kwargs: Any) -> Any:
        out = schedule(*args, **kwargs)
        if out.num_scheduled_tokens:
            steps.append(len(out.num_scheduled_tokens))
        return out

    scheduler.schedule = counting_schedule
    return steps


def inproc_drafter(llm: Any) -> Any:
    """The speculative proposer of an in-process engine's (only) worker."""
    worker = inproc_core(llm).model_executor.driver_worker.worker
    return worker.model_runner.drafter


def das_stats(llm: Any, reset: bool = False) -> dict[str, Any]:
    """``das_get_stats`` of the first (only) worker."""
    return llm.collective_rpc("das_get_stats", kwargs={"reset": reset})[0]


def snapshot_bytes(problem_ids: Sequence[str], responses: Sequence[Sequence[int]], step: int = 0) -> bytes:
    """``responses`` (one per problem id, of RL step ``step``) as a serialized history snapshot."""
    rollouts = [Rollout(pid, step, np.asarray(r, np.int32)) for pid, r in zip(problem_ids, responses)]
    return HistorySnapshot.from_rollouts(rollouts, next_step=step + 1).to_npz_bytes()


def load_history(llm: Any, problem_ids: Sequence[str], responses: Sequence[Sequence[int]],
                 classes: dict[str, str] | None = None, step: int = 0) -> dict[str, int]:
    """Ship ``responses`` as a history snapshot to every worker; the first worker's answer."""
    return llm.collective_rpc("das_load_snapshot", args=(snapshot_bytes(problem_ids, responses, step), classes))[0]


# ---------------------------------------------------------------------------------- outputs
def token_ids(outputs: Sequence[Any]) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def generate_tagged(llm: Any, prompts: Sequence[Sequence[int]], params: Any, pids: Sequence[str] | None = None,
                    length_class: str = "long") -> list[Any]:
    """``llm.generate`` on token prompts; with ``pids`` each request carries its DAS metadata."""
    from openrlhf_das.engines.vllm.factory import with_das_metadata

    reqs = [{"prompt_token_ids": p} for p in prompts]
    if pids is not None:
        params = [with_das_metadata(params, pid, length_class) for pid in pids]
    return llm.generate(reqs, params, use_tqdm=False)


def max_logprob_difference(got: Sequence[Any], ref: Sequence[Any]) -> tuple[float, int]:
    """(largest |logprob difference| of the chosen tokens, tokens compared); the outputs must
    hold the same tokens (asserted) and finite logprobs."""
    a = np.concatenate([np.array(x) for x in chosen_logprobs(got)])
    b = np.concatenate([np.array(x) for x in chosen_logprobs(ref)])
    assert a.shape == b.shape and np.all(np.isfinite(a))
    return float(np.max(np.abs(a - b))), int(a.size)


def chosen_logprobs(outputs: Sequence[Any]) -> list[list[float]]:
    """Logprob of each generated token, per request."""
    return [[float(lp[t].logprob) for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)]
            for o in outputs]


def corrupt(responses: Sequence[Sequence[int]], every: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Copies of ``responses`` with about one token in ``every`` replaced by another id, so a
    history built from them drafts mostly right tokens and sometimes wrong ones (exercising
    both acceptance and rejection in the verifier)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in responses:
        r = list(r)
        for i in np.flatnonzero(rng.random(len(r)) < 1.0 / every):
            r[i] = int((r[i] + 1 + rng.integers(0, vocab_size - 3)) % vocab_size)
        out.append(r)
    return out


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def token_differences(ref: Sequence[Any], got: Sequence[Any]) -> list[tuple[int, int | None]]:
    """(request, first differing position) of every output of ``got`` whose tokens differ from
    ``ref``'s (both vLLM ``RequestOutput`` lists); prints a one-line summary."""
    base, new = token_ids(ref), token_ids(got)
    diffs = [(i, first_difference(a, b)) for i, (a, b) in enumerate(zip(base, new)) if a != b]
    if len(base) != len(new):
        diffs.append((min(len(base), len(new)), None))
    print(f"{len(base) - len(diffs)}/{len(base)} outputs identical; first differences (request, position): {diffs[:5]}")
    return diffs


# ---------------------------------------------------------------------------------- statistics
def chi2_homogeneity(a: Sequence[int], b: Sequence[int], min_expected: float = 5.0) -> tuple[float, int, float]:
    """Two-sample chi-square test of equal categorical distributions.

    Categories whose expected count is below ``min_expected`` in either sample are pooled into
    one "other" cell (dropped if that is still too small). Returns ``(statistic, dof, p)``. The
    p-value is exact (``scipy.stats.chi2.sf`` if scipy is installed, else the identical
    regularized upper incomplete gamma function of torch).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    cats = np.union1d(a, b)
    ca = np.array([(a == c).sum() for c in cats], float)
    cb = np.array([(b == c).sum() for c in cats], float)
    na, nb = ca.sum(), cb.sum()
    tot = ca + cb
    expected_min = np.minimum(tot * na / (na + nb), tot * nb / (na + nb))
    keep = expected_min >= min_expected
    rows_a = list(ca[keep])
    rows_b = list(cb[keep])
    oa, ob = ca[~keep].sum(), cb[~keep].sum()
    if min((oa + ob) * na / (na + nb), (oa + ob) * nb / (na + nb)) >= min_expected:
        rows_a.append(oa)
        rows_b.append(ob)
    table = np.array([rows_a, rows_b])
    if table.shape[1] < 2:
        return 0.0, 0, 1.0
    col = table.sum(0)
    row = table.sum(1)
    exp = np.outer(row, col) / table.sum()
    stat = float(((table - exp) ** 2 / exp).sum())
    dof = table.shape[1] - 1
    return stat, dof, chi2_sf(stat, dof)


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution."""
    try:
        from scipy.stats import chi2  # type: ignore[import-not-found]

        return float(chi2.sf(x, dof))
    except ImportError:
        import torch

        # P(X > x) = Q(dof/2, x/2), the regularized upper incomplete gamma function.
        q = torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                    torch.tensor(x / 2.0, dtype=torch.float64))
        return float(q) if not math.isnan(float(q)) else 0.0


# ---------------------------------------------------------------------------------- benchmarks
def run_benchmark(tmp_path: Path, script: str, num_problems: int, *args: str) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<script>`` on a tiny model with ``num_problems`` 8-token prompts (ids
    q0, q1, ... in a ``--prompts-file``), plus ``args``; returns the finished process."""
    from openrlhf_das.models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", vocab_size=256)
    prompts = {"problems": [{"problem_id": f"q{i}", "prompt_token_ids": [(7 * i + j) % 250 + 2 for j in range(8)]}
                            for i in range(num_problems)]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, str(root / "benchmarks" / script), "--model", str(model), "--prompts-file",
         str(tmp_path / "prompts.json"), "--problems", str(num_problems), "--max-model-len", "256", *args],
        capture_output=True, text=True, timeout=900, cwd=root,
    )
