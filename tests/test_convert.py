"""Converters: OSCAR checkpoints and BERT-layout text weights into MiniVLM."""

import pytest
import torch
from transformers import BertConfig, BertModel

from fusion_utils import region_inputs, text_inputs, tiny_fusion_config
from minivlm_hf.convert import init_fusion_from_bert, load_oscar_checkpoint
from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForQuestionAnswering


def _fake_oscar_vqa_checkpoint(config, num_answers):
    """A checkpoint with OSCAR's key names, built from a MiniVLM model by renaming back."""
    torch.manual_seed(3)
    source = MiniVLMForQuestionAnswering(tiny_fusion_config(id2label={i: str(i) for i in range(num_answers)}))
    oscar = {}
    for key, value in source.state_dict().items():
        key = key.replace("minivlm.region_embeddings.projection.", "bert.img_embedding.")
        key = key.replace("minivlm.region_embeddings.LayerNorm.", "bert.LayerNorm.")
        key = key.replace("minivlm.", "bert.")
        oscar["module." + key] = value.clone()
    oscar["bert.embeddings.position_ids"] = torch.arange(512)[None]
    return source, oscar


def test_oscar_vqa_checkpoint_loads_and_gives_the_same_outputs(tmp_path):
    source, oscar = _fake_oscar_vqa_checkpoint(tiny_fusion_config(), 3)
    torch.save(oscar, tmp_path / "pytorch_model.bin")
    target = MiniVLMForQuestionAnswering(tiny_fusion_config())
    report = load_oscar_checkpoint(target, tmp_path)
    assert report == {"missing": [], "unexpected": []}
    source.eval(), target.eval()
    inputs = {**text_inputs(), **region_inputs()}
    with torch.no_grad():
        torch.testing.assert_close(source(**inputs).logits, target(**inputs).logits)


def test_oscar_shape_mismatch_names_the_tensor(tmp_path):
    _, oscar = _fake_oscar_vqa_checkpoint(tiny_fusion_config(), 3)
    target = MiniVLMForQuestionAnswering(tiny_fusion_config(region_feature_size=8))
    with pytest.raises(ValueError, match="region_embeddings.projection.weight"):
        load_oscar_checkpoint(target, oscar)
    with pytest.raises(FileNotFoundError, match="OSCAR checkpoint not found"):
        load_oscar_checkpoint(target, tmp_path / "missing")
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read OSCAR checkpoint"):
        load_oscar_checkpoint(target, tmp_path)


def test_bert_init_from_a_local_folder_reports_missing_and_repeat_layers(tmp_path):
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    bert.save_pretrained(tmp_path)
    model = MiniVLMForQuestionAnswering(tiny_fusion_config())  # 2 layers
    report = init_fusion_from_bert(model, tmp_path, layer_map="repeat")
    assert report.source_layers == 1
    for i in (0, 1):  # both target layers come from source layer 0
        torch.testing.assert_close(
            model.minivlm.encoder.layer[i].attention.self.query.weight, bert.encoder.layer[0].attention.self.query.weight
        )
    assert not any(k.startswith("minivlm.encoder") for k in report.missing)
    assert "classifier.0.weight" in report.missing
    first = MiniVLMForQuestionAnswering(tiny_fusion_config())
    report = init_fusion_from_bert(first, tmp_path)
    assert any(k.startswith("minivlm.encoder.layer.1.") for k in report.missing)
    with pytest.raises(ValueError, match="layer_map"):
        init_fusion_from_bert(first, tmp_path, layer_map="middle")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        init_fusion_from_bert(first, tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)
    wrong = MiniVLMForQuestionAnswering(tiny_fusion_config(hidden_size=16, intermediate_size=32))
    with pytest.raises(ValueError, match="hidden size"):
        init_fusion_from_bert(wrong, tmp_path)
