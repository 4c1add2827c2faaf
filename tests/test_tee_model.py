"""Tests of the TEE region detector (TEEConfig, TEEModel, TEEForObjectDetection). Tiny configs, 64-128 px images."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tee_utils import (
    REPO_ROOT,
    model_labels,
    padded_pair_batch,
    register_tee_auto_classes,
    synthetic_scene,
    tiny_image_processor,
    tiny_tee_config,
)

from minivlm_hf.modeling.configuration_minivlm_tee import TEEConfig
from minivlm_hf.modeling.image_processing_minivlm import MiniVLMImageProcessor
from minivlm_hf.modeling.modeling_minivlm_tee import (
    TEEForObjectDetection,
    TEEModel,
    TEEModelOutput,
    TEEObjectDetectionOutput,
)
from minivlm_hf.modeling.modeling_minivlm_tee_layers import _top_k_per_image, batched_nms_top_k


@pytest.fixture(autouse=True)
def _single_thread():
    """The tensors here are tiny: one intra-op thread is as fast, and far faster when the CPUs are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


REGION_FIELDS = (
    "logits",
    "pred_boxes",
    "attribute_logits",
    "region_features",
    "region_boxes",
    "region_scores",
    "region_labels",
    "region_mask",
)


def _model(cls=TEEForObjectDetection, seed=0, **overrides):
    torch.manual_seed(seed)
    return cls(tiny_tee_config(**overrides)).eval()


def _batch(seed=0):
    return padded_pair_batch(seed)


def _check_region_fields(outputs, config, batch_size):
    k = outputs.logits.shape[1]
    assert 0 <= k <= config.num_regions
    expected = {
        "logits": ((batch_size, k, config.num_labels + 1), torch.float32),
        "pred_boxes": ((batch_size, k, 4), torch.float32),
        "attribute_logits": ((batch_size, k, config.num_attributes), torch.float32),
        "region_features": ((batch_size, k, config.box_head_dim), torch.float32),
        "region_boxes": ((batch_size, k, 4), torch.float32),
        "region_scores": ((batch_size, k), torch.float32),
        "region_labels": ((batch_size, k), torch.int64),
        "region_mask": ((batch_size, k), torch.bool),
    }
    for name, (shape, dtype) in expected.items():
        value = getattr(outputs, name)
        assert tuple(value.shape) == shape, (name, tuple(value.shape), shape)
        assert value.dtype == dtype, (name, value.dtype)
    mask = outputs.region_mask
    boxes = outputs.region_boxes[mask]
    assert torch.all(boxes >= 0) and torch.all(boxes <= 1)
    assert torch.all(boxes[:, 2] >= boxes[:, 0]) and torch.all(boxes[:, 3] >= boxes[:, 1])
    cx = (outputs.region_boxes[..., 0] + outputs.region_boxes[..., 2]) / 2
    w = outputs.region_boxes[..., 2] - outputs.region_boxes[..., 0]
    torch.testing.assert_close(outputs.pred_boxes[..., 0], cx)
    torch.testing.assert_close(outputs.pred_boxes[..., 2], w)
    # The score is the best non-background probability, the label its class.
    probs = outputs.logits.softmax(-1)[..., :-1]
    torch.testing.assert_close(outputs.region_scores[mask], probs.max(-1).values[mask])
    assert torch.equal(outputs.region_labels[mask], probs.argmax(-1)[mask])
    assert torch.all(outputs.region_labels[mask] < config.num_labels)
    # Scores sorted inside each image; padding rows are zeros and come last.
    for b in range(batch_size):
        n = int(mask[b].sum())
        assert bool(mask[b, :n].all()) and not bool(mask[b, n:].any())
        scores = outputs.region_scores[b, :n]
        assert torch.all(scores[:-1] >= scores[1:])
        assert torch.count_nonzero(outputs.region_features[b, n:]) == 0
    return k


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


