"""The model-test contract for the TEE classes (`TEEModel`, `TEEForObjectDetection`), and the object-detection
pipeline built from a saved detector."""

import logging

import pytest
import torch

from contract_testers import (
    TEE_CLASSES,
    TEEModelTester,
    assert_outputs_close,
    assert_state_dicts_equal,
    load_twice_from_one_tensor_checkpoint,
)
from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection
from tee_utils import tiny_image_processor

TESTER = TEEModelTester()
CLASSES = pytest.mark.parametrize("model_class", TEE_CLASSES, ids=[c.__name__ for c in TEE_CLASSES])


def _model(model_class, seed=0, **overrides):
    torch.manual_seed(seed)
    return model_class(TESTER.get_config(**overrides)).eval()


@pytest.mark.smoke
@CLASSES
def test_save_load_weights_and_outputs(model_class, tmp_path):
    model = _model(model_class)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = model_class.from_pretrained(tmp_path).eval()
    assert_state_dicts_equal(model, reloaded)
    inputs = TESTER.prepare_inputs(model_class)
    with torch.no_grad():
        assert_outputs_close(model(**inputs), reloaded(**inputs), atol=0, rtol=0)


@CLASSES
def test_sharded_save_load(model_class, tmp_path):
    model = _model(model_class)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert_state_dicts_equal(model, model_class.from_pretrained(tmp_path))


@CLASSES
def test_return_dict_false_equals_dict(model_class):
    model = _model(model_class)
    inputs = TESTER.prepare_inputs(model_class)
    with torch.no_grad():
        assert_outputs_close(model(**inputs).to_tuple(), model(**inputs, return_dict=False), atol=0, rtol=0)


@CLASSES
def test_config_return_dict_and_hidden_states(model_class):
    model = _model(model_class)
    inputs = TESTER.prepare_inputs(model_class)
    model.config.output_hidden_states = True
    with torch.no_grad():
        out = model(**inputs)
    maps = out.feature_maps
    assert maps is not None and len(maps) == len(model.config.anchor_sizes)
    assert all(m.shape[:2] == (TESTER.batch_size, model.config.bifpn_channels) for m in maps)
    model.config.return_dict = False
    with torch.no_grad():
        assert isinstance(model(**inputs), tuple)


def test_attentions_do_not_apply():
    pytest.skip("the TEE is convolutional: it has no attention weights to return")


@CLASSES
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_accepted(model_class, implementation, tmp_path):
    _model(model_class).save_pretrained(tmp_path)
    model = model_class.from_pretrained(tmp_path, attn_implementation=implementation)
    with torch.no_grad():
        model.eval()(**TESTER.prepare_inputs(model_class))


@CLASSES
def test_from_pretrained_bfloat16_runs_on_cpu(model_class, tmp_path, request):
    _model(model_class).save_pretrained(tmp_path)
    model = model_class.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(**TESTER.prepare_inputs(model_class))
    assert torch.isfinite(out.region_features.float()).all()


@CLASSES
def test_determinism(model_class):
    model = _model(model_class)
    inputs = TESTER.prepare_inputs(model_class)
    with torch.no_grad():
        assert_outputs_close(model(**inputs), model(**inputs), atol=0, rtol=0)


@CLASSES
def test_batching_equivalence(model_class):
    model = _model(model_class)
    inputs = TESTER.prepare_inputs(model_class)
    with torch.no_grad():
        batched = model(**inputs)
        for row in range(TESTER.batch_size):
            alone = model(**{k: v[row : row + 1] for k, v in inputs.items()})
            for name in ("region_features", "region_boxes", "region_scores", "logits"):
                torch.testing.assert_close(getattr(batched, name)[row : row + 1], getattr(alone, name),
                                           atol=1e-4, rtol=1e-4, msg=name)


def test_gradient_checkpointing_does_not_apply():
    assert not TEEForObjectDetection.supports_gradient_checkpointing
    pytest.skip("the TEE has no transformer layers to checkpoint (supports_gradient_checkpointing=False)")


def test_resize_token_embeddings_does_not_apply():
    pytest.skip("the TEE has no token embeddings")


@pytest.mark.smoke
def test_training_step_gives_grads_to_every_trainable_parameter():
    model = _model(TEEForObjectDetection).train()
    inputs = TESTER.prepare_inputs(TEEForObjectDetection, labels=True)
    out = model(**inputs)
    assert torch.isfinite(out.loss) and set(out.loss_dict) >= {"loss_objectness", "loss_classifier"}
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]


@CLASSES
def test_init_weights_cover_every_parameter(model_class, tmp_path):
    model = _model(model_class)
    load_twice_from_one_tensor_checkpoint(model, model_class, tmp_path)
    assert_state_dicts_equal(_model(model_class, seed=7), _model(model_class, seed=7))
    assert hasattr(model, "all_tied_weights_keys") and isinstance(model._no_split_modules, set)  # post_init ran


@CLASSES
def test_device_map_cpu_matches_the_plain_model(model_class, tmp_path):
    model = _model(model_class)
    model.save_pretrained(tmp_path)
    mapped = model_class.from_pretrained(tmp_path, device_map="cpu").eval()
    inputs = TESTER.prepare_inputs(model_class)
    with torch.no_grad():
        assert_outputs_close(model(**inputs), mapped(**inputs), atol=0, rtol=0)


def test_export_does_not_apply():
    pytest.skip("the TEE's proposals and NMS have data-dependent shapes; the fusion encoder is exported instead")


def test_object_detection_pipeline_logs_no_error(tmp_path, caplog):
    """The README's `pipeline("object-detection", model=DIR)` after `import minivlm_hf`: no ERROR is logged."""
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    model = _model(TEEForObjectDetection)
    model.save_pretrained(tmp_path)
    tiny_image_processor().save_pretrained(tmp_path)
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="transformers"):
            detector = pipeline("object-detection", model=str(tmp_path))
    finally:
        hf_logging.disable_propagation()
    errors = [r.getMessage()[:200] for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
    image, _ = TESTER.scenes()[0]
    from PIL import Image

    assert isinstance(detector(Image.fromarray(image), threshold=0.0), list)
