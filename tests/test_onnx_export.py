"""ONNX export (minivlm_hf.export): ONNX Runtime must reproduce PyTorch to 1e-4 on tiny random models."""

import json

import pytest
import torch

from fusion_utils import tiny_fusion_config
from tee_utils import tiny_tee_config

from minivlm_hf.cli import main
from minivlm_hf.export import DEFAULT_OPSET, OnnxTEE, OnnxVQA, export_onnx, export_vqa
from minivlm_hf.export.onnx import MANIFEST, vqa_example_inputs
from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForImageTextRetrieval, MiniVLMForQuestionAnswering

ATOL = 1e-4

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def vqa_model():
    torch.manual_seed(0)
    config = tiny_fusion_config(vision_config=tiny_tee_config(), tag_token_ids={i: [10 + i, 20 + i] for i in range(4)})
    return MiniVLMForQuestionAnswering(config).eval()


@pytest.fixture(scope="module")
def exported(vqa_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    result = export_onnx(vqa_model, out)
    return out, result


def test_export_writes_graphs_manifest_and_passes_verification(exported):
    out, result = exported
    assert result.passed, result.verification
    assert result.opset == DEFAULT_OPSET
    assert {"tee_dense", "tee_box_head", "fusion_vqa"} <= set(result.files)
    for path in result.files.values():
        assert (out / path.split("/")[-1]).is_file()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["opset"] == DEFAULT_OPSET and manifest["passed"]
    assert any("NMS" in line for line in manifest["python_side"])
    assert all(d["max_abs"] <= ATOL for d in result.verification.values())


def test_onnx_tee_matches_pytorch_on_new_inputs(vqa_model, exported):
    out, _ = exported
    tee = vqa_model.minivlm.vision_model
    runner = OnnxTEE.from_dir(out)  # built from the saved TEE config on the meta device: no PyTorch weights
    gen = torch.Generator().manual_seed(7)
    # A batch of 2 of a size never exported (256 x 128), the second image padded.
    pixels = torch.randn(2, 3, 256, 128, generator=gen)
    mask = torch.ones(2, 256, 128, dtype=torch.long)
    mask[1, 200:, :] = 0
    with torch.inference_mode():
        ref = tee(pixel_values=pixels, pixel_mask=mask)
    got = runner(pixels, mask)
    assert torch.equal(got["region_mask"], ref.region_mask)
    assert torch.equal(got["region_labels"], ref.region_labels)
    for name in ("region_features", "region_boxes", "region_scores", "logits", "attribute_logits"):
        assert (got[name] - getattr(ref, name)).abs().max() <= ATOL, name


def test_onnx_vqa_matches_pytorch_with_dynamic_shapes(vqa_model, exported):
    out, _ = exported
    runner = OnnxVQA(out / "fusion_vqa.onnx")
    for seed, shape in enumerate([dict(batch=1, text=5, tags=2, regions=3), dict(batch=4, text=12, tags=6, regions=5)]):
        inputs = vqa_example_inputs(vqa_model, seed=seed, **shape)
        with torch.inference_mode():
            ref = vqa_model(**inputs).logits
        assert (runner(**inputs) - ref).abs().max() <= ATOL


@pytest.mark.parametrize("opset", [14, 20])
def test_other_opsets(vqa_model, tmp_path, opset):
    path = export_vqa(vqa_model, tmp_path, opset=opset)
    inputs = vqa_example_inputs(vqa_model, seed=3)
    with torch.inference_mode():
        ref = vqa_model(**inputs).logits
    assert (OnnxVQA(path)(**inputs) - ref).abs().max() <= ATOL


def test_unsupported_models_and_opsets(tmp_path, vqa_model):
    retrieval = MiniVLMForImageTextRetrieval(tiny_fusion_config()).eval()  # no TEE, no VQA or captioning head
    with pytest.raises(ValueError, match="nothing to export"):
        export_onnx(retrieval, tmp_path)
    with pytest.raises(ValueError, match="opset"):
        export_vqa(vqa_model, tmp_path, opset=9)


def test_export_cli(vqa_model, tmp_path, capsys):
    model_dir, out = tmp_path / "model", tmp_path / "onnx"
    vqa_model.save_pretrained(model_dir)
    assert main(["export", "onnx", "--model", str(model_dir), "--output", str(out), "--opset", "17"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["max_abs_diff"] <= ATOL
    assert (out / "tee_dense.onnx").is_file() and (out / "fusion_vqa.onnx").is_file()
    assert main(["export", "onnx", "--model", str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert main(["export", "onnx", "--model", str(model_dir), "--output", str(out), "--opset", "8"]) == 2