def test_config_defaults_are_the_paper_settings():
    config = TEEConfig()
    assert config.model_type == "minivlm_tee"
    assert config.backbone == "efficientnet_b0" and config.pretrained_backbone is False
    assert (config.bifpn_channels, config.bifpn_num_cells, config.min_level, config.max_level) == (64, 3, 3, 7)
    assert config.anchor_sizes == [32, 64, 128, 256, 512] and config.anchor_aspect_ratios == [0.5, 1.0, 2.0]
    assert (config.roi_output_size, config.roi_sampling_ratio, config.roi_min_level, config.roi_max_level) == (4, 2, 3, 6)
    assert config.box_head_dim == 1024 == config.bifpn_channels * config.roi_output_size**2
    assert config.post_nms_top_k == 100 and config.num_regions == 50 and config.image_size == 512
    assert config.num_labels == 1594 and config.num_attributes == 524
    assert config.id2label[0] == "class_0" and config.attribute_id2label[523] == "attribute_523"
    assert TEEConfig(num_labels=7, num_attributes=2).num_labels == 7
    assert TEEConfig(num_labels=7, num_attributes=2).num_attributes == 2


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"backbone": "resnet50"}, "backbone"),
        ({"bifpn_channels": 0}, "bifpn_channels"),
        ({"box_head_dim": -5}, "box_head_dim"),
        ({"num_regions": 101}, "num_regions"),
        ({"anchor_sizes": [32, 64, 128]}, "anchor_sizes"),
        ({"anchor_sizes": [32, 64, -128, 256, 512]}, "anchor_sizes"),
        ({"anchor_aspect_ratios": []}, "anchor_aspect_ratios"),
        ({"proposal_nms_iou_threshold": 0.0}, "proposal_nms_iou_threshold"),
        ({"detection_nms_iou_threshold": 1.5}, "detection_nms_iou_threshold"),
        ({"rpn_fg_iou_threshold": 0.3, "rpn_bg_iou_threshold": 0.4}, "rpn_bg_iou_threshold"),
        ({"roi_max_level": 8}, "roi_max_level"),
        ({"roi_min_level": 2}, "roi_min_level"),
        ({"min_level": 2}, "min_level"),
        ({"max_level": 9, "anchor_sizes": [1, 2, 3, 4, 5, 6, 7]}, "max_level"),
        ({"id2label": {}}, "id2label"),
        ({"id2label": {0: "a", 2: "b"}}, "id2label"),
        ({"attribute_id2label": {}}, "attribute_id2label"),
        ({"score_threshold": 2.0}, "score_threshold"),
        ({"backbone_out_indices": [3, 4]}, "backbone_out_indices"),
        ({"roi_box_coder_weights": [1.0, 1.0]}, "roi_box_coder_weights"),
        ({"focal_gamma": -1.0}, "focal_gamma"),
        ({"num_attributes": 0}, "num_attributes"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        TEEConfig(**kwargs)


def test_config_roundtrip_and_base_config_key(tmp_path):
    config = tiny_tee_config()
    config.save_pretrained(tmp_path / "tee")
    reloaded = TEEConfig.from_pretrained(tmp_path / "tee")
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.id2label == config.id2label and reloaded.attribute_id2label == config.attribute_id2label
    # A composite config (like the MiniVLM fusion config) nests the TEE config under "vision_config".
    composite = tmp_path / "composite"
    composite.mkdir()
    (composite / "config.json").write_text(
        json.dumps({"model_type": "minivlm_composite_test", "vision_config": config.to_dict()})
    )
    nested = TEEConfig.from_pretrained(composite)
    assert nested.to_dict() == config.to_dict()


def test_model_refuses_wrong_backbone_strides():
    with pytest.raises(ValueError, match="backbone_out_indices"):
        TEEModel(tiny_tee_config(backbone_out_indices=[1, 2, 3]))


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------


def test_eval_outputs_batch_of_different_sizes():
    model = _model()
    pixel_values, pixel_mask = _batch()
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask, output_hidden_states=True)
    assert isinstance(outputs, TEEObjectDetectionOutput)
    assert outputs.loss is None and outputs.loss_dict is None
    k = _check_region_fields(outputs, model.config, 2)
    assert k == model.config.num_regions  # score_threshold 0: always num_regions regions when enough proposals
    # Feature maps P3..P7 of the input padded to a multiple of 128.
    assert [tuple(f.shape) for f in outputs.feature_maps] == [
        (2, 16, 128 // 2**level, 128 // 2**level) for level in range(3, 8)
    ]
    # Boxes of the 48x96 image are normalised by its own extent, not by the padded 64x96 canvas.
    boxes = outputs.region_boxes[1][outputs.region_mask[1]] * torch.tensor([96, 48, 96, 48])
    assert boxes[:, 3].max() <= 48 + 1e-4


def test_base_model_outputs_and_tuple_output():
    model = _model(TEEModel)
    pixel_values, pixel_mask = _batch()
    with torch.no_grad():
        outputs = model(pixel_values, pixel_mask)
        as_tuple = model(pixel_values, pixel_mask, return_dict=False)
    assert isinstance(outputs, TEEModelOutput)
    assert outputs.feature_maps is None
    _check_region_fields(outputs, model.config, 2)
    assert len(as_tuple) == len(REGION_FIELDS)
    for value, name in zip(as_tuple, REGION_FIELDS):
        assert torch.equal(value, getattr(outputs, name))


def test_batched_equals_single_image():
    """In eval mode an image gives the same regions alone as inside a padded batch."""
    model = _model()
    pixel_values, pixel_mask = _batch()
    with torch.no_grad():
        batched = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        single = model(pixel_values=pixel_values[1:, :, :48, :], pixel_mask=pixel_mask[1:, :48, :])
    n = int(single.region_mask[0].sum())
    assert n == int(batched.region_mask[1].sum())
    for name in ("region_features", "region_boxes", "region_scores", "logits"):
        torch.testing.assert_close(getattr(batched, name)[1, :n], getattr(single, name)[0, :n], rtol=1e-4, atol=1e-5)


def test_no_detections_gives_empty_regions():
    model = _model(score_threshold=1.0)
    pixel_values, pixel_mask = _batch()
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    assert _check_region_fields(outputs, model.config, 2) == 0
    assert outputs.region_features.shape == (2, 0, 32) and not outputs.region_mask.any()
    processor = MiniVLMImageProcessor()
    detections = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(64, 64), (48, 96)])
    assert [d["boxes"].shape for d in detections] == [(0, 4), (0, 4)]
    regions = processor.post_process_regions(outputs, id2label=model.config.id2label)
    assert [r["region_features"].shape for r in regions] == [(0, 32), (0, 32)] and regions[0]["tags"] == []


