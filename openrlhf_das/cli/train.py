"""``openrlhf-das-train`` / ``python -m openrlhf_das.cli.train``: OpenRLHF PPO/GRPO with DAS.

Usage: every ``python -m openrlhf.cli.train_ppo_ray`` flag, unchanged, plus::

    --das [on|off]              turn DAS on (a bare --das means on); absent or off: stock OpenRLHF
    --das.config PATH           DAS config YAML (default: built-in defaults = configs/das/default.yaml)
    --das.<key> VALUE           override one DASConfig knob, dotted (--das.window 3,
                                --das.budgets.long.tokens 8, --das.gate.mode off); VALUE is
                                JSON when it parses as JSON (3, 0.5, true, null, [1,2]), else text
    --das.run_dir DIR           history/acceptance run directory (default <--ckpt.path>/das)
    --das.sticky true|false     pin each problem to one engine (default true)
    --das.snapshot_every K      checkpoint the history every K steps (default 5)
    --das.history_cpus N        Ray CPUs of the history actor (default 1)
    --das.partial_rollout true  asynchronous partial rollouts (needs --train.async_enable
                                --train.partial_rollout_enable and --rollout.vllm_generate_batch_size
                                > --rollout.batch_size; docs/partial-rollouts.md)
    --das.partial_max_staleness K  carry an unfinished group over at most K steps (default 2)
    --das.length_buckets [E,..] report buckets' upper edges (default: four buckets over
                                0..--rollout.max_new_tokens when it is given)
    --das.help                  print this and exit
    --rollout-only              OpenRLHF's generation/reward/step loop without the DeepSpeed update
                                (CPU machines, rollout timing); DAS on or off. Needs
                                --reward.remote_url; Ray gets fake GPUs for the engines on CPU

``--das=VALUE`` / ``--das.<key>=VALUE`` forms work too. Every ``--das*`` token is removed before
OpenRLHF parses the rest. The DAS config is validated **before** anything heavy is imported or
Ray starts: an unknown key or a bad value exits with status 2 and names the key. So does a vLLM
or OpenRLHF outside the tested versions (:data:`openrlhf_das.versions.TESTED`) when ``--das`` is
on (both) or ``--rollout-only`` is given (OpenRLHF): the message names the installed and the tested
versions (``OPENRLHF_DAS_ALLOW_UNTESTED=1`` goes on anyway).

* DAS off: the arguments OpenRLHF receives are exactly the user's (minus ``--das*`` tokens, if
  any) and ``openrlhf.cli.train_ppo_ray`` runs as ``__main__`` in this process, untouched. The
  only addition is the flash-attn shim where flash-attn is not installed (both arms need it).
* DAS on: the config and settings are exported (``OPENRLHF_DAS_CONFIG``,
  ``OPENRLHF_DAS_INTEGRATION``), OpenRLHF is patched here, and Ray is started with OpenRLHF's own
  ``env_vars`` plus those two and ``worker_process_setup_hook`` =
  ``openrlhf_das.integrations.openrlhf.patches.apply`` (so every Ray worker is patched), then
  ``openrlhf.cli.train_ppo_ray`` runs as ``__main__`` (its ``train()`` reuses that Ray).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from .. import switches, versions
from ..config import DASConfig, DASConfigError
from ..integrations.openrlhf.settings import IntegrationSettings

PROG = "openrlhf-das-train"
_STRING_KEYS = {"run_dir", "history_actor_name"}
DEFAULT_CKPT_PATH = "./ckpt/checkpoints_ppo_ray"  # OpenRLHF's --ckpt.path default

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """Malformed --das* arguments."""


@dataclass
class DASArgs:
    """The ``--das*`` part of a command line, and the rest (for OpenRLHF)."""

    enabled: bool | None = None  # None: no --das flag at all
    config_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # DASConfig dotted keys
    integration: dict[str, Any] = field(default_factory=dict)  # IntegrationSettings keys
    help: bool = False
    rollout_only: bool = False
    openrlhf_argv: list[str] = field(default_factory=list)

    @property
    def any_das_option(self) -> bool:
        return self.config_path is not None or bool(self.overrides) or bool(self.integration)


def _value(key: str, text: str) -> Any:
    if key in _STRING_KEYS:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def split_argv(argv: Sequence[str]) -> DASArgs:
    """Separate ``--das*`` tokens from OpenRLHF's (whose order and spelling are kept)."""
    out = DASArgs()
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--das" or tok.startswith("--das="):
            if "=" in tok:
                word = tok.split("=", 1)[1].lower()
            elif i + 1 < len(tokens) and switches.switch(tokens[i + 1]) is not None:
                i += 1
                word = tokens[i].lower()
            else:
                word = "on"
            if switches.switch(word) is None:
                raise UsageError(f"--das takes on/off (got {word!r})")
            out.enabled = switches.switch(word)
        elif tok == "--rollout-only":
            out.rollout_only = True
        elif tok.startswith("--das."):
            body = tok[len("--das."):]
            if "=" in body:
                key, text = body.split("=", 1)
            elif body == "help":
                out.help = True
                i += 1
                continue
            else:
                key = body
                if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                    raise UsageError(f"--das.{key} needs a value")
                i += 1
                text = tokens[i]
            if not key or any(not part for part in key.split(".")):
                raise UsageError(f"malformed DAS option {tok!r}")
            if key == "config":
                out.config_path = text
            elif key in IntegrationSettings.keys():
                out.integration[key] = _value(key, text)
            else:
                out.overrides[key] = _value(key, text)
        else:
            out.openrlhf_argv.append(tok)
        i += 1
    if out.any_das_option and out.enabled is None:
        raise UsageError("--das.* options given without --das: add --das (or --das off to run stock OpenRLHF)")
    return out


