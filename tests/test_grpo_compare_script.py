"""``benchmarks/gpu/grpo_compare.sh`` (the GPU GRPO comparison) in its dry-run mode: both arms
run the same OpenRLHF command apart from the DAS flags, and the knobs reach OpenRLHF's flags.
(The run itself needs a GPU and runs only on the GPU machine: docs/gpu.md.)"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "grpo_compare.sh"


def _dry_run(arm: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), arm], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DRY_RUN": "1", **env})


def _command(arm: str, **env: str) -> list[str]:
    proc = _dry_run(arm, **env)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("[grpo] ") and " -m openrlhf_das.cli.train " in x)
    return shlex.split(line[len("[grpo] "):])


def _flags(cmd: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    i = cmd.index("openrlhf_das.cli.train") + 1
    while i < len(cmd):
        key = cmd[i]
        value = cmd[i + 1] if i + 1 < len(cmd) and not cmd[i + 1].startswith("--") else None
        out[key] = value
        i += 1 if value is None else 2
    return out


def test_arms_differ_only_by_das_flags() -> None:
    nodas, das = _flags(_command("nodas")), _flags(_command("das"))
    extra = {k: v for k, v in das.items() if k not in nodas}
    assert set(extra) == {"--das", "--das.config", "--das.pad_drafts", "--das.gate.mode", "--das.length_policy",
                          "--das.flat_budget.tokens", "--das.run_dir", "--das.length_buckets"}
    assert das["--das.length_buckets"] == "[128,256,384]"  # report buckets over 0..max_new_tokens (512)
    shared = {k: v for k, v in das.items() if k in nodas}
    # the per-arm paths differ (work dir, run name); every other OpenRLHF flag is identical
    per_arm = {"--ckpt.output_dir", "--ckpt.path", "--logger.tensorboard_dir", "--logger.wandb.run_name"}
    assert {k: v for k, v in shared.items() if k not in per_arm} == {k: v for k, v in nodas.items() if k not in per_arm}
    assert set(nodas) - set(das) == set()
    assert nodas["--rollout.temperature"] == "1.0" and nodas["--rollout.max_new_tokens"] == "512"
    assert int(nodas["--train.batch_size"]) == 4 * 8 and nodas["--train.seed"] == "42"


def test_engines_knob_sets_engine_and_actor_gpus() -> None:
    flags = _flags(_command("das", ENGINES="2", PROMPTS="16", EPISODES="3"))
    assert flags["--vllm.num_engines"] == flags["--actor.num_gpus_per_node"] == flags["--ref.num_gpus_per_node"] == "2"
    assert "--train.colocate_all" in flags and flags["--data.max_samples"] == "16"
    assert flags["--train.num_episodes"] == "3"


@pytest.mark.parametrize("bad", ["0", "x", ""])
def test_bad_engines_value_is_refused(bad: str) -> None:
    proc = _dry_run("das", ENGINES=bad)
    if bad == "":  # empty = unset: the default (1)
        assert proc.returncode == 0
    else:
        assert proc.returncode == 2 and "ENGINES must be a positive integer" in proc.stderr


def _engine_args(arm: str, **env: str) -> dict:
    proc = _dry_run(arm, **env)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("[grpo] engine args: "))
    return json.loads(line[len("[grpo] engine args: "):])


def test_async_knob_keeps_async_scheduling_in_both_arms_and_adds_one_das_flag() -> None:
    default = {"OPENRLHF_DAS_VLLM_ENGINE_ARGS": ""}  # empty = unset: the script's default
    sync_args, async_args = _engine_args("nodas", **default), _engine_args("nodas", ASYNC="1", **default)
    assert sync_args["async_scheduling"] is False and "async_scheduling" not in async_args
    assert _engine_args("das", ASYNC="1", **default) == async_args
    assert sync_args["compilation_config"] == async_args["compilation_config"]
    das_sync, das_async = _flags(_command("das")), _flags(_command("das", ASYNC="1"))
    assert {k: v for k, v in das_async.items() if k not in das_sync} == {"--das.async_scheduling": "true"}
    assert {k: v for k, v in das_async.items() if k in das_sync} == das_sync
    assert _flags(_command("nodas", ASYNC="1")) == _flags(_command("nodas"))


def test_bad_async_value_is_refused() -> None:
    proc = _dry_run("das", ASYNC="yes")
    assert proc.returncode == 2 and "ASYNC must be 0 or 1" in proc.stderr


def test_gpu_drafter_arm_runs_das_gpu_under_async_scheduling_in_both_arms() -> None:
    default = {"OPENRLHF_DAS_VLLM_ENGINE_ARGS": ""}
    assert "async_scheduling" not in _engine_args("nodas", DRAFTER="gpu", **default)  # ASYNC=1 implied
    assert _engine_args("das", DRAFTER="gpu", **default) == _engine_args("nodas", DRAFTER="gpu", **default)
    das, nodas = _flags(_command("das", DRAFTER="gpu")), _flags(_command("nodas", DRAFTER="gpu"))
    assert {k: v for k, v in das.items() if k not in nodas} == {
        "--das": None, "--das.config": das["--das.config"], "--das.async_scheduling": "true",
        "--das.device_drafter.enabled": "true", "--das.run_dir": das["--das.run_dir"],
        "--das.length_buckets": "[128,256,384]"}
    assert nodas == _flags(_command("nodas"))
    proc = _dry_run("das", DRAFTER="gpu", ASYNC="0")
    assert proc.returncode == 2 and "DRAFTER=gpu needs ASYNC=1" in proc.stderr
    assert _dry_run("das", DRAFTER="cpu").returncode == 2


def test_partial_arms_use_openrlhfs_async_trainer_and_their_own_folders() -> None:
    das, nodas = _flags(_command("das", PARTIAL="1")), _flags(_command("nodas", PARTIAL="1"))
    for flags in (das, nodas):
        assert "--train.async_enable" in flags and "--train.partial_rollout_enable" in flags
        assert int(flags["--rollout.vllm_generate_batch_size"]) > int(flags["--rollout.batch_size"])
    assert das["--das.partial_rollout"] == "true" and "--das.partial_rollout" not in nodas
    assert das["--ckpt.path"].endswith("/das_partial/ckpt") and nodas["--ckpt.path"].endswith("/nodas_partial/ckpt")
    assert das["--das.run_dir"].endswith("/das_partial/ckpt/das")
    assert _dry_run("das", PARTIAL="2").returncode == 2


def test_issue22_preset_and_its_commands_pass_the_cli_checks() -> None:
    """PRESET=issue22: the 1.5B model, <= 2048 new tokens, async scheduling in both arms, the GPU
    drafter, >= 50 steps; each arm's command line passes openrlhf-das-train's own checks (DAS
    config, OpenRLHF's parser, the partial-rollout requirements) short of starting Ray."""
    from openrlhf_das.cli import train as cli
    from openrlhf_das.integrations.openrlhf import openrlhf_cli
    from openrlhf_das.integrations.openrlhf.partial import check_openrlhf_args

    default = {"OPENRLHF_DAS_VLLM_ENGINE_ARGS": ""}
    for partial in ("0", "1"):
        for arm in ("nodas", "das"):
            cmd = _command(arm, PRESET="issue22", PARTIAL=partial)
            flags = _flags(cmd)
            assert flags["--actor.model_name_or_path"].endswith("/qwen2.5-coder-1.5b-instruct")
            assert int(flags["--rollout.max_new_tokens"]) <= 2048 and flags["--rollout.temperature"] == "1.0"
            steps = -(-int(flags["--data.max_samples"]) // int(flags["--rollout.batch_size"])) * int(
                flags["--train.num_episodes"])
            assert steps >= 50
            assert "async_scheduling" not in _engine_args(arm, PRESET="issue22", **default)
            das = cli.split_argv(cmd[cmd.index("openrlhf_das.cli.train") + 1:])
            args = openrlhf_cli.parse_args(das.openrlhf_argv)
            assert args.rollout.max_new_tokens == 2048 and args.ckpt.save_steps == 5
            if arm == "das":
                config, integ = cli.resolve(das)
                assert config.async_scheduling and config.device_drafter.enabled
                assert integ.partial_rollout is (partial == "1")
                assert config.length_buckets == (512, 1024, 1536)  # report buckets over 0..2048
            else:
                assert das.enabled is None
            assert (check_openrlhf_args(args) == []) is (partial == "1")
    # any knob still wins over the preset
    assert _flags(_command("das", PRESET="issue22", MAX_NEW="1024"))["--rollout.max_new_tokens"] == "1024"
    assert _dry_run("das", PRESET="nope").returncode == 2


def test_stock_engine_defaults_gives_the_stock_arm_vllms_own_engine() -> None:
    """STOCK_ENGINE=defaults (nodas only): no benchmark engine arguments (vLLM's compile and
    graph defaults), the runner left to vLLM, its own arm folder; the OpenRLHF flags unchanged."""
    default = {"OPENRLHF_DAS_VLLM_ENGINE_ARGS": ""}
    assert _engine_args("nodas", STOCK_ENGINE="defaults", ASYNC="1", **default) == {}
    assert _engine_args("nodas", STOCK_ENGINE="defaults", **default) == {"async_scheduling": False}
    proc = _dry_run("nodas", STOCK_ENGINE="defaults", VLLM_USE_V2_MODEL_RUNNER="0", **default)
    assert proc.returncode == 0 and "VLLM_USE_V2_MODEL_RUNNER=<unset: vLLM picks>" in proc.stdout
    assert "VLLM_USE_V2_MODEL_RUNNER=0" in _dry_run("nodas", VLLM_USE_V2_MODEL_RUNNER="0", **default).stdout
    stock, bench = _flags(_command("nodas", STOCK_ENGINE="defaults")), _flags(_command("nodas"))
    assert stock["--ckpt.path"].endswith("/nodas_defaults/ckpt")
    assert {k: v for k, v in stock.items() if "nodas" not in (v or "")} == \
        {k: v for k, v in bench.items() if "nodas" not in (v or "")}
    refused = _dry_run("das", STOCK_ENGINE="defaults")
    assert refused.returncode == 2 and "nodas arm" in refused.stderr
    assert _dry_run("nodas", STOCK_ENGINE="v2").returncode == 2
