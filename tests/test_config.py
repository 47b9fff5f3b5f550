"""The config system: includes, presets, overrides, and errors that name key and file."""

import dataclasses
from typing import Literal, Optional

import pytest

from msm_jax.config import ConfigError, config_hash, load_config, to_dict
from msm_jax.models.config import ModelConfig
from msm_jax.sharding import MeshConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Optim:
    lr: float = 1e-3
    schedule: Literal["cosine", "linear", "constant"] = "cosine"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Root:
    name: str
    model: ModelConfig
    mesh: MeshConfig = MeshConfig()
    optim: Optim = Optim()
    steps: int = 10
    tags: tuple[str, ...] = ()
    note: Optional[str] = None


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_preset_include_and_overrides_compose(tmp_path):
    write(tmp_path, "base.yaml", "steps: 5\noptim: {lr: 0.1}\n")
    exp = write(tmp_path, "exp.yaml", "include: base.yaml\nname: x\nmodel: tiny-llama\noptim: {schedule: linear}\n")
    cfg = load_config(Root, exp, ["model.num_layers=3", "optim.lr=2e-4", "tags=[a, b]"])
    assert cfg.steps == 5 and cfg.optim.lr == pytest.approx(2e-4) and cfg.optim.schedule == "linear"
    assert cfg.model.family == "llama" and cfg.model.num_layers == 3
    assert cfg.tags == ("a", "b")


def test_unknown_key_names_path_file_and_suggestion(tmp_path):
    exp = write(tmp_path, "exp.yaml", "name: x\nmodel: tiny-llama\noptim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: optim\.lrr: unknown key \(did you mean 'lr'\?\)"):
        load_config(Root, exp)


def test_wrong_type_in_included_file_names_that_file(tmp_path):
    write(tmp_path, "base.yaml", "steps: many\n")
    exp = write(tmp_path, "exp.yaml", "include: base.yaml\nname: x\nmodel: tiny-llama\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: steps: expected an integer, got 'many'"):
        load_config(Root, exp)


def test_missing_required_and_bad_override(tmp_path):
    exp = write(tmp_path, "exp.yaml", "model: tiny-llama\n")
    with pytest.raises(ConfigError, match=r"name: required key is missing"):
        load_config(Root, exp)
    exp2 = write(tmp_path, "exp2.yaml", "name: x\nmodel: tiny-llama\n")
    with pytest.raises(ConfigError, match=r"command line: optim\.schedule: expected one of"):
        load_config(Root, exp2, ["optim.schedule=cosin"])
    with pytest.raises(ConfigError, match=r"must look like key.sub=value"):
        load_config(Root, exp2, ["steps"])


def test_validate_errors_carry_path(tmp_path):
    exp = write(tmp_path, "exp.yaml", "name: x\nmodel: {include: models/tiny-llama.yaml, num_kv_heads: 3}\n")
    with pytest.raises(ConfigError, match=r"model: num_heads .* multiple of num_kv_heads"):
        load_config(Root, exp)


def test_unknown_preset_and_hash_stability(tmp_path):
    exp = write(tmp_path, "exp.yaml", "name: x\nmodel: no-such-model\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: model: unknown preset 'no-such-model' \(available in configs/models/: .*tiny-llama"):
        load_config(Root, exp)
    a = load_config(Root, write(tmp_path, "a.yaml", "name: x\nmodel: tiny-llama\n"))
    b = load_config(Root, write(tmp_path, "b.yaml", "model: tiny-llama\nname: x\n"))
    c = load_config(Root, write(tmp_path, "c.yaml", "model: tiny-llama\nname: y\n"))
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert to_dict(a)["model"]["family"] == "llama"


@pytest.mark.parametrize("name", ["llama3.1-8b", "qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-32b", "qwen3-0.6b",
                                  "qwen3-8b", "qwen3-32b", "tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def test_every_shipped_model_preset_loads(name, tmp_path):
    cfg = load_config(Root, write(tmp_path, "e.yaml", f"name: x\nmodel: {name}\n"))
    assert cfg.model.num_params() > 0
