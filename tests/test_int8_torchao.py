"""Saveable int8 through transformers' TorchAoConfig (minivlm_hf.fast.torchao_int8) on tiny random models.

A quantised VQA / captioning model (TEE inside) keeps its TEE, region embedding and tied vocabulary projection in
float, stays within 5% of the float logits' scale, saves to safetensors, reloads with identical int8 weights and
outputs, pushes to the loopback Hub and loads back from it, and answers through `minivlm_hf.inference.load`.
"""

import json
import sys
import uuid

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fusion_utils import region_inputs, tag_inputs, text_inputs, tiny_fusion_config
from tee_utils import tiny_tee_config

from minivlm_hf.fast import (
    INT8_MODULES_TO_NOT_CONVERT,
    enable_cpu_fast_paths,
    int8_quantization_config,
    optimize_for_inference,
    quantize_int8,
)
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForQuestionAnswering

torchao = pytest.importorskip("torchao")  # the dev extra installs it; `pip install minivlm-hf` alone does not
from torchao.quantization import Int8Tensor  # noqa: E402

HEADS = {"vqa": MiniVLMForQuestionAnswering, "caption": MiniVLMForImageCaptioning}
#: int8 outputs vs float: max |Δ| within this fraction of the float outputs' largest magnitude (measured ~1%)
RELATIVE_TOLERANCE = 0.05


def _model(kind: str):
    torch.manual_seed(0)
    return HEADS[kind](tiny_fusion_config(vision_config=tiny_tee_config())).eval()


def _inputs(model) -> dict:
    return {**region_inputs(features=model.config.region_feature_size), **text_inputs(), **tag_inputs()}


def _logits(model, inputs) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits


def _int8_weights(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if isinstance(p, Int8Tensor)}


def _expected_int8(model) -> set[str]:
    """Every Linear weight outside the TEE, the region embedding and the tied vocabulary projection."""
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and ".vision_model." not in f".{n}." and "region_embeddings" not in n and not n.endswith("decoder")}


@pytest.fixture(scope="module", params=sorted(HEADS))
def quantised(request):
    model = _model(request.param)
    return request.param, model, quantize_int8(model)


def test_int8_quantises_the_fusion_linears_and_keeps_the_rest_float(quantised):
    kind, model, int8 = quantised
    weights = _int8_weights(int8)
    assert set(weights) == _expected_int8(model) and len(weights) >= 12
    assert all(w.qdata.dtype == torch.int8 and w.scale.shape == (w.shape[0], 1) for w in weights.values())
    assert not _int8_weights(model)  # the input model is not modified
    float_state = model.state_dict()
    for name, tensor in int8.state_dict().items():  # the TEE, region embedding, embeddings, norms: unchanged
        if name not in weights:
            assert type(tensor) is torch.Tensor and torch.equal(tensor, float_state[name]), name
    if kind == "caption":
        assert int8.cls.predictions.decoder.weight is int8.minivlm.embeddings.word_embeddings.weight  # still tied
    reference = _logits(model, _inputs(model))
    deviation = (_logits(int8, _inputs(model)) - reference).abs().max()
    assert 0 < deviation <= RELATIVE_TOLERANCE * reference.abs().max()