def flag_value(openrlhf_argv: Sequence[str], flag: str, default: str | None = None) -> str | None:
    """The last value of ``flag`` (``--flag V`` or ``--flag=V``) in an OpenRLHF command line."""
    value = default
    for i, tok in enumerate(openrlhf_argv):
        if tok == flag and i + 1 < len(openrlhf_argv):
            value = openrlhf_argv[i + 1]
        elif tok.startswith(flag + "="):
            value = tok.split("=", 1)[1]
    return value


def ckpt_path(openrlhf_argv: Sequence[str]) -> str:
    """The ``--ckpt.path`` value of an OpenRLHF command line (OpenRLHF's default if absent)."""
    return flag_value(openrlhf_argv, "--ckpt.path", DEFAULT_CKPT_PATH) or DEFAULT_CKPT_PATH


def run_length_buckets(config: DASConfig, openrlhf_argv: Sequence[str]) -> DASConfig:
    """``config`` with report buckets over the run's own length range
    (:func:`openrlhf_das.reports.length_buckets.edges_for` of ``--rollout.max_new_tokens``),
    unless the run chose its edges or gives no ``--rollout.max_new_tokens``."""
    from ..reports.length_buckets import chosen, edges_for

    text = flag_value(openrlhf_argv, "--rollout.max_new_tokens")
    if chosen(config.length_buckets) or text is None or not text.isdigit() or int(text) < 1:
        return config
    return config.with_overrides({"length_buckets": list(edges_for(int(text)))})


def resolve(das: DASArgs) -> tuple[DASConfig, IntegrationSettings]:
    """Validated DAS config and integration settings (raises :class:`DASConfigError`)."""
    if das.config_path is not None:
        config = DASConfig.from_yaml(das.config_path, das.overrides)
    else:
        config = DASConfig().with_overrides(das.overrides) if das.overrides else DASConfig()
    config = run_length_buckets(config, das.openrlhf_argv)
    if config.max_budget < 1:
        raise DASConfigError("every DAS draft budget is 0: nothing would be drafted (raise budgets.long.tokens)")
    integration = dict(das.integration)
    integration.setdefault("run_dir", os.path.join(ckpt_path(das.openrlhf_argv), "das"))
    if isinstance(integration["run_dir"], str):
        integration["run_dir"] = os.path.abspath(integration["run_dir"])  # Ray workers' cwd differs
    return config, IntegrationSettings.from_dict(integration)


