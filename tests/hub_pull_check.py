"""Pull checks of tests/test_hub_publish.py, run as a script in a FRESH process (`python hub_pull_check.py SPEC.json`).

SPEC (JSON): `mode` ("package": `import minivlm_hf`, no trust_remote_code; "remote": `import minivlm_hf` is blocked by
a meta-path finder and everything loads with trust_remote_code=True), `image` (PNG), `inputs` (torch file of fixed
model inputs), `repos` (`{"detector"|"caption"|"vqa": {"repo", "sha"}}`), `out_json`, `out_tensors`.

The parent process imports `state_dict_hash` / `model_outputs` from here to compute the reference values of the
pushed models, so both sides run the same code.
"""

from __future__ import annotations

import hashlib
import json
import sys


class BlockMiniVLM:
    """Meta-path finder that makes `import minivlm_hf` (and submodules) fail: the package is 'not installed'."""

    def find_spec(self, name, path=None, target=None):
        if name == "minivlm_hf" or name.startswith("minivlm_hf."):
            raise ImportError(f"minivlm_hf is blocked in this test process ({name})")
        return None


def state_dict_hash(model) -> str:
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_outputs(kind: str, model, inputs: dict) -> dict:
    """Outputs of a pushed model on the fixed inputs (detector / caption / vqa)."""
    import torch

    with torch.inference_mode():
        if kind == "detector":
            out = model(pixel_values=inputs["det_pixel_values"], pixel_mask=inputs["det_pixel_mask"])
            return {"logits": out.logits, "pred_boxes": out.pred_boxes, "region_features": out.region_features}
        if kind == "caption":
            keys = ("input_ids", "attention_mask", "pixel_values", "pixel_mask")
            kwargs = {k: inputs[f"cap_{k}"] for k in keys}
            ids = model.generate(**kwargs, max_new_tokens=4, num_beams=1, do_sample=False)
            logits = model(**kwargs).logits
            return {"generated": ids, "logits": logits}
        if kind == "vqa":
            keys = ("input_ids", "attention_mask", "pixel_values", "pixel_mask")
            return {"logits": model(**{k: inputs[f"vqa_{k}"] for k in keys}).logits}
    raise ValueError(kind)


def _class_name(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__name__}"


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    remote = spec["mode"] == "remote"
    if remote:
        sys.meta_path.insert(0, BlockMiniVLM())
        try:
            import minivlm_hf  # noqa: F401
        except ImportError:
            pass
        else:
            raise AssertionError("minivlm_hf is importable although it is blocked")
    else:
        import minivlm_hf  # noqa: F401  (registers the Auto classes)

    import torch
    from PIL import Image
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageTextToText,
        AutoModelForObjectDetection,
        AutoModelForVisualQuestionAnswering,
        AutoProcessor,
        pipeline,
    )

    trc = {"trust_remote_code": True} if remote else {}
    image = Image.open(spec["image"]).convert("RGB")
    inputs = torch.load(spec["inputs"], weights_only=True)
    repos = spec["repos"]
    results: dict = {"mode": spec["mode"]}
    tensors: dict = {}

    # -- detector -------------------------------------------------------------------------------------------------
    repo, sha = repos["detector"]["repo"], repos["detector"]["sha"]
    model = AutoModelForObjectDetection.from_pretrained(repo, revision=sha, **trc).eval()
    image_processor = AutoImageProcessor.from_pretrained(repo, revision=sha, **trc)
    pil_processor = AutoImageProcessor.from_pretrained(repo, revision=sha, backend="pil", **trc)
    encoded = image_processor(images=image, return_tensors="pt")
    encoded_pil = pil_processor(images=image, return_tensors="pt")
    detector = pipeline("object-detection", model=repo, revision=sha, **trc)
    detections = detector(image, threshold=0.0)
    results["detector"] = {
        "model_class": _class_name(model),
        "hash": state_dict_hash(model),
        "image_processor_class": _class_name(image_processor),
        "pil_processor_class": _class_name(pil_processor),
        "pil_shape_matches": list(encoded_pil["pixel_values"].shape) == list(encoded["pixel_values"].shape),
        "pixels_match_fixed_input": bool(torch.allclose(encoded["pixel_values"], inputs["det_pixel_values"], atol=1e-5)),
        "pipeline_class": _class_name(detector),
        "pipeline_output": [
            {"label": d["label"], "score": round(float(d["score"]), 4), "box": d["box"]} for d in detections[:3]
        ],
    }
    for k, v in model_outputs("detector", model, inputs).items():
        tensors[f"detector.{k}"] = v

    # -- captioning -----------------------------------------------------------------------------------------------
    repo, sha = repos["caption"]["repo"], repos["caption"]["sha"]
    model = AutoModelForImageTextToText.from_pretrained(repo, revision=sha, **trc).eval()
    processor = AutoProcessor.from_pretrained(repo, revision=sha, **trc)
    pil_processor = AutoImageProcessor.from_pretrained(repo, revision=sha, backend="pil", **trc)
    captioner = pipeline("image-text-to-text", model=repo, revision=sha, **trc)
    captions = captioner(images=image, text="", max_new_tokens=4)
    results["caption"] = {
        "model_class": _class_name(model),
        "hash": state_dict_hash(model),
        "processor_class": _class_name(processor),
        "processor_image_processor_class": _class_name(processor.image_processor),
        "pil_processor_class": _class_name(pil_processor),
        "pipeline_class": _class_name(captioner),
        "pipeline_output": captions[0]["generated_text"] if isinstance(captions[0], dict) else captions[0],
    }
    for k, v in model_outputs("caption", model, inputs).items():
        tensors[f"caption.{k}"] = v

    # -- VQA ------------------------------------------------------------------------------------------------------
    repo, sha = repos["vqa"]["repo"], repos["vqa"]["sha"]
    model = AutoModelForVisualQuestionAnswering.from_pretrained(repo, revision=sha, **trc).eval()
    processor = AutoProcessor.from_pretrained(repo, revision=sha, **trc)
    if remote:
        vqa = pipeline(model=repo, revision=sha, trust_remote_code=True)  # task from config.custom_pipelines
        results["vqa_plain_pipeline_error"] = None
    else:  # the package's own registration: no trust_remote_code
        vqa = pipeline("minivlm-vqa", model=repo, revision=sha)
        results["vqa_explicit_remote_task_class"] = None
    if remote:  # the removed stock task name, revived by the checkpoint's custom pipeline
        explicit = pipeline("visual-question-answering", model=repo, revision=sha, trust_remote_code=True)
        results["vqa_explicit_remote_task_class"] = _class_name(explicit)
    answers = vqa(image, question="what colour is the star?", top_k=2)
    results["vqa"] = {
        "model_class": _class_name(model),
        "hash": state_dict_hash(model),
        "processor_class": _class_name(processor),
        "pipeline_class": _class_name(vqa),
        "pipeline_output": [{"answer": a["answer"], "score": round(a["score"], 4)} for a in answers],
        "id2label_size": len(model.config.id2label),
    }
    for k, v in model_outputs("vqa", model, inputs).items():
        tensors[f"vqa.{k}"] = v

    results["minivlm_hf_imported"] = sorted(m for m in sys.modules if m.split(".")[0] == "minivlm_hf")[:5]
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, spec["out_tensors"])
    with open(spec["out_json"], "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