def test_one_image_without_regions_in_a_batch():
    """A flat image can lose all its proposals (tiny boxes) while its neighbour keeps regions."""
    model = _model(min_box_size=40.0)
    pixel_values, pixel_mask = _batch()
    pixel_values[1] = 0
    pixel_mask[1] = 0
    pixel_mask[1, :8, :8] = 1  # an 8x8 image: no box can reach 40 px
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    _check_region_fields(outputs, model.config, 2)
    assert outputs.region_mask[0].any() and not outputs.region_mask[1].any()


def test_invalid_inputs():
    model = _model()
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values=torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="pixel_mask"):
        model(pixel_values=torch.zeros(1, 3, 64, 64), pixel_mask=torch.ones(1, 32, 64))
    with pytest.raises(ValueError, match="class_labels"):
        model(pixel_values=torch.zeros(1, 3, 64, 64), labels=[{"class_labels": torch.tensor([9]), "boxes": torch.rand(1, 4)}])
    with pytest.raises(ValueError, match="NaN"):
        model(
            pixel_values=torch.zeros(1, 3, 64, 64),
            labels=[{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, float("nan"), 0.1, 0.1]])}],
        )
    with pytest.raises(ValueError, match="attribute_labels"):
        model(
            pixel_values=torch.zeros(1, 3, 64, 64),
            labels=[{"class_labels": torch.tensor([0]), "boxes": torch.rand(1, 4), "attribute_labels": torch.tensor([[7]])}],
        )
    with pytest.raises(ValueError, match="2 label dicts for a batch of 1"):
        model(pixel_values=torch.zeros(1, 3, 64, 64), labels=[{"class_labels": [], "boxes": []}] * 2)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def _scenes():
    scenes = [
        synthetic_scene([(4, 4, 28, 30, 0), (36, 30, 60, 60, 1)]),
        synthetic_scene([(10, 20, 50, 44, 2)]),
        synthetic_scene([(5, 35, 25, 60, 3), (30, 5, 58, 25, 0)]),
    ]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    pixel_values = torch.stack([(torch.from_numpy(img).permute(2, 0, 1) / 255.0 - mean) / std for img, _ in scenes])
    labels = [model_labels(annotation, 64, 64) for _, annotation in scenes]
    return pixel_values, labels


