"""Rollout-only OpenRLHF runs (``openrlhf-das-train --rollout-only ...``).

OpenRLHF's real pieces from prompts to rewards — ``create_vllm_engines`` (the DAS engines when
``--das`` is on), its dataset and ``SamplesGenerator``, the reward function of
``--reward.remote_url``, ``PPOTrainer.fit``'s episode/step loop, its TensorBoard/W&B logging and
the DAS step boundary — with the DeepSpeed update replaced by a step that only records rollout
statistics. The policy therefore never changes between steps (history matches better than in a
real run: say so when quoting its numbers).

What it is for: machines without CUDA (DeepSpeed's training path needs it), where it is the CPU
form of the main job, and measuring rollout time alone. Engines need ``num_gpus`` Ray resources:
on a CPU machine the cluster gets fake ones (vLLM's CPU build ignores them). Only
``--reward.remote_url`` rewards (a Python file or a URL) work: reward models are DeepSpeed actors.

Version gate: OpenRLHF's ``create_vllm_engines`` and ``PPOTrainer`` are called with keyword
arguments checked against their signatures, and the trainer's class body, ``fit`` and
``train_step`` are checked, before anything starts (:func:`bind_checked`, :func:`_trainer_class`):
a renamed argument or method raises :class:`~openrlhf_das.versions.UnsupportedVersionError`
naming the installed and tested OpenRLHF, never mid-run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from ... import versions

logger = logging.getLogger(__name__)


def check_args(args: Any) -> list[str]:
    """What OpenRLHF's parsed ``args`` lack for a rollout-only run."""
    problems = []
    if not args.vllm.num_engines:
        problems.append("--rollout-only needs vLLM engines (--vllm.num_engines >= 1)")
    if not args.reward.remote_url:
        problems.append("--rollout-only needs --reward.remote_url (a reward function file or URL): reward "
                        "models run on DeepSpeed, which a rollout-only run does not start")
    if args.train.async_enable:
        problems.append("--rollout-only runs OpenRLHF's synchronous loop: drop --train.async_enable")
    if args.vllm.tensor_parallel_size > 1 and not _cuda_available():
        problems.append("--vllm.tensor_parallel_size > 1 needs GPUs: OpenRLHF runs tensor-parallel engines on "
                        "vLLM's Ray executor, which vLLM's CPU platform does not support")
    return problems


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bind_checked(fn: Callable[..., Any], what: str, **kwargs: Any) -> dict[str, Any]:
    """``kwargs`` if ``fn``'s signature accepts them (``__wrapped__`` followed), else
    :class:`~openrlhf_das.versions.UnsupportedVersionError`."""
    import inspect

    try:
        inspect.signature(fn).bind_partial(**kwargs)
    except TypeError as exc:
        raise versions.UnsupportedVersionError(
            f"{what}: {exc}; installed {versions.installed('openrlhf').label} "
            f"(tested: {versions.tested_range('openrlhf')})") from exc
    return kwargs


def _pin_prompt_order(loader: Any, seed: int) -> None:
    """Seed the prompt loader's shuffling from ``--train.seed``. Without ``torch.distributed``
    (rollout-only runs no DeepSpeed), OpenRLHF's loader has no seeded ``DistributedSampler``: its
    ``RandomSampler`` draws a seed from the process's global torch RNG when the trainer is built,
    so the prompt order depended on what ran before in that process (DAS on or off gave two arms
    different prompts per step). Seeded, every run of the same arguments sees the same order."""
    generator = getattr(getattr(loader, "sampler", None), "generator", None)
    if generator is not None:
        generator.manual_seed(int(seed))


