"""DASConfig: one test per error kind, dotted overrides and the shipped YAML presets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from openrlhf_das.config import DASConfig, DASConfigError, LengthClass

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "das"


def _err(data: dict[str, Any]) -> str:
    with pytest.raises(DASConfigError) as info:
        DASConfig.from_dict(data)
    return str(info.value)


def test_defaults_are_valid() -> None:
    c = DASConfig()
    assert DASConfig.from_dict({}) == c
    assert c.max_budget == 4 and c.window == 5 and c.unknown_class is LengthClass.MEDIUM
    assert DASConfig.from_dict(json.loads(c.to_json())) == c  # JSON round trip


@pytest.mark.parametrize("value, expected", [("auto", None), (None, None), (True, True), (False, False)])
def test_pad_drafts_auto_true_false(value: Any, expected: bool | None) -> None:
    assert DASConfig().pad_drafts is None  # auto: the engine decides from its CUDA-graph mode
    assert DASConfig.from_dict({"pad_drafts": value}).pad_drafts is expected
    assert DASConfig().with_overrides({"pad_drafts": value}).pad_drafts is expected


def test_unknown_key_top_level() -> None:
    assert "windw: unknown key" in _err({"windw": 5})


def test_unknown_key_nested() -> None:
    assert "budgets.long.tokenz: unknown key" in _err({"budgets": {"long": {"tokenz": 4, "factor": 2.0}}})
    assert "gate.maxrunning: unknown key" in _err({"gate": {"maxrunning": 3}})


@pytest.mark.parametrize(
    "data, key",
    [
        ({"window": "5"}, "window"),  # no string -> int coercion
        ({"window": 5.5}, "window"),
        ({"use_siblings": "yes"}, "use_siblings"),
        ({"gate": {"mode": "sometimes"}}, "gate.mode"),
        ({"unknown_class": "huge"}, "unknown_class"),
        ({"pad_drafts": "sometimes"}, "pad_drafts"),
        ({"pad_drafts": 1}, "pad_drafts"),
    ],
)
def test_wrong_type(data: dict[str, Any], key: str) -> None:
    assert f"{key}:" in _err(data)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"window": 0}, "window"),
        ({"max_depth": 1}, "max_depth"),
        ({"min_token_prob": 0.0}, "min_token_prob"),
        ({"long_ratio": 1.5}, "long_ratio"),
        ({"budgets": {"long": {"tokens": -1, "factor": 2.0}}}, "budgets.long.tokens"),
        ({"gate": {"max_running": 0}}, "gate.max_running"),
        ({"step_quota_tokens": 0}, "step_quota_tokens"),
    ],
)
def test_out_of_range(data: dict[str, Any], key: str) -> None:
    assert f"{key}:" in _err(data)


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"long_ratio": 0.7, "medium_ratio": 0.4}, "long_ratio + medium_ratio"),
        ({"promote_medium_tokens": 6000, "promote_long_tokens": 5000}, "promote_long_tokens must be >="),
        ({"length_buckets": [2000, 1000]}, "length_buckets"),
        ({"length_buckets": []}, "length_buckets"),
        ({"max_depth": 4, "budgets": {"long": {"tokens": 4, "factor": 2.0}}}, "smaller than max_depth"),
        ({"max_depth": 8, "length_policy": False, "flat_budget": {"tokens": 8, "factor": 1.0}}, "smaller than max_depth"),
        ({"max_depth": 32, "pattern_tokens": 33}, "pattern_tokens must be <= max_depth"),
    ],
)
def test_cross_field(data: dict[str, Any], fragment: str) -> None:
    assert fragment in _err(data)


def test_cost_table_required_and_must_exist(tmp_path: Path) -> None:
    assert "cost_table is required" in _err({"gate": {"mode": "cost_model"}})
    missing = tmp_path / "nope.json"
    assert "file not found" in _err({"gate": {"mode": "cost_model", "cost_table": str(missing)}})
    missing.write_text("{}")
    assert DASConfig.from_dict({"gate": {"mode": "cost_model", "cost_table": str(missing)}}).gate.mode == "cost_model"


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(DASConfigError, match="not found"):
        DASConfig.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_non_mapping_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DASConfigError, match="must be a mapping"):
        DASConfig.from_yaml(path)


def test_yaml_bare_off_is_the_off_gate(tmp_path: Path) -> None:
    path = tmp_path / "off.yaml"
    path.write_text("gate:\n  mode: off\n")  # YAML 1.1 reads a bare off as False
    assert DASConfig.from_yaml(path).gate.mode == "off"
    assert "gate.mode:" in _err({"gate": {"mode": True}})  # but not any boolean


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert DASConfig.from_yaml(path) == DASConfig()


def test_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("window: 7\ngate:\n  mode: max_running\nbudgets:\n  long: {tokens: 4, factor: 2.0}\n")
    c = DASConfig.from_yaml(path, {"gate.mode": "off", "budgets.long.tokens": 8, "window": 9})
    assert c.gate.mode == "off" and c.budgets.long.tokens == 8 and c.budgets.long.factor == 2.0
    assert c.window == 9 and c.max_budget == 8

    d = DASConfig().with_overrides({"budgets.medium.factor": 1.5, "length_policy": False})
    assert d.budgets.medium.factor == 1.5 and d.length_policy is False
    assert DASConfig().window == 5  # frozen original untouched

    with pytest.raises(DASConfigError, match="'window' is not a section"):
        DASConfig().with_overrides({"window.x": 1})
    with pytest.raises(DASConfigError, match="gate.max_running"):
        DASConfig().with_overrides({"gate.max_running": -3})  # overrides are validated too
    with pytest.raises(DASConfigError, match="unknown key"):
        DASConfig().with_overrides({"gate.nope": 1})


def _keys(model_fields: dict, data: dict, prefix: str = "") -> list[str]:
    """Dotted knob names of ``model_fields`` missing from ``data`` (recursing into sections)."""
    missing = []
    for name, field in model_fields.items():
        if name not in data:
            missing.append(prefix + name)
        sub = getattr(field.annotation, "model_fields", None)
        if sub and isinstance(data.get(name), dict):
            missing += _keys(sub, data[name], f"{prefix}{name}.")
    return missing


def test_default_yaml_equals_defaults_and_lists_every_knob() -> None:
    path = PRESETS / "default.yaml"
    assert DASConfig.from_yaml(path) == DASConfig()
    assert _keys(DASConfig.model_fields, yaml.safe_load(path.read_text())) == []


def test_presets_load() -> None:
    math = DASConfig.from_yaml(PRESETS / "math.yaml")
    code = DASConfig.from_yaml(PRESETS / "code.yaml")
    default = DASConfig()
    # math: the authors' policy values, budgets from the replays of issue 21 (docs/configuration.md)
    for knob in ("window", "max_depth", "min_token_prob", "long_ratio", "medium_ratio", "gate"):
        assert getattr(math, knob) == getattr(default, knob), knob
    assert [(b.tokens, b.factor) for b in (math.budgets.short, math.budgets.medium, math.budgets.long)] == [
        (0, 1.0), (4, 1.0), (8, 2.0)]
    assert (math.promote_medium_tokens, math.promote_long_tokens) == (3000, 5000)
    assert math.length_buckets[-1] == 16000
    # code: shorter responses -> earlier promotion
    assert code.promote_medium_tokens < math.promote_medium_tokens
    assert code.promote_long_tokens < math.promote_long_tokens
    assert code.budgets == default.budgets  # the authors' budgets: no code trace has been replayed