def test_train_mode_outputs_losses_and_empty_targets():
    model = _model().train()
    pixel_values, pixel_mask = _batch()
    labels = [
        {
            "class_labels": torch.tensor([1, 2]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]),
            "attribute_labels": torch.tensor([[0, -1], [1, 2]]),
        },
        {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},  # no objects
    ]
    outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
    _check_region_fields(outputs, model.config, 2)
    assert set(outputs.loss_dict) == {"loss_objectness", "loss_rpn_box", "loss_classifier", "loss_attribute", "loss_box_reg"}
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    assert all(torch.isfinite(v) for v in outputs.loss_dict.values())
    outputs.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.tee.predictor.attribute_logits.weight.grad.abs().sum() > 0

    # Only images without objects, multi-hot attribute form, and eval mode with labels.
    model.zero_grad()
    empty = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=empty)
    assert torch.isfinite(outputs.loss) and outputs.loss_dict["loss_box_reg"] == 0
    outputs.loss.backward()
    multi_hot = [dict(labels[0], attribute_labels=torch.tensor([[1.0, 0, 0], [0, 1, 1]])), labels[1]]
    model.eval()
    outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=multi_hot)
    assert torch.isfinite(outputs.loss)
    # A box without area (IoU undefined) is ignored rather than poisoning the matching.
    degenerate = [
        {
            "class_labels": torch.tensor([1, 3]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.0, 0.3]]),
            "attribute_labels": torch.tensor([0, 1]),
        },
        labels[1],
    ]
    outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=degenerate)
    assert all(torch.isfinite(v) for v in outputs.loss_dict.values())


def test_loss_drops_when_overfitting_tiny_scenes():
    torch.manual_seed(0)
    model = TEEForObjectDetection(tiny_tee_config()).train()
    pixel_values, labels = _scenes()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        outputs = model(pixel_values=pixel_values, labels=labels)
        optimizer.zero_grad()
        outputs.loss.backward()
        optimizer.step()
        losses.append(outputs.loss.item())
    assert all(np.isfinite(losses))
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.35 * first, (first, last)
    # The second stage learned the classes: the best region of each image has a ground-truth class of that image.
    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
    for b, target in enumerate(labels):
        assert int(outputs.region_labels[b, 0]) in target["class_labels"].tolist()


# ----------------------------------------------------------------------------------------------------------------
# Weights, saving, loading
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spread", [400.0, 5.0])
def test_prefix_nms_equals_full_nms(spread):
    """The early-exit NMS of the first stage keeps exactly what full NMS + per-image top-k keeps: with spread-out
    boxes (the prefix suffices) and with heavily overlapping ones (most candidates suppressed: falls back)."""
    from torchvision.ops import batched_nms

    gen = torch.Generator().manual_seed(0)
    counts = [1500, 37, 900]  # one image below the prefix size
    batch_index = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)])
    xy = torch.rand(len(batch_index), 2, generator=gen) * spread
    wh = 4 + torch.rand(len(batch_index), 2, generator=gen) * 30
    boxes = torch.cat((xy, xy + wh), dim=1)
    scores = torch.rand(len(batch_index), generator=gen)
    for k in (10, 100):
        expected = batched_nms(boxes, scores, batch_index, 0.5)
        expected, expected_rank = _top_k_per_image(expected, batch_index[expected], k, len(counts))
        kept, rank = batched_nms_top_k(boxes, scores, batch_index, 0.5, k, len(counts))
        assert torch.equal(kept, expected) and torch.equal(rank, expected_rank)
        assert kept.numel() > 0
    empty = batched_nms_top_k(boxes[:0], scores[:0], batch_index[:0], 0.5, 10, 2)
    assert empty[0].numel() == 0