def _trainer_class() -> type:
    from openrlhf.trainer.ppo_trainer import PPOTrainer

    base = versions.actor_class(PPOTrainer, "openrlhf.PPOTrainer")
    versions.require_attrs(base, ["fit", "train_step"], "openrlhf.PPOTrainer", ("openrlhf",))

    class RolloutOnlyTrainer(base):  # type: ignore[misc, valid-type]
        """OpenRLHF's PPOTrainer whose ``train_step`` records rollout statistics instead of
        making experiences and updating the model (both need the DeepSpeed actors)."""

        def __init__(self, pretrain, strategy, *args, **kwargs):
            super().__init__(pretrain, strategy, *args, **kwargs)
            _pin_prompt_order(self.prompts_dataloader, strategy.args.train.seed)

        def train_step(self, rollout_samples, global_step):
            import torch

            def mean(values: list[float]) -> float:
                return float(sum(values) / len(values)) if values else 0.0

            rewards = [float(s.rewards[0]) for s in rollout_samples if s.rewards is not None]
            status: dict[str, float] = {
                "rollout/num_samples": float(len(rollout_samples)),
                "rollout/reward_mean": mean(rewards),
                # as OpenRLHF's _compute_rollout_stats: torch's (unbiased) std, 0 for one sample
                "rollout/reward_std": float(torch.tensor(rewards).std()) if len(rewards) > 1 else 0.0,
                "rollout/response_length_mean": mean([float(s.response_length[0]) for s in rollout_samples]),
                "rollout/truncated_rate": mean([float(s.truncated[0]) for s in rollout_samples]),
            }
            for key in {k for s in rollout_samples for k in s.info if k.startswith("das/")}:
                vals = [float(torch.as_tensor(s.info[key]).float().mean()) for s in rollout_samples if key in s.info]
                status[key] = mean(vals)
            # the dict itself is kept: ``fit`` adds ``timing/generation`` to it after this returns
            self.__dict__.setdefault("das_rollout_log", []).append(status)
            return status, global_step + 1

        def rollout_log(self) -> list[dict[str, float]]:
            return [{"step": i + 1, **s} for i, s in enumerate(self.__dict__.get("das_rollout_log", []))]

    return RolloutOnlyTrainer


def run(args: Any) -> list[dict[str, float]]:
    """Run the rollout-only job for OpenRLHF's parsed ``args`` (which pass :func:`check_args`:
    :func:`main` checks them before Ray starts) on an initialized Ray cluster;
    returns one record per step (rollout statistics, DAS scalars, OpenRLHF's
    ``timing/generation`` in seconds). A resumed run's steps are numbered from 1 again."""
    import ray
    from openrlhf.trainer.ray import create_vllm_engines  # the patched re-export when DAS is on
    from openrlhf.utils import get_strategy

    trainer_cls = _trainer_class()
    engine_kwargs = bind_checked(
        create_vllm_engines, "openrlhf.create_vllm_engines",
        num_engines=args.vllm.num_engines, tensor_parallel_size=args.vllm.tensor_parallel_size,
        pretrain=args.actor.model_name_or_path, seed=args.train.seed,
        full_determinism=args.train.full_determinism_enable, enable_prefix_caching=args.vllm.enable_prefix_caching,
        enforce_eager=args.vllm.enforce_eager, max_model_len=args.data.max_len, shared_pg=None,
        gpu_memory_utilization=args.vllm.gpu_memory_utilization, vllm_enable_sleep=False, logprobs_mode=None,
        agent_func_path=args.train.agent_func_path, remote_rm_url=args.reward.remote_url,
    )
    strategy = get_strategy(args)
    trainer_kwargs = dict(
        pretrain=args.actor.model_name_or_path, strategy=strategy, actor_model_group=None, critic_model_group=None,
        reward_model_group=None, reference_model_group=None,
    )
    bind_checked(trainer_cls.__init__, "openrlhf.PPOTrainer", **trainer_kwargs, vllm_engines=None)
    engines = create_vllm_engines(**engine_kwargs)
    trainer = ray.remote(trainer_cls).remote(
        **trainer_kwargs, vllm_engines=engines,
        do_sample=True, max_len=args.data.max_len, max_new_tokens=args.rollout.max_new_tokens,
        temperature=args.rollout.temperature, top_p=args.rollout.top_p,
    )
    ray.get(trainer.fit.remote())
    log = ray.get(trainer.rollout_log.remote())
    out = Path(args.ckpt.path) / "rollout_only.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(log, indent=2))
    logger.info("rollout-only: %d steps, per-step records in %s", len(log), out)
    return log


def main(openrlhf_argv: Sequence[str], start_ray: Any) -> int:
    """Parse, validate, start Ray (``start_ray(num_gpus=...)``), run; the exit status."""
    import sys

    from . import openrlhf_cli

    args = openrlhf_cli.parse_args(openrlhf_argv)
    problems = check_args(args)
    if problems:
        print("openrlhf-das-train: error: " + "; ".join(problems), file=sys.stderr)
        return 2
    start_ray(num_gpus=args.vllm.num_engines * args.vllm.tensor_parallel_size)
    log = run(args)
    for rec in log:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}), flush=True)
    return 0
