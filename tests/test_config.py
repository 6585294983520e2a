import json

import pytest

from fg_edge.formats.gate_config import FORMAT_VERSION, GateConfig
from fg_edge.errors import ConfigError


def test_roundtrip(tmp_path):
    cfg = GateConfig(granularity="paper", target_sparsity=0.3, adapter_rank=4, target_modules=["q_proj", "v_proj"])
    path = tmp_path / "g.json"
    cfg.save(path)
    data = json.loads(path.read_text())
    assert list(data) == sorted(data) and data["format_version"] == FORMAT_VERSION
    assert GateConfig.load(path) == cfg


@pytest.mark.parametrize("kwargs, needle", [
    (dict(target_sparsity=1.0), "target_sparsity"),
    (dict(target_sparsity=-0.1), "target_sparsity"),
    (dict(granularity="rows"), "granularity"),
    (dict(task="seq2seq"), "task"),
    (dict(adapter_rank=-1), "adapter_rank"),
    (dict(noise_std=float("nan")), "noise_std"),
    (dict(target_modules=["q"]), "target_modules"),          # structured + explicit modules
    (dict(granularity="paper", target_modules=[]), "target_modules"),
    (dict(format_version=FORMAT_VERSION + 1), "format_version"),
])
def test_invalid_values(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        GateConfig(**kwargs)


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        GateConfig.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        GateConfig.load(bad)
    bad.write_text(json.dumps({"granularity": "paper", "colour": "red"}))
    with pytest.raises(ConfigError, match="colour"):
        GateConfig.load(bad)


def test_version_1_configs_keep_their_meaning():
    """fg-edge 0.1 wrote format_version 1, whose adapters sat on the gated linears only."""
    old = GateConfig.from_dict({"format_version": 1, "adapter_rank": 8})
    assert old.adapter_modules == "gated" and old.format_version == 1
    assert GateConfig().adapter_modules == "all" and GateConfig().format_version == FORMAT_VERSION == 2
    with pytest.raises(ConfigError, match="adapter_modules"):
        GateConfig(adapter_modules="everywhere")


def test_gate_config_is_frozen_and_injection_leaves_it_alone():
    import dataclasses

    from fg_edge.gates.inject import inject_gates
    from fg_edge.testing import tiny_model

    cfg = GateConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.target_sparsity = 0.5
    inject_gates(tiny_model("bert"), cfg)
    assert cfg == GateConfig() and cfg.model_type is None
    assert dataclasses.replace(cfg, target_sparsity=0.5).target_sparsity == 0.5


@pytest.mark.parametrize("version, words", [("2", "positive integer"), (99, "newer than this fg-edge"),
                                             (0, "positive integer")])
def test_bad_format_version_names_the_file(tmp_path, version, words):
    path = tmp_path / "fg_edge_config.json"
    path.write_text(json.dumps({**GateConfig().to_dict(), "format_version": version}))
    with pytest.raises(ConfigError, match=words) as exc:
        GateConfig.load(path)
    assert str(path) in str(exc.value)