@pytest.mark.parametrize("agnostic", [False, True])
def test_detection_nms_class_agnostic_drops_other_class_duplicates(agnostic, monkeypatch):
    """Two overlapping regions (IoU 0.88) of different classes describe one object: the class-agnostic final NMS
    keeps only the more confident one (so tags count objects), the per-class NMS keeps both; a distant region and
    a same-class duplicate behave the same way in both modes."""
    model = TEEModel(tiny_tee_config(detection_nms_class_agnostic=agnostic, ignore_box_regression=True)).eval()
    proposals = torch.tensor([[10.0, 10, 40, 40], [11, 11, 41, 41], [50, 50, 60, 60], [10, 11, 40, 41]])
    probs = torch.full((4, model.config.num_labels + 1), 0.01)
    probs[0, 0], probs[1, 1], probs[2, 2], probs[3, 0] = 0.9, 0.6, 0.8, 0.5  # 3: class-0 duplicate of region 0
    num_attributes = len(model.config.attribute_id2label)
    monkeypatch.setattr(model, "_second_stage", lambda features, boxes, batch_index: (
        torch.arange(4.0)[:, None].expand(4, model.config.box_head_dim), probs.log(),
        torch.zeros(4, num_attributes), torch.zeros(4, 4 * model.config.num_labels)))
    out = model._detect(None, proposals, torch.zeros(4, dtype=torch.long), torch.tensor([[64, 64]]), 1)
    kept = out["region_features"][0, out["region_mask"][0], 0].long().tolist()
    assert kept == ([0, 2] if agnostic else [0, 2, 1])
    assert out["region_labels"][0, out["region_mask"][0]].tolist() == ([0, 2] if agnostic else [0, 2, 1])


def test_init_weights():
    model = _model()
    prior = -np.log((1 - 0.01) / 0.01)
    torch.testing.assert_close(model.tee.proposal_head.objectness.bias, torch.full((3,), prior))
    torch.testing.assert_close(model.tee.predictor.attribute_logits.bias, torch.full((3,), prior))
    assert torch.all(model.tee.predictor.class_logits.bias == 0)
    assert model.tee.predictor.box_deltas.weight.std() < 0.01
    for name, param in model.named_parameters():
        if name.endswith("fusion_weights"):
            assert torch.all(param == 1), name
    assert model.accepts_loss_kwargs is False and model.base_model_prefix == "tee"
    assert model.base_model is model.tee


def test_save_and_reload_identical(tmp_path):
    model = _model()
    pixel_values, pixel_mask = _batch()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = TEEForObjectDetection.from_pretrained(tmp_path).eval()
    state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert state.keys() == reloaded_state.keys()
    for key in state:
        assert torch.equal(state[key], reloaded_state[key]), key
    with torch.no_grad():
        a = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        b = reloaded(pixel_values=pixel_values, pixel_mask=pixel_mask)
    for name in REGION_FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_base_model_loads_from_detection_checkpoint_and_back(tmp_path):
    detector = _model(seed=1)
    detector.save_pretrained(tmp_path / "det")
    base = TEEModel.from_pretrained(tmp_path / "det").eval()
    for key, value in detector.tee.state_dict().items():
        assert torch.equal(base.state_dict()[key], value), key
    pixel_values, pixel_mask = _batch()
    with torch.no_grad():
        a = detector(pixel_values=pixel_values, pixel_mask=pixel_mask)
        b = base(pixel_values=pixel_values, pixel_mask=pixel_mask)
    for name in REGION_FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    base.save_pretrained(tmp_path / "base")
    detector_again = TEEForObjectDetection.from_pretrained(tmp_path / "base")
    for key, value in detector.state_dict().items():
        assert torch.equal(detector_again.state_dict()[key], value), key


def test_pretrained_backbone_flag_never_downloads_in_from_pretrained(tmp_path, monkeypatch):
    import timm

    model = _model()
    model.config.pretrained_backbone = True
    model.save_pretrained(tmp_path)
    calls = []
    original = timm.create_model

    def spy(*args, **kwargs):
        calls.append(kwargs.get("pretrained"))
        return original(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    reloaded = TEEForObjectDetection.from_pretrained(tmp_path)
    assert calls == [False]
    assert reloaded.config.pretrained_backbone is True
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_auto_classes_local_registration(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForObjectDetection

    register_tee_auto_classes()
    model = _model()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), TEEConfig)
    assert type(AutoModelForObjectDetection.from_pretrained(tmp_path)) is TEEForObjectDetection
    assert type(AutoModel.from_pretrained(tmp_path)) is TEEModel


