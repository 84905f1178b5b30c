"""``openrlhf_das.cli.train``: --das flag parsing, validation before Ray, the argv OpenRLHF gets,
and the train scripts' flags against OpenRLHF 0.11.2's real parser. No Ray cluster is started
(``ray.init`` is replaced by a failing stub where a test must prove it is never reached)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_das.cli import train as cli
from openrlhf_das.config import DASConfig
from openrlhf_das.integrations.openrlhf import openrlhf_cli, settings

REPO = Path(__file__).resolve().parents[1]
USER_ARGV = [
    "--actor.model_name_or_path", "/models/m",
    "--vllm.num_engines", "2",
    "--rollout.n_samples_per_prompt", "8",
    "--algo.advantage.estimator", "group_norm",
    "--ckpt.path=/ck",
    "--data.apply_chat_template",
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # main() exports the DAS variables into os.environ; monkeypatch restores them afterwards
    for key in (settings.DAS_CONFIG_ENV, settings.INTEGRATION_ENV, "PYTHONPATH"):
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)


@pytest.fixture
def captured(monkeypatch):
    """Stand-ins for runpy (records what OpenRLHF would run) and Ray (must not start)."""
    calls: dict = {"runpy": [], "ray": []}

    def fake_run_module(name, run_name=None, alter_sys=False, **kw):
        calls["runpy"].append({"module": name, "run_name": run_name, "argv": list(sys.argv[1:])})
        return {}

    def fake_start_ray(config, integ, **kw):
        calls["ray"].append(cli.ray_runtime_env(config, integ))

    def no_ray(*a, **k):
        raise AssertionError("ray.init must not be called")

    import ray

    monkeypatch.setattr(runpy, "run_module", fake_run_module)
    monkeypatch.setattr(cli, "start_ray", fake_start_ray)
    monkeypatch.setattr(ray, "init", no_ray)
    return calls


def test_split_argv_forms():
    das = cli.split_argv(["--x", "1", "--das", "--das.window", "3", "--das.gate.mode=off", "--das.config", "c.yaml",
                          "--das.sticky", "false", "--das.run_dir", "123", "--y"])
    assert das.enabled is True and das.config_path == "c.yaml"
    assert das.overrides == {"window": 3, "gate.mode": "off"}
    assert das.integration == {"sticky": False, "run_dir": "123"}  # run_dir stays text
    assert das.openrlhf_argv == ["--x", "1", "--y"]
    assert cli.split_argv(["--das", "off"]).enabled is False
    assert cli.split_argv(["--das=on"]).enabled is True
    assert cli.split_argv(["--das", "--vllm.num_engines", "2"]).openrlhf_argv == ["--vllm.num_engines", "2"]
    with pytest.raises(cli.UsageError, match="needs a value"):
        cli.split_argv(["--das", "--das.window"])
    with pytest.raises(cli.UsageError, match="without --das"):
        cli.split_argv(["--das.window", "3"])


def test_unknown_das_key_fails_before_ray(captured, capsys):
    rc = cli.main(["--das", "--das.windw", "3", *USER_ARGV])
    assert rc == 2
    err = capsys.readouterr().err
    assert "windw: unknown key" in err
    assert captured["runpy"] == [] and captured["ray"] == []


def test_bad_value_and_bad_config_file(captured, capsys, tmp_path):
    assert cli.main(["--das", "--das.gate.mode", "sometimes"]) == 2
    assert "gate.mode" in capsys.readouterr().err
    assert cli.main(["--das", "--das.config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main(["--das", "--das.snapshot_every", "0"]) == 2
    assert "snapshot_every" in capsys.readouterr().err
    # off, but a typo in a DAS option is still an error (no silent baseline with ignored options)
    assert cli.main(["--das", "off", "--das.windw", "3"]) == 2
    assert captured["runpy"] == [] and captured["ray"] == []


def test_das_absent_argv_is_exactly_the_users(captured, monkeypatch):
    monkeypatch.setenv(settings.DAS_CONFIG_ENV, DASConfig().to_json())  # stray value: must be dropped
    assert cli.main(list(USER_ARGV)) == 0
    [call] = captured["runpy"]
    assert call == {"module": "openrlhf.cli.train_ppo_ray", "run_name": "__main__", "argv": USER_ARGV}
    assert settings.DAS_CONFIG_ENV not in os.environ and captured["ray"] == []


def test_das_off_argv_is_the_users_without_das_tokens(captured):
    argv = USER_ARGV[:4] + ["--das", "off", "--das.window", "3"] + USER_ARGV[4:]
    assert cli.main(argv) == 0
    [call] = captured["runpy"]
    assert call["argv"] == USER_ARGV and call["run_name"] == "__main__"
    assert captured["ray"] == []


def test_das_on_exports_config_and_starts_ray_with_hook(captured, tmp_path):
    cfg = REPO / "configs" / "das" / "math.yaml"
    assert cli.main(["--das", "--das.config", str(cfg), "--das.window", "3", *USER_ARGV]) == 0
    [call] = captured["runpy"]
    assert call["argv"] == USER_ARGV and call["run_name"] == "__main__"
    [runtime_env] = captured["ray"]
    assert runtime_env["worker_process_setup_hook"] == "openrlhf_das.integrations.openrlhf.patches.apply"
    env = runtime_env["env_vars"]
    assert {"TOKENIZERS_PARALLELISM", "NCCL_DEBUG", "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"} <= set(env)
    config, integ = settings.current()
    assert config == DASConfig.from_yaml(cfg, {"window": 3}) and env[settings.DAS_CONFIG_ENV] == config.to_json()
    assert integ.run_dir == "/ck/das" and integ.sticky is True  # default: <--ckpt.path>/das


def _script_argv(script: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run(["bash", str(REPO / "train_scripts" / script)], env={**os.environ, "DRY_RUN": "1", **env},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    line = [ln for ln in out.splitlines() if "openrlhf_das.cli.train" in ln][-1]
    argv = line.split()
    return argv[argv.index("openrlhf_das.cli.train") + 1:]


@pytest.mark.parametrize("script", ["math_grpo_das.sh", "code_grpo_das.sh", "gpu_smoke_grpo.sh"])
def test_train_scripts_flags_parse_with_openrlhf(script, tmp_path):
    env = {"MODEL": "/models/m", "DATA_DIR": str(tmp_path), "SAVE_DIR": str(tmp_path / "out")}
    for das in ("1", "0"):
        argv = _script_argv(script, {**env, "DAS": das})
        parsed = cli.split_argv(argv)
        assert parsed.enabled is (das == "1")
        cli.resolve(parsed)  # the DAS part validates
        args = openrlhf_cli.parse_args(parsed.openrlhf_argv)  # OpenRLHF 0.11.2's own parser
        assert args.actor.model_name_or_path == "/models/m"
        assert args.vllm.num_engines >= 1 and args.rollout.n_samples_per_prompt > 1
        assert args.reward.remote_url and args.reward.remote_url.endswith("_reward_func.py")
        assert args.data.input_key == "prompt" and args.data.label_key == "label"
        assert args.ds.attn_implementation in ("sdpa", "flash_attention_2")


def test_partial_rollout_needs_openrlhf_async_partial_mode(monkeypatch, capsys):
    """--das.partial_rollout is checked against OpenRLHF's real parser before Ray starts."""
    ran, rays = [], []
    monkeypatch.setattr(openrlhf_cli, "run", lambda argv: ran.append(list(argv)) or 0)
    monkeypatch.setattr(cli, "start_ray", lambda config, integ, **kw: rays.append(integ))
    base = ["--das", "--das.partial_rollout", "true", *USER_ARGV]
    assert cli.main(base) == 2
    err = capsys.readouterr().err
    assert "--train.async_enable --train.partial_rollout_enable" in err and "vllm_generate_batch_size" in err
    ok = [*base, "--train.async_enable", "--train.partial_rollout_enable",
          "--rollout.batch_size", "4", "--rollout.vllm_generate_batch_size", "8"]
    assert cli.main([*ok[:-1], "4"]) == 2  # in flight must exceed the step's batch
    assert "must exceed" in capsys.readouterr().err
    assert cli.main([*ok, "--das.partial_max_staleness", "0"]) == 2
    assert "partial_max_staleness" in capsys.readouterr().err
    assert ran == [] and rays == []
    assert cli.main([*ok, "--das.partial_max_staleness", "3"]) == 0
    [integ] = rays
    assert integ.partial_rollout is True and integ.partial_max_staleness == 3
    assert ran == [ok[3:]]  # OpenRLHF gets the user's flags, --das* removed