def test_int8_model_saves_safetensors_and_reloads_identically(quantised, tmp_path):
    kind, model, int8 = quantised
    int8.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "torchao" and config["modules_to_not_convert"] == INT8_MODULES_TO_NOT_CONVERT
    assert config["quant_type"]["default"]["_type"] == "Int8DynamicActivationInt8WeightConfig"
    reloaded = HEADS[kind].from_pretrained(tmp_path)  # no quantization_config: the checkpoint says int8
    before, after = _int8_weights(int8), _int8_weights(reloaded)
    assert set(after) == set(before)
    for name in before:
        assert torch.equal(after[name].qdata, before[name].qdata) and torch.equal(after[name].scale, before[name].scale)
    assert torch.equal(_logits(reloaded, _inputs(model)), _logits(int8, _inputs(model)))
    if kind == "caption":
        prompt = torch.full((2, 1), model.config.cls_token_id)
        regions = {**region_inputs(features=model.config.region_feature_size), **tag_inputs()}
        kwargs = dict(input_ids=prompt, **regions, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        with torch.inference_mode():
            assert torch.equal(reloaded.generate(**kwargs), int8.generate(**kwargs))


def test_fast_paths_leave_int8_weights_alone(quantised, monkeypatch):
    """The CPU fast paths (few-row Linears, fused QKV) have no kernel for torchao weights: they skip those Linears
    and still fold / re-lay the float TEE."""
    from minivlm_hf.fast import cpu as fast_cpu

    monkeypatch.setattr(fast_cpu, "few_rows_pays", lambda *args, **kwargs: True)  # whichever kernel this CPU prefers
    kind, model, int8 = quantised
    reference = _logits(int8, _inputs(model))
    fast = optimize_for_inference(int8)
    assert fast.minivlm_optimizations.fused_qkv_layers == 0 and fast.minivlm_optimizations.folded_batch_norms > 0
    assert all(type(fast.get_submodule(n.removesuffix(".weight"))) is nn.Linear for n in _int8_weights(fast))
    torch.testing.assert_close(_logits(fast, _inputs(model)), reference, atol=1e-5, rtol=1e-5)
    enable_cpu_fast_paths(int8)
    assert all(type(int8.get_submodule(n.removesuffix(".weight"))) is nn.Linear for n in _int8_weights(int8))


def test_int8_checkpoint_pushes_and_loads_back_from_the_hub(hub_server, quantised):
    kind, model, int8 = quantised
    repo = f"user/int8-{kind}-{uuid.uuid4().hex[:6]}"
    int8.push_to_hub(repo)
    files = set(hub_server.list_files(repo))
    assert {"config.json", "model.safetensors", "modeling_minivlm.py"} <= files
    assert json.loads(hub_server.read_file(repo, "config.json"))["quantization_config"]["quant_method"] == "torchao"
    pulled = HEADS[kind].from_pretrained(repo)
    assert set(_int8_weights(pulled)) == set(_int8_weights(int8))
    assert torch.equal(_logits(pulled, _inputs(model)), _logits(int8, _inputs(model)))


def test_int8_folder_answers_through_inference_load(tmp_path):
    """A saved int8 VQA folder (model + processor) is what `minivlm-hf answer` and `inference.load` read."""
    from minivlm_hf import inference
    from minivlm_hf.hub.init_checkpoint import init_checkpoint

    folder = init_checkpoint("minivlm-tiny", tmp_path / "vqa", task="vqa", text_init="none", seed=0).output
    model, processor = inference.load("vqa", folder)
    quantize_int8(model).save_pretrained(tmp_path / "int8")
    processor.save_pretrained(tmp_path / "int8")
    int8, int8_processor = inference.load("vqa", tmp_path / "int8")
    assert _int8_weights(int8)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    expected = inference.answer(model, processor, image, "what colour is the star?", top_k=3)
    got = inference.answer(int8, int8_processor, image, "what colour is the star?", top_k=3)
    assert got[0]["answer"] == expected[0]["answer"]
    scores = {a["answer"]: a["score"] for a in got}  # random weights: close answers may swap ranks, scores stay close
    assert all(abs(scores[a["answer"]] - a["score"]) < 0.02 for a in expected if a["answer"] in scores)


def test_quantize_int8_refuses_a_fast_path_copy_or_a_quantised_model(quantised):
    kind, model, int8 = quantised
    with pytest.raises(ValueError, match="not an optimize_for_inference copy"):
        quantize_int8(optimize_for_inference(model))
    with pytest.raises(ValueError, match="already quantised \\(torchao\\)"):
        quantize_int8(int8)


def test_missing_torchao_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao` raises ImportError, as when not installed
    for call in (int8_quantization_config, lambda: quantize_int8(_model("vqa"))):
        with pytest.raises(ImportError, match=r"needs torchao>=0\.18 .*pip install 'minivlm-hf\[int8\]'"):
            call()


def test_benchmark_int8_part_times_both_int8_paths_against_fp32(tmp_path):
    from minivlm_hf.benchmark.int8_part import FAST_TORCHAO, TORCH_AO, TORCHAO, TORCHAO_WEIGHT_ONLY
    from minivlm_hf.benchmark.suite import BenchmarkSettings, run_benchmark

    settings = BenchmarkSettings(parts=("int8",), runs=1, warmup=0, threads=1, tiny=True, memory=False, flops=False,
                                 gflops_seconds=0.05, json_path=str(tmp_path / "int8.json"))
    result = run_benchmark(settings, log=lambda message: None)
    rows = {(f["group"].removeprefix("int8 paths: "), f["variant"]): f for f in result["fast"]}
    assert {v for g, v in rows if g == "fusion + VQA head from regions"} == {"fp32", TORCH_AO, TORCHAO,
                                                                             TORCHAO_WEIGHT_ONLY}
    assert ("image → VQA answer", FAST_TORCHAO) in rows
    assert all(f["speedup_vs_fp32"] > 0 and len(f["timing"]["runs_s"]) == 1 for f in rows.values())
    torchao_fusion = rows[("fusion + VQA head from regions", TORCHAO)]["parity"]
    assert torchao_fusion["max_diff"]["max_abs"] <= RELATIVE_TOLERANCE * torchao_fusion["max_diff"]["max_ref"]
    captions = [f for (g, _), f in rows.items() if "caption" in g and f["variant"] != "fp32"]
    assert len(captions) == 3 and all("identical_tokens" in f["parity"] for f in captions)
    assert json.loads((tmp_path / "int8.json").read_text())["fast"] == result["fast"]


def test_parity_with_torchao_refuses_early_without_torchao(tmp_path, monkeypatch):
    from minivlm_hf.benchmark.parity import run_parity

    (tmp_path / "detector").mkdir()
    (tmp_path / "detector" / "config.json").write_text("{}")
    (tmp_path / "demo_config.json").write_text(json.dumps({"common": {}}))
    monkeypatch.setitem(sys.modules, "torchao", None)
    with pytest.raises(ImportError, match="needs torchao"):
        run_parity(tmp_path, int8_torchao=True, cache_dir=tmp_path / "cache", log=lambda message: None)