def test_hub_configs_are_generated_from_the_classes():
    """hub_configs/minivlm-tee* are written by `python -m minivlm_hf.hub.hub_configs`; they must match the classes,
    and the tiny one is the test suite's tiny TEE."""
    from minivlm_hf.hub.hub_configs import write_variant

    for variant in ("minivlm-tee", "minivlm-tee-tiny"):
        assert write_variant(variant, check=True) == [], f"run: python -m minivlm_hf.hub.hub_configs {variant}"
    tiny = TEEConfig.from_pretrained(REPO_ROOT / "hub_configs" / "minivlm-tee-tiny")
    assert tiny.backbone == "test_efficientnet" and tiny.id2label == tiny_tee_config().id2label
    config = TEEConfig.from_pretrained(REPO_ROOT / "hub_configs" / "minivlm-tee")
    assert config.backbone == "efficientnet_b0" and config.num_labels == 1594 and config.num_regions == 50
    processor = MiniVLMImageProcessor.from_pretrained(REPO_ROOT / "hub_configs" / "minivlm-tee")
    assert processor.size.longest_edge == 512 and processor.pad_size_divisor == 128


# ----------------------------------------------------------------------------------------------------------------
# Remote code and pipeline
# ----------------------------------------------------------------------------------------------------------------

_SITECUSTOMIZE = '''
import sys

class _BlockMiniVLM:
    """Make `import minivlm_hf` fail, whatever else is installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "minivlm_hf" or name.startswith("minivlm_hf."):
            raise ImportError("minivlm_hf is blocked in this interpreter (remote-code test)")
        return None

sys.meta_path.insert(0, _BlockMiniVLM())
'''

_REMOTE_SCRIPT = '''
import json, os, sys
import numpy as np
import torch
from PIL import Image

repo = os.path.realpath(os.environ["TEE_TEST_REPO"])
venv = os.path.join(repo, ".venv")


def inside_repo(entry):
    entry = os.path.realpath(entry or os.getcwd())
    return (entry == repo or entry.startswith(repo + os.sep)) and not entry.startswith(venv + os.sep)


sys.path[:] = [entry for entry in sys.path if not inside_repo(entry)]
assert not inside_repo(os.getcwd())
try:
    import minivlm_hf  # noqa: F401
    raise SystemExit("minivlm_hf should not be importable here")
except ImportError:
    pass

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection, pipeline

model_dir = sys.argv[1]
out_dir = sys.argv[2]
config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
model = AutoModelForObjectDetection.from_pretrained(model_dir, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True)
processor_pil = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True, backend="pil")
image = Image.open(os.path.join(out_dir, "scene.png"))
inputs = processor(images=image, return_tensors="pt")
inputs_pil = processor_pil(images=image, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
    base_outputs = base(**inputs)
pipe = pipeline("object-detection", model=model_dir, trust_remote_code=True)
detections = pipe(image, threshold=0.0)
torch.save(
    {
        "pixel_values": inputs["pixel_values"],
        "pixel_values_pil": inputs_pil["pixel_values"],
        "region_features": outputs.region_features,
        "logits": outputs.logits,
        "region_boxes": outputs.region_boxes,
        "base_region_features": base_outputs.region_features,
    },
    os.path.join(out_dir, "remote_outputs.pt"),
)
summary = {
    "config_class": type(config).__name__,
    "config_module": type(config).__module__,
    "model_class": type(model).__name__,
    "model_module": type(model).__module__,
    "base_class": type(base).__name__,
    "processor_class": type(processor).__name__,
    "processor_pil_class": type(processor_pil).__name__,
    "pipeline_processor_class": type(pipe.image_processor).__name__,
    "detections": detections,
    "minivlm_loaded": any(name.startswith("minivlm_hf") for name in sys.modules),
}
with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f)
'''


