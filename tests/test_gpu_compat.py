"""benchmarks/gpu/gpu_compat.py (GPU bring-up shims, outside the package): the decisions (pure
functions), the patches on the real OpenRLHF / vLLM / DeepSpeed modules of this venv (in fresh
interpreters, so the test process keeps unpatched classes), and the sitecustomize that carries
them into new processes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_DIR = ROOT / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU_DIR))

import gpu_compat as gc  # noqa: E402


def _nvcc_dir(tmp_path: Path) -> Path:
    bindir = tmp_path / "cuda" / "bin"
    bindir.mkdir(parents=True)
    nvcc = bindir / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    return tmp_path / "cuda"


def test_find_nvcc(tmp_path: Path) -> None:
    home = _nvcc_dir(tmp_path)
    assert gc.find_nvcc({"CUDA_HOME": str(home)}) == str(home / "bin" / "nvcc")
    assert gc.find_nvcc({"CUDA_PATH": str(home)}) == str(home / "bin" / "nvcc")
    assert gc.find_nvcc({"CUDA_HOME": str(tmp_path / "nothing")}) is None  # CUDA_HOME wins, as in torch
    assert gc.find_nvcc({"PATH": str(home / "bin")}) == str(home / "bin" / "nvcc")


def test_torch_adam_switch(tmp_path: Path) -> None:
    home = _nvcc_dir(tmp_path)
    assert gc.torch_adam_enabled({gc.TORCH_ADAM_ENV: "1"}) is True
    assert gc.torch_adam_enabled({gc.TORCH_ADAM_ENV: "true", "CUDA_HOME": str(home)}) is True
    assert gc.torch_adam_enabled({gc.TORCH_ADAM_ENV: "0"}) is False
    assert gc.torch_adam_enabled({gc.TORCH_ADAM_ENV: "auto", "CUDA_HOME": str(home)}) is False  # nvcc: FusedAdam builds
    assert gc.torch_adam_enabled({"CUDA_HOME": str(tmp_path / "none")}) is True  # unset = auto, no nvcc
    with pytest.raises(ValueError, match=gc.TORCH_ADAM_ENV):
        gc.torch_adam_enabled({gc.TORCH_ADAM_ENV: "maybe"})


def _ds(opt_type: str = "AdamW", offload: str = "none", **params) -> dict:
    return {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": offload, "pin_memory": True}},
            "optimizer": {"type": opt_type, "params": {"lr": 1e-6, **params}}}


def test_with_torch_adam() -> None:
    cfg = _ds()
    out = gc.with_torch_adam(cfg)
    assert out["optimizer"]["params"] == {"lr": 1e-6, "torch_adam": True}
    assert "torch_adam" not in cfg["optimizer"]["params"]  # the input is not modified
    assert gc.with_torch_adam(_ds("Adam"))["optimizer"]["params"]["torch_adam"] is True
    for unchanged in (_ds("Muon"), _ds(offload="cpu"), _ds(offload="nvme"), _ds(torch_adam=False), {"bf16": {}}):
        assert gc.with_torch_adam(unchanged) is unchanged


def test_engine_args_overrides_parse() -> None:
    assert gc.engine_args_overrides({}) == {}
    assert gc.engine_args_overrides({gc.ENGINE_ARGS_ENV: ' {"async_scheduling": false} '}) == {"async_scheduling": False}
    with pytest.raises(ValueError, match="JSON object"):
        gc.engine_args_overrides({gc.ENGINE_ARGS_ENV: "[1]"})


@dataclasses.dataclass
class _Compilation:  # stands in for vllm.config.CompilationConfig
    mode: int | None = None
    cudagraph_mode: str | None = None
    max_cudagraph_capture_size: int | None = None


@dataclasses.dataclass
class _EngineArgs:  # stands in for vllm.engine.arg_utils.EngineArgs
    model: str = "m"
    enforce_eager: bool = False
    async_scheduling: bool | None = None
    seed: int = 0
    compilation_config: _Compilation = dataclasses.field(default_factory=_Compilation)


OVERRIDES = {"compilation_config": {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}, "async_scheduling": False,
             "no_such_field": 1}


def test_engine_args_override_only_defaults() -> None:
    ea = _EngineArgs(compilation_config=_Compilation(max_cudagraph_capture_size=64))
    assert gc.apply_engine_args_overrides(ea, OVERRIDES) == ["compilation_config", "async_scheduling"]
    assert ea.compilation_config == _Compilation(0, "FULL_DECODE_ONLY", 64)  # the caller's field kept
    assert ea.async_scheduling is False

    ea = _EngineArgs(async_scheduling=True, compilation_config=_Compilation(mode=3))
    assert gc.apply_engine_args_overrides(ea, OVERRIDES) == []  # the caller chose both
    assert ea.compilation_config == _Compilation(mode=3) and ea.async_scheduling is True

    ea = _EngineArgs(enforce_eager=True)
    assert gc.apply_engine_args_overrides(ea, OVERRIDES) == ["async_scheduling"]  # no graphs: no compilation
    assert ea.compilation_config == _Compilation()


def test_run_next_sitecustomize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, other = tmp_path / "ours", tmp_path / "other"
    ours.mkdir(), other.mkdir()
    (ours / "sitecustomize.py").write_text("raise AssertionError('not this one')\n")
    (other / "sitecustomize.py").write_text("import os\nos.environ['GPU_COMPAT_CHAINED'] = '1'\n")
    monkeypatch.setattr(sys, "path", [str(ours), str(tmp_path / "missing"), str(other)])
    monkeypatch.delenv("GPU_COMPAT_CHAINED", raising=False)
    gc.run_next_sitecustomize(str(ours))
    assert os.environ.get("GPU_COMPAT_CHAINED") == "1"


def test_apply_propagates_the_site_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # keep this process as it was: no target patched here, the finder removed afterwards
    monkeypatch.setattr(gc, "TARGETS", {})
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if f is not gc._HOOK])
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    st = gc.apply()
    assert os.environ["PYTHONPATH"].split(os.pathsep) == ["/somewhere", gc.SITE_DIR]
    assert st["hook_installed"] and st["propagated"]
    gc.apply()  # idempotent
    assert os.environ["PYTHONPATH"].split(os.pathsep) == ["/somewhere", gc.SITE_DIR]
    assert sum(f is gc._HOOK for f in sys.meta_path) == 1
    assert (Path(gc.SITE_DIR) / "sitecustomize.py").is_file()


# ---------------------------------------------------------------------- real modules, new processes
def _run(code: str, extra_env: dict[str, str], timeout: int = 300) -> dict:
    """Run ``code`` in a fresh interpreter whose PYTHONPATH holds the sitecustomize folder (as
    every process of a run has it); the code prints one JSON line last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENRLHF_DAS_")}
    env.update(extra_env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(GPU_DIR), gc.SITE_DIR])
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sitecustomize_patches_openrlhf_ds_config() -> None:
    pytest.importorskip("openrlhf")
    got = _run("""
        import json, sys
        assert "_openrlhf_das_gpu_compat" in sys.modules  # loaded at interpreter start
        from openrlhf_das.integrations.openrlhf.flash_attn_shim import ensure_flash_attn
        ensure_flash_attn()
        import openrlhf.utils.deepspeed.deepspeed as dd
        from openrlhf.utils.deepspeed import deepspeed_utils as du
        opt = {"type": "AdamW", "params": {"lr": 1e-6}}
        on = dd.get_train_ds_config(False, adam_offload=False, optim_config=dict(opt))
        off = dd.get_train_ds_config(False, adam_offload=True, optim_config=dict(opt))
        print(json.dumps([on["optimizer"], off["optimizer"], du.get_train_ds_config is dd.get_train_ds_config]))
    """, {gc.TORCH_ADAM_ENV: "1"})
    assert got[0] == {"type": "AdamW", "params": {"lr": 1e-6, "torch_adam": True}}
    assert got[1] == {"type": "AdamW", "params": {"lr": 1e-6}}  # --ds.adam_offload: DeepSpeedCPUAdam
    assert got[2] is True


