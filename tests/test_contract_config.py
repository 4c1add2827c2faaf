"""The config contract (transformers' `ConfigTester` invariants) for `MiniVLMConfig` (with and without its TEE
sub-config) and `TEEConfig`."""

import json

import pytest
from transformers import AutoConfig

import minivlm_hf  # noqa: F401  (registers the Auto classes)
from contract_testers import FusionModelTester, TEEModelTester
from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig
from minivlm_hf.modeling.configuration_minivlm_tee import TEEConfig

CONFIGS = {
    "MiniVLMConfig": lambda: FusionModelTester().get_config(),
    "MiniVLMConfig+vision": lambda: FusionModelTester().get_config(vision=True),
    "TEEConfig": lambda: TEEModelTester().get_config(),
}
CASES = pytest.mark.parametrize("make", list(CONFIGS.values()), ids=list(CONFIGS))


def _comparable(config):
    data = config.to_dict()
    data.pop("transformers_version", None)
    data.pop("_name_or_path", None)
    return data


@pytest.mark.smoke
@CASES
def test_dict_and_json_round_trip(make, tmp_path):
    config = make()
    cls = type(config)
    assert _comparable(cls.from_dict(config.to_dict())) == _comparable(config)
    assert json.loads(config.to_json_string()) == json.loads(cls.from_dict(config.to_dict()).to_json_string())
    config.to_json_file(tmp_path / "config.json")
    assert _comparable(cls.from_json_file(tmp_path / "config.json")) == _comparable(config)


@pytest.mark.smoke
@CASES
def test_save_load_and_auto_config(make, tmp_path):
    config = make()
    config.save_pretrained(tmp_path)
    for loaded in (type(config).from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert type(loaded) is type(config)
        assert _comparable(loaded) == _comparable(config)


@CASES
def test_num_labels_and_id2label(make):
    config = make()
    cls = type(config)
    five = cls.from_dict({**config.to_dict(), "id2label": None, "label2id": None, "num_labels": 5})
    assert five.num_labels == 5 and len(five.id2label) == 5 and len(five.label2id) == 5
    five.num_labels = 3
    assert len(five.id2label) == 3 and five.num_labels == 3


@CASES
def test_common_properties_and_kwargs(make):
    config = make()
    cls = type(config)
    if cls is MiniVLMConfig:
        for name in ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers"):
            assert getattr(config, name) > 0
    common = {"return_dict": False, "output_hidden_states": True, "output_attentions": True, "dtype": "float16",
              "architectures": ["X"], "problem_type": "regression"}
    built = cls.from_dict({**config.to_dict(), **common})
    for name, value in common.items():
        got = getattr(built, name)
        if name == "dtype":
            got = str(got).removeprefix("torch.")
        assert got == value, name
    assert built.use_return_dict is False


def test_sub_config_round_trip(tmp_path):
    config = FusionModelTester().get_config(vision=True)
    assert "vision_config" in MiniVLMConfig.sub_configs
    assert isinstance(config.vision_config, TEEConfig)
    data = config.to_dict()
    assert isinstance(data["vision_config"], dict) and data["vision_config"]["model_type"] == TEEConfig.model_type
    rebuilt = MiniVLMConfig.from_dict(data)
    assert isinstance(rebuilt.vision_config, TEEConfig)
    assert _comparable(rebuilt.vision_config) == _comparable(config.vision_config)
    config.save_pretrained(tmp_path)
    assert _comparable(MiniVLMConfig.from_pretrained(tmp_path).vision_config) == _comparable(config.vision_config)
    # without a vision config there is none after the round trip either
    assert MiniVLMConfig.from_dict(FusionModelTester().get_config().to_dict()).vision_config is None


@CASES
def test_invalid_value_is_a_clear_error(make):
    config = make()
    if type(config) is TEEConfig:
        pytest.skip("TEEConfig validation is covered by tests/test_tee_model.py")
    with pytest.raises(ValueError, match="num_attention_heads"):
        MiniVLMConfig.from_dict({**config.to_dict(), "num_attention_heads": 5})
