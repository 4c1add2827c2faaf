"""The model-test contract (transformers' `ModelTesterMixin` invariants) for every fusion class, fed precomputed
regions and, where it applies, images through a tiny TEE inside (`vision`)."""

import pytest
import torch

from contract_testers import (
    FUSION_CLASSES,
    LM_HEAD_CLASSES,
    FusionModelTester,
    assert_outputs_close,
    assert_state_dicts_equal,
    load_twice_from_one_tensor_checkpoint,
)
from minivlm_hf.modeling.modeling_minivlm import MiniVLMModel

TESTER = FusionModelTester()
CLASS_IDS = [c.__name__ for c in FUSION_CLASSES]
CLASSES = pytest.mark.parametrize("model_class", FUSION_CLASSES, ids=CLASS_IDS)
CLASSES_AND_VISION = pytest.mark.parametrize(
    "model_class, vision",
    [(c, vision) for vision in (False, True) for c in FUSION_CLASSES],
    ids=[f"{kind}-{c.__name__}" for kind in ("regions", "tee") for c in FUSION_CLASSES],
)


def _model(model_class, vision=False, seed=0, **config_overrides):
    torch.manual_seed(seed)
    return model_class(TESTER.get_config(vision=vision, **config_overrides)).eval()


def _saved(model, path, **kwargs):
    model.save_pretrained(path, **kwargs)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.smoke
@CLASSES_AND_VISION
def test_save_load_weights_and_outputs(model_class, vision, tmp_path):
    model = _model(model_class, vision)
    inputs = TESTER.prepare_inputs(model_class, vision=vision)
    _saved(model, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "pytorch_model.bin").exists()
    reloaded = model_class.from_pretrained(tmp_path).eval()
    assert_state_dicts_equal(model, reloaded)
    with torch.no_grad():
        assert_outputs_close(model(**inputs), reloaded(**inputs), atol=0, rtol=0)