@pytest.fixture
def auto_class_registration():
    """`register_for_auto_class` sets class attributes; undo it afterwards so other tests save plain checkpoints."""
    from minivlm_hf.modeling.image_processing_pil_minivlm import MiniVLMImageProcessorPil

    classes = (TEEConfig, TEEForObjectDetection, TEEModel, MiniVLMImageProcessor, MiniVLMImageProcessorPil)
    saved = {cls: cls.__dict__.get("_auto_class", None) for cls in classes}
    TEEConfig.register_for_auto_class()
    TEEForObjectDetection.register_for_auto_class("AutoModelForObjectDetection")
    MiniVLMImageProcessor.register_for_auto_class()
    yield
    for cls, value in saved.items():
        if value is None and "_auto_class" in cls.__dict__:
            delattr(cls, "_auto_class")
        else:
            cls._auto_class = value


def test_remote_code_in_subprocess_without_minivlm_hf(tmp_path, auto_class_registration):
    from PIL import Image
    from transformers import pipeline

    model_dir = tmp_path / "model"
    model = _model(seed=3)
    model.config.auto_map = {"AutoModel": "modeling_minivlm_tee.TEEModel"}
    processor = tiny_image_processor()
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    for name in (
        "configuration_minivlm_tee.py",
        "modeling_minivlm_tee.py",
        "image_processing_minivlm.py",
        "image_processing_pil_minivlm.py",
    ):
        assert (model_dir / name).exists(), name
    preprocessor = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"]["AutoImageProcessor"] == {
        "torchvision": "image_processing_minivlm.MiniVLMImageProcessor",
        "pil": "image_processing_pil_minivlm.MiniVLMImageProcessorPil",
    }
    config_json = json.loads((model_dir / "config.json").read_text())
    assert config_json["auto_map"]["AutoModelForObjectDetection"] == "modeling_minivlm_tee.TEEForObjectDetection"

    scene, _ = synthetic_scene([(4, 4, 28, 30, 0), (36, 30, 60, 50, 1)], height=56, width=72)
    image = Image.fromarray(scene)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    image.save(out_dir / "scene.png")

    # Reference, in this process.
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        reference = model(**inputs)
    pipe = pipeline("object-detection", model=str(model_dir), trust_remote_code=True)
    local_detections = pipe(image, threshold=0.0)
    assert len(local_detections) == int(reference.region_mask.sum()) > 0
    assert {d["label"] for d in local_detections} <= set(model.config.id2label.values())
    for detection in local_detections:
        box = detection["box"]
        assert 0 <= box["xmin"] <= box["xmax"] <= 72 and 0 <= box["ymin"] <= box["ymax"] <= 56

    # The same, in a clean interpreter that cannot import minivlm_hf.
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    script = tmp_path / "remote_check.py"
    script.write_text(textwrap.dedent(_REMOTE_SCRIPT))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        {
            "PYTHONPATH": str(site_dir),
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(tmp_path / "hf_home"),
            "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
            "TEE_TEST_REPO": str(REPO_ROOT),
            "OMP_NUM_THREADS": "1",
        }
    )
    result = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(out_dir)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["minivlm_loaded"] is False
    assert summary["config_class"] == "TEEConfig" and summary["config_module"].startswith("transformers_modules")
    assert summary["model_class"] == "TEEForObjectDetection" and summary["model_module"].startswith("transformers_modules")
    assert summary["base_class"] == "TEEModel"
    assert summary["processor_class"] == "MiniVLMImageProcessor"
    assert summary["processor_pil_class"] == "MiniVLMImageProcessorPil"
    assert summary["pipeline_processor_class"] == "MiniVLMImageProcessor"

    remote = torch.load(out_dir / "remote_outputs.pt")
    assert torch.equal(remote["pixel_values"], inputs["pixel_values"])
    torch.testing.assert_close(remote["pixel_values_pil"], inputs["pixel_values"], atol=0.05, rtol=0)
    torch.testing.assert_close(remote["region_features"], reference.region_features)
    torch.testing.assert_close(remote["logits"], reference.logits)
    torch.testing.assert_close(remote["region_boxes"], reference.region_boxes)
    torch.testing.assert_close(remote["base_region_features"], reference.region_features)
    remote_detections = summary["detections"]
    assert [d["label"] for d in remote_detections] == [d["label"] for d in local_detections]
    assert [d["box"] for d in remote_detections] == [d["box"] for d in local_detections]
    np.testing.assert_allclose(
        [d["score"] for d in remote_detections], [d["score"] for d in local_detections], rtol=1e-5, atol=1e-6
    )
