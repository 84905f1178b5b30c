"""What every Ray process of a DAS job needs to know, carried in two environment variables.

* ``OPENRLHF_DAS_CONFIG``: the validated :class:`~openrlhf_das.config.DASConfig` as JSON. It
  tells the trainer-side patches in every Ray process that DAS is on and how; the vLLM engines
  do not read it: :func:`~.engines.create_vllm_engines` hands them the config as an engine
  argument (``additional_config["das"]``).
* ``OPENRLHF_DAS_INTEGRATION``: :class:`IntegrationSettings` as JSON (where the history actor
  records, whether prompts are pinned to engines, ...).

``openrlhf_das.cli.train`` sets both in the driver and in ``ray.init(runtime_env={"env_vars":
...})``, so the driver and every Ray worker see them. With
neither set, every patch of this package is a no-op (stock OpenRLHF). This module imports
neither Ray, vLLM nor OpenRLHF (it runs in every worker's setup hook).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ...config import DASConfig, DASConfigError

DAS_CONFIG_ENV = "OPENRLHF_DAS_CONFIG"
"""The DAS config of a job's Ray processes (the package's only definition; engines get theirs
through ``additional_config``)."""
INTEGRATION_ENV = "OPENRLHF_DAS_INTEGRATION"
HISTORY_ACTOR_NAME = "openrlhf_das_history"


@dataclass(frozen=True)
class IntegrationSettings:
    """Integration knobs (``--das.<name>`` on the command line; not part of DASConfig).

    * ``run_dir``: the history actor's run directory (step records, history checkpoints);
      default ``<--ckpt.path>/das``, so ``--ckpt.load_enable`` resumes the history too.
    * ``sticky``: send every prompt of a problem to engine ``engine_for_problem(id, n)``
      (each engine then holds only its problems' history); False keeps OpenRLHF's
      least-loaded assignment and ships every engine the whole history.
    * ``snapshot_every``: checkpoint the history every K steps.
    * ``history_cpus``: Ray CPUs reserved by the history actor.
    * ``history_actor_name``: Ray name of the history actor (trainer processes look it up).
    * ``partial_rollout``: asynchronous partial rollouts (:mod:`.partial`): a step ends when
      ``--rollout.batch_size`` prompt groups are done out of ``--rollout.vllm_generate_batch_size``
      in flight; unfinished groups continue into the next step, cut and resumed at every weight
      sync with per-token weight versions. Needs OpenRLHF's ``--train.async_enable
      --train.partial_rollout_enable``.
    * ``partial_max_staleness``: a group may be carried over at most this many steps (so its
      oldest tokens are at most this many weight versions behind); then the step waits for it.
    """

    run_dir: str = "./ckpt/checkpoints_ppo_ray/das"
    sticky: bool = True
    snapshot_every: int = 5
    history_cpus: float = 1.0
    history_actor_name: str = HISTORY_ACTOR_NAME
    partial_rollout: bool = False
    partial_max_staleness: int = 2

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "IntegrationSettings":
        unknown = sorted(set(data) - set(cls.keys()))
        if unknown:
            raise DASConfigError(f"invalid DAS integration setting: {', '.join(unknown)}: unknown key")
        out = cls(**dict(data))
        problems = []
        if not isinstance(out.run_dir, str) or not out.run_dir:
            problems.append(f"run_dir: must be a non-empty path (got {out.run_dir!r})")
        if not isinstance(out.sticky, bool):
            problems.append(f"sticky: must be true or false (got {out.sticky!r})")
        if isinstance(out.snapshot_every, bool) or not isinstance(out.snapshot_every, int) or out.snapshot_every < 1:
            problems.append(f"snapshot_every: must be an int >= 1 (got {out.snapshot_every!r})")
        if isinstance(out.history_cpus, bool) or not isinstance(out.history_cpus, (int, float)) or out.history_cpus < 0:
            problems.append(f"history_cpus: must be a number >= 0 (got {out.history_cpus!r})")
        if not isinstance(out.history_actor_name, str) or not out.history_actor_name:
            problems.append(f"history_actor_name: must be a non-empty string (got {out.history_actor_name!r})")
        if not isinstance(out.partial_rollout, bool):
            problems.append(f"partial_rollout: must be true or false (got {out.partial_rollout!r})")
        if (isinstance(out.partial_max_staleness, bool) or not isinstance(out.partial_max_staleness, int)
                or out.partial_max_staleness < 1):
            problems.append(f"partial_max_staleness: must be an int >= 1 (got {out.partial_max_staleness!r})")
        if problems:
            raise DASConfigError("invalid DAS integration setting: " + "; ".join(problems))
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def das_env(config: DASConfig, settings: IntegrationSettings) -> dict[str, str]:
    """The environment variables that turn DAS on in a process (and its children)."""
    return {DAS_CONFIG_ENV: config.to_json(), INTEGRATION_ENV: settings.to_json()}


def export(config: DASConfig, settings: IntegrationSettings) -> dict[str, str]:
    """Set :func:`das_env` in ``os.environ``; returns what was set."""
    env = das_env(config, settings)
    os.environ.update(env)
    return env


def clear() -> None:
    """Remove the DAS variables from ``os.environ`` (this process goes back to stock)."""
    os.environ.pop(DAS_CONFIG_ENV, None)
    os.environ.pop(INTEGRATION_ENV, None)


def current() -> tuple[DASConfig, IntegrationSettings] | None:
    """The DAS config and integration settings of this process, or None when DAS is off.

    DAS is on when ``OPENRLHF_DAS_CONFIG`` is set; the integration settings default when only
    the config is set. A malformed value raises :class:`DASConfigError` (a job must not silently
    run without DAS).
    """
    raw = os.environ.get(DAS_CONFIG_ENV)
    if not raw:
        return None
    raw_integ = os.environ.get(INTEGRATION_ENV) or "{}"
    key = (raw, raw_integ)
    cached = _cache.get(key)
    if cached is None:
        try:
            cached = (DASConfig.from_dict(json.loads(raw)), IntegrationSettings.from_dict(json.loads(raw_integ)))
        except json.JSONDecodeError as exc:
            raise DASConfigError(f"{DAS_CONFIG_ENV}/{INTEGRATION_ENV} is not valid JSON: {exc}") from exc
        _cache.clear()
        _cache[key] = cached
    return cached


_cache: dict[tuple[str, str], tuple[DASConfig, IntegrationSettings]] = {}
