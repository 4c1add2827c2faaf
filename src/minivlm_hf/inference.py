"""One call from image to result: detect, caption, answer, score image-caption pairs, judge a statement.

Each function takes a loaded model + processor (see `load`), PIL images or paths, and returns plain Python data.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

TASK_AUTO_CLASSES = {
    "detect": "AutoModelForObjectDetection",
    "caption": "AutoModelForImageTextToText",
    "answer": "AutoModelForVisualQuestionAnswering",
    "retrieval": "AutoModel",
    "nlvr": "AutoModel",
}


_HEADS_WITHOUT_AUTO_CLASS = {"retrieval": "MiniVLMForImageTextRetrieval", "nlvr": "MiniVLMForVisualReasoning"}


def open_image(source) -> Image.Image:
    """A path or PIL image → RGB PIL image, with errors that name the file."""
    if isinstance(source, Image.Image):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path}: refused, too many pixels (possible decompression bomb): {err}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def load(task: str, model_id: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load (model, processor) for a task from a folder or Hub id through the transformers Auto classes."""
    import transformers

    import minivlm_hf  # noqa: F401  (registers the Auto classes)

    if task not in TASK_AUTO_CLASSES:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASK_AUTO_CLASSES)}")
    if not Path(model_id).exists() and not _looks_like_hub_id(model_id):
        raise FileNotFoundError(f"model folder not found (and not a Hub id 'namespace/name'): {model_id}")
    auto = getattr(transformers, TASK_AUTO_CLASSES[task])
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    if task in _HEADS_WITHOUT_AUTO_CLASS and not trust_remote_code:
        # transformers has no Auto class for these heads (AutoModel gives the bare encoder): use the saved architecture.
        config = transformers.AutoConfig.from_pretrained(model_id, revision=revision)
        architecture = (config.architectures or [""])[0]
        if architecture != _HEADS_WITHOUT_AUTO_CLASS[task]:
            raise ValueError(f"{model_id} holds a {architecture or 'model without architectures'}, not a {task} model")
        auto = getattr(minivlm_hf, architecture)
    model = auto.from_pretrained(model_id, **kwargs).eval()
    if task == "detect":
        processor = transformers.AutoImageProcessor.from_pretrained(model_id, **kwargs)
    else:
        processor = transformers.AutoProcessor.from_pretrained(model_id, **kwargs)
    return model, processor


@torch.inference_mode()
def detect(model, image_processor, images, threshold: float = 0.5, attribute_threshold: float = 0.5) -> list[list[dict]]:
    """Per image: `[{"label", "score", "box": [x1, y1, x2, y2], "attributes": [names]}]`, boxes in pixels of the
    original image; `attributes` are the region's attribute names whose probability is `>= attribute_threshold`."""
    images = [open_image(i) for i in images]
    inputs = image_processor(images, return_tensors="pt")
    outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs.get("pixel_mask"))
    sizes = [(im.height, im.width) for im in images]
    results = image_processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
    id2label = model.config.id2label
    attribute_names = getattr(model.config, "attribute_id2label", None) or {}
    # The regions post_process_object_detection keeps, in its order: score above threshold, inside region_mask.
    scores = outputs.logits.float().softmax(-1)[..., :-1].amax(-1)
    kept = scores > threshold
    if getattr(outputs, "region_mask", None) is not None:
        kept &= outputs.region_mask.bool()
    attribute_probs = outputs.attribute_logits.float().sigmoid() if outputs.attribute_logits is not None else None
    detections = []
    for index, r in enumerate(results):
        probs = attribute_probs[index][kept[index]] if attribute_probs is not None else [None] * len(r["scores"])
        detections.append([
            {"label": id2label[int(label)], "score": round(float(score), 4), "box": [round(float(v), 1) for v in box],
             "attributes": [] if p is None else [attribute_names[a] for a in range(len(p))
                                                 if float(p[a]) >= attribute_threshold and a in attribute_names]}
            for score, label, box, p in zip(r["scores"], r["labels"], r["boxes"], probs)
        ])
    return detections


@torch.inference_mode()
def caption(model, processor, images, prompt: str = "", **generate_kwargs) -> list[str]:
    """Captions for a list of images (greedy by default; pass num_beams=5 / do_sample=True …)."""
    images = [open_image(i) for i in images]
    inputs = processor(images=images, text=[prompt] * len(images))
    # At most what the model's text length leaves after [CLS] and the [MASK] query.
    generate_kwargs.setdefault("max_new_tokens", min(20, model.config.max_text_length - 2))
    ids = model.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs["pixel_values"],
        pixel_mask=inputs.get("pixel_mask"),
        **generate_kwargs,
    )
    return [c.strip() for c in processor.batch_decode(ids)]


@torch.inference_mode()
def answer(model, processor, image, question: str, top_k: int = 1) -> list[dict]:
    """`[{"answer", "score"}]` for one image and one question, best first."""
    inputs = processor(images=[open_image(image)], text=[question])
    logits = model(**inputs).logits
    scores = "softmax" if getattr(model.config, "vqa_loss", "bce") == "softmax" else "sigmoid"
    return processor.post_process_vqa(logits, model.config.id2label, top_k=top_k, score_function=scores)[0]


@torch.inference_mode()
def rank_captions(model, processor, image, captions: list[str], batch_size: int = 32) -> list[dict]:
    """Score one image against N captions; returns `[{"caption", "score"}]` best first."""
    image_inputs = processor(images=[open_image(image)])
    text_inputs = processor(text=list(captions))
    ranking = model.rank_texts(
        {"input_ids": text_inputs["input_ids"], "attention_mask": text_inputs["attention_mask"]},
        {"pixel_values": image_inputs["pixel_values"], "pixel_mask": image_inputs.get("pixel_mask")},
        batch_size=batch_size,
    )
    return [{"caption": captions[i], "score": float(ranking.scores[i])} for i in ranking.ranking.tolist()]


@torch.inference_mode()
def judge(model, processor, statement: str, left_image, right_image) -> dict:
    """NLVR2-style: is `statement` true of the image pair? `{"label": bool, "score": P(true)}`."""
    inputs = processor(images=[open_image(left_image), open_image(right_image)], text=[statement])
    pixel_values = inputs["pixel_values"].unsqueeze(0)  # (1, 2, 3, H, W)
    pixel_mask = inputs["pixel_mask"].unsqueeze(0) if "pixel_mask" in inputs else None
    text = processor(text=[statement])
    logits = model(
        input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixel_values, pixel_mask=pixel_mask
    ).logits
    prob = float(logits.float().softmax(-1)[0, 1])
    return {"label": prob >= 0.5, "score": prob}