def ray_runtime_env(config: DASConfig, integ: IntegrationSettings) -> dict[str, Any]:
    """``ray.init(runtime_env=...)``: OpenRLHF's env_vars (same defaults as its ``train()``),
    the DAS variables, and the patching setup hook."""
    from ..integrations.openrlhf import SETUP_HOOK
    from ..integrations.openrlhf.settings import das_env

    env_vars = {
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "true"),
        "NCCL_DEBUG": os.environ.get("NCCL_DEBUG", "WARN"),
        "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": os.environ.get("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", "1"),
        **das_env(config, integ),
    }
    return {"env_vars": env_vars, "worker_process_setup_hook": SETUP_HOOK}


def start_ray(config: DASConfig, integ: IntegrationSettings, **init_kwargs: Any) -> None:
    """``ray.init`` with :func:`ray_runtime_env` (before OpenRLHF's ``train()``, which then
    skips its own ``ray.init``)."""
    import ray

    if ray.is_initialized():
        logger.warning("Ray is already initialized here: DAS cannot install its worker setup hook; "
                       "workers started without it run unpatched OpenRLHF code")
        return
    ray.init(runtime_env=ray_runtime_env(config, integ), **init_kwargs)


def version_problems(das: DASArgs) -> list[str]:
    """Untested components this command line depends on (empty: go on): vLLM and OpenRLHF
    with ``--das``, OpenRLHF with ``--rollout-only``; stock OpenRLHF runs need neither."""
    needs = ["vllm", "openrlhf"] if das.enabled else ["openrlhf"] if das.rollout_only else []
    return versions.check_at_start(needs)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        das = split_argv(argv)
        if das.help:
            print(__doc__)
            return 0
        if das.enabled or das.any_das_option:  # validate even when off: typos must not pass silently
            config, integ = resolve(das)
    except (UsageError, DASConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    problems = version_problems(das)
    if problems:
        print(f"{PROG}: error: " + "; ".join(problems)
              + f" (set {versions.ALLOW_UNTESTED_ENV}=1 to try anyway)", file=sys.stderr)
        return 2

    from ..integrations.openrlhf import openrlhf_cli, settings
    from ..integrations.openrlhf.flash_attn_shim import ensure_flash_attn

    ensure_flash_attn()
    if not das.enabled:
        settings.clear()  # a stray OPENRLHF_DAS_CONFIG must not turn DAS on in the baseline
        if das.rollout_only:
            return _rollout_only(das.openrlhf_argv, None, None)
        return openrlhf_cli.run(das.openrlhf_argv)

    from ..integrations.openrlhf import patches

    if integ.partial_rollout:
        from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

        from ..integrations.openrlhf.partial import check_openrlhf_args
        from ..integrations.openrlhf.samples import partial_rollout_supported

        problems = check_openrlhf_args(openrlhf_cli.parse_args(das.openrlhf_argv))
        why = partial_rollout_supported(SamplesGenerator)
        if why is not None:
            problems.append(f"--das.partial_rollout: {why}")
        if problems:
            print(f"{PROG}: error: " + "; ".join(problems), file=sys.stderr)
            return 2
    settings.export(config, integ)
    patches.apply()
    if das.rollout_only:
        return _rollout_only(das.openrlhf_argv, config, integ)
    start_ray(config, integ)
    return openrlhf_cli.run(das.openrlhf_argv)


def _rollout_only(openrlhf_argv: list[str], config: DASConfig | None, integ: IntegrationSettings | None) -> int:
    """``--rollout-only``: :mod:`openrlhf_das.integrations.openrlhf.rollout_only` on a Ray cluster
    with ``num_gpus`` resources for the engines (DAS setup hook when ``config`` is given)."""
    from ..integrations.openrlhf import rollout_only

    def starter(num_gpus: int) -> None:
        # a new local cluster: fake GPU resources cannot be added to an existing one
        if config is not None and integ is not None:
            start_ray(config, integ, address="local", num_gpus=num_gpus)
        else:
            import ray

            if not ray.is_initialized():
                ray.init(address="local", num_gpus=num_gpus)

    return rollout_only.main(openrlhf_argv, starter)


if __name__ == "__main__":
    sys.exit(main())