def test_sitecustomize_off_changes_nothing() -> None:
    pytest.importorskip("openrlhf")
    got = _run("""
        import json
        from openrlhf_das.integrations.openrlhf.flash_attn_shim import ensure_flash_attn
        ensure_flash_attn()
        import openrlhf.utils.deepspeed.deepspeed as dd
        print(json.dumps(dd.get_train_ds_config(False, adam_offload=False, optim_config={"type": "AdamW", "params": {}})["optimizer"]))
    """, {gc.TORCH_ADAM_ENV: "0"})
    assert got == {"type": "AdamW", "params": {}}


def test_sitecustomize_patches_vllm_engine_args() -> None:
    pytest.importorskip("vllm")
    got = _run("""
        import json
        from vllm.engine.arg_utils import AsyncEngineArgs
        a = AsyncEngineArgs(model="x")
        b = AsyncEngineArgs(model="x", compilation_config={"mode": 3})
        c = AsyncEngineArgs(model="x", enforce_eager=True)
        cc = a.compilation_config
        print(json.dumps([int(cc.mode), cc.cudagraph_mode.name, a.async_scheduling, int(b.compilation_config.mode),
                          b.compilation_config.cudagraph_mode, c.compilation_config.mode, c.async_scheduling]))
    """, {gc.ENGINE_ARGS_ENV: json.dumps({"compilation_config": {"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"},
                                          "async_scheduling": False})})
    assert got == [0, "FULL_DECODE_ONLY", False, 3, None, None, False]


def test_deepspeed_uses_torch_adamw_with_the_flag() -> None:
    """DeepSpeed 0.19.6 itself: ZeRO-2 with the patched config wraps torch.optim.AdamW (no
    FusedAdam op to build) and takes a step (CPU accelerator, gloo, one process)."""
    pytest.importorskip("deepspeed")
    got = _run("""
        import json, os, sys
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), RANK="0",
                          WORLD_SIZE="1", LOCAL_RANK="0")
        import torch, deepspeed, deepspeed.comm.torch
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # CPU-only comm op: a C++ JIT build
        from gpu_compat import with_torch_adam
        cfg = {"train_micro_batch_size_per_gpu": 2, "train_batch_size": 2, "gradient_clipping": 1.0,
               "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "none"}}, "bf16": {"enabled": False},
               "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0}}}
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 4)
        before = m.weight.detach().clone()
        eng, opt, _, _ = deepspeed.initialize(model=m, model_parameters=m.parameters(), config=with_torch_adam(cfg))
        loss = eng(torch.randn(2, 4)).pow(2).mean()
        eng.backward(loss)
        eng.step()
        b = eng.basic_optimizer
        print(json.dumps([type(b).__module__ + "." + type(b).__name__, type(opt).__name__,
                          bool((m.weight.detach() != before).any())]))
    """, {}, timeout=240)
    assert got == ["torch.optim.adamw.AdamW", "DeepSpeedZeroOptimizer", True]