@CLASSES
def test_sharded_save_load(model_class, tmp_path):
    model = _model(model_class)
    _saved(model, tmp_path, max_shard_size="40KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    reloaded = model_class.from_pretrained(tmp_path).eval()
    assert_state_dicts_equal(model, reloaded)


@pytest.mark.parametrize("model_class", [c for c in FUSION_CLASSES if c in LM_HEAD_CLASSES], ids=lambda c: c.__name__)
def test_tied_weights_after_load(model_class, tmp_path):
    model = _model(model_class)
    reloaded = model_class.from_pretrained(_saved(model, tmp_path / "tied"))
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    untied = _model(model_class, tie_word_embeddings=False)
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
    reloaded = model_class.from_pretrained(_saved(untied, tmp_path / "untied"))
    assert reloaded.get_output_embeddings().weight is not reloaded.get_input_embeddings().weight
    assert_state_dicts_equal(untied, reloaded)


# ---------------------------------------------------------------------------------------------------------------
# Output flags: arguments and config
# ---------------------------------------------------------------------------------------------------------------
@CLASSES_AND_VISION
def test_return_dict_false_equals_dict(model_class, vision):
    model = _model(model_class, vision)
    inputs = TESTER.prepare_inputs(model_class, vision=vision, labels=True)
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert_outputs_close(as_dict.to_tuple(), as_tuple, atol=0, rtol=0)


@CLASSES
def test_config_return_dict_false_gives_tuple(model_class):
    model = _model(model_class)
    model.config.return_dict = False
    with torch.no_grad():
        out = model(**TESTER.prepare_inputs(model_class))
    assert isinstance(out, tuple)


@CLASSES
@pytest.mark.parametrize("source", ["argument", "config"])
def test_hidden_states_count_and_shape(model_class, source):
    model = _model(model_class)
    kwargs = {"output_hidden_states": True} if source == "argument" else {}
    if source == "config":
        model.config.output_hidden_states = True
    with torch.no_grad():
        out = model(**TESTER.prepare_inputs(model_class), **kwargs)
    assert out.hidden_states is not None and len(out.hidden_states) == TESTER.num_hidden_layers + 1
    rows = TESTER.batch_size * (2 if model_class.__name__ == "MiniVLMForVisualReasoning" else 1)
    length = TESTER.expected_sequence_length(model_class)
    for state in out.hidden_states:
        assert state.shape == (rows, length, TESTER.hidden_size)


@CLASSES
@pytest.mark.parametrize("source", ["argument", "config"])
def test_attentions_count_and_shape(model_class, source):
    model = _model(model_class, attn_implementation="eager")
    kwargs = {"output_attentions": True} if source == "argument" else {}
    if source == "config":
        model.config.output_attentions = True
    with torch.no_grad():
        out = model(**TESTER.prepare_inputs(model_class), **kwargs)
    assert out.attentions is not None and len(out.attentions) == TESTER.num_hidden_layers
    rows = TESTER.batch_size * (2 if model_class.__name__ == "MiniVLMForVisualReasoning" else 1)
    length = TESTER.expected_sequence_length(model_class)
    for attention in out.attentions:
        assert attention.shape == (rows, TESTER.num_attention_heads, length, length)
        row_sums = attention.sum(-1)
        real = row_sums > 0  # query rows of padding may be all zero; every other row is a distribution
        torch.testing.assert_close(row_sums[real], torch.ones_like(row_sums[real]))


def test_attentions_need_eager():
    """sdpa computes no attention weights: asking for them must either be refused clearly or fall back to eager."""
    model = _model(MiniVLMModel, attn_implementation="sdpa")
    inputs = TESTER.prepare_inputs(MiniVLMModel)
    try:
        out = model(**inputs, output_attentions=True)
    except ValueError as error:
        assert "eager" in str(error)
    else:
        assert out.attentions is not None and len(out.attentions) == TESTER.num_hidden_layers


# ---------------------------------------------------------------------------------------------------------------
# Attention implementations
# ---------------------------------------------------------------------------------------------------------------
@CLASSES_AND_VISION
def test_sdpa_equals_eager(model_class, vision, tmp_path):
    path = _saved(_model(model_class, vision), tmp_path)
    inputs = TESTER.prepare_inputs(model_class, vision=vision)
    eager = model_class.from_pretrained(path, attn_implementation="eager").eval()
    sdpa = model_class.from_pretrained(path, attn_implementation="sdpa").eval()
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert_outputs_close(eager(**inputs), sdpa(**inputs), atol=1e-5, rtol=1e-4)


@CLASSES_AND_VISION
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_accepted(model_class, vision, implementation):
    config = TESTER.get_config(vision=vision)
    model = model_class._from_config(config, attn_implementation=implementation)
    assert model.config._attn_implementation == implementation
    with torch.no_grad():
        model.eval()(**TESTER.prepare_inputs(model_class, vision=vision))


# ---------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------
@CLASSES
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("new_size", [TESTER.vocab_size + 9, TESTER.vocab_size - 10], ids=["bigger", "smaller"])
def test_resize_token_embeddings(model_class, tied, new_size):
    if not tied and model_class not in LM_HEAD_CLASSES:
        pytest.skip("no output embeddings: tying does not apply")
    model = _model(model_class, tie_word_embeddings=tied).train()
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(new_size)
    assert model.config.vocab_size == new_size
    assert model.get_input_embeddings().weight.shape == (new_size, TESTER.hidden_size)
    keep = min(new_size, TESTER.vocab_size)
    torch.testing.assert_close(model.get_input_embeddings().weight[:keep], old[:keep])
    if model_class in LM_HEAD_CLASSES:
        head = model.get_output_embeddings()
        assert head.weight.shape[0] == new_size and (head.bias is None or head.bias.shape[0] == new_size)
        assert (head.weight is model.get_input_embeddings().weight) == tied
    inputs = TESTER.prepare_inputs(model_class, labels=True)
    inputs["input_ids"] = inputs["input_ids"].clamp(max=new_size - 1)
    if "labels" in inputs and inputs["labels"].dtype == torch.long and model_class in LM_HEAD_CLASSES:
        inputs["labels"] = inputs["labels"].clamp(max=new_size - 1)
    out = model(**inputs)
    if model_class is not MiniVLMModel:
        assert torch.isfinite(out.loss)
        out.loss.backward()


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------
@CLASSES
def test_gradient_checkpointing_same_loss_and_grads(model_class):
    if model_class is MiniVLMModel:
        pytest.skip("no loss: the heads cover the base model's checkpointed layers")
    inputs = TESTER.prepare_inputs(model_class, labels=True)
    results = []
    for checkpointing in (False, True):
        model = _model(model_class).train()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
            assert model.is_gradient_checkpointing
        loss = model(**inputs).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.smoke
@CLASSES_AND_VISION
def test_training_step_gives_grads_to_every_trainable_parameter(model_class, vision):
    if model_class is MiniVLMModel:
        pytest.skip("no loss: its parameters are covered through the heads")
    model = _model(model_class, vision).train()
    loss = model(**TESTER.prepare_inputs(model_class, vision=vision, labels=True)).loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    optimizer.step()
    assert model(**TESTER.prepare_inputs(model_class, vision=vision, labels=True)).loss < loss


@CLASSES
def test_num_parameters_only_trainable_excludes_frozen_tee(model_class):
    model = _model(model_class, vision=True).train()
    vision_model = model.base_model.vision_model
    tee = sum(p.numel() for p in vision_model.parameters())
    assert all(not p.requires_grad for p in vision_model.parameters())
    assert model.num_parameters(only_trainable=True) == model.num_parameters() - tee


# ---------------------------------------------------------------------------------------------------------------
# dtypes, determinism, batching
# ---------------------------------------------------------------------------------------------------------------
@CLASSES_AND_VISION
def test_from_pretrained_bfloat16_runs_on_cpu(model_class, vision, tmp_path, request):
    path = _saved(_model(model_class, vision), tmp_path)
    model = model_class.from_pretrained(path, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(**TESTER.prepare_inputs(model_class, vision=vision))
    first = out[0]  # logits, or the last hidden state of the base model
    assert first.dtype == torch.bfloat16 and torch.isfinite(first.float()).all()


@CLASSES_AND_VISION
def test_determinism(model_class, vision):
    model = _model(model_class, vision)
    inputs = TESTER.prepare_inputs(model_class, vision=vision)
    with torch.no_grad():
        assert_outputs_close(model(**inputs), model(**inputs), atol=0, rtol=0)


@CLASSES_AND_VISION
def test_batching_equivalence(model_class, vision):
    model = _model(model_class, vision)
    inputs = TESTER.prepare_inputs(model_class, vision=vision)
    with torch.no_grad():
        rows, batched = TESTER.main_output(model_class, model(**inputs), inputs)
        for row in range(TESTER.batch_size):
            alone_inputs = TESTER.slice_inputs(inputs, slice(row, row + 1))
            alone_rows, alone_batched = TESTER.main_output(model_class, model(**alone_inputs), alone_inputs)
            if rows:
                torch.testing.assert_close(rows[row], alone_rows[0], atol=1e-5, rtol=1e-4)
            for full, single in zip(batched, alone_batched):
                torch.testing.assert_close(full[row : row + 1], single, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------------------------
@CLASSES_AND_VISION
def test_post_init_was_called(model_class, vision):
    model = _model(model_class, vision)
    # post_init turns the class-level declarations into the sets that loading and device maps use.
    assert hasattr(model, "all_tied_weights_keys") and isinstance(model._no_split_modules, set)


@CLASSES_AND_VISION
def test_init_weights_cover_every_parameter(model_class, vision, tmp_path):
    """Weights missing from a checkpoint come from `_init_weights`: two loads with the same seed agree, so no
    parameter or buffer is left as uninitialised memory."""
    model = _model(model_class, vision)
    loaded = load_twice_from_one_tensor_checkpoint(model, model_class, tmp_path)
    for name, tensor in loaded[0].state_dict().items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name
    # and a fresh model built twice with one seed is the same model
    assert_state_dicts_equal(_model(model_class, vision, seed=7), _model(model_class, vision, seed=7))
