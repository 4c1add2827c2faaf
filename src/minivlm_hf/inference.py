"""One call from image to result: detect, caption, answer, score image-caption pairs, judge a statement.

Each function takes a loaded model + processor (see `load`), PIL images or paths, and returns plain Python data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

def open_image(source) -> Image.Image:
    """A path, PIL image or ``(H, W[, C])`` uint8 / float array → PIL image, with errors that name the file."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return _image_from_array(source)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"expected an image path, a PIL image or an array, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path}: refused, too many pixels (possible decompression bomb): {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # truncated files raise OSError
        raise ValueError(f"{path}: not a readable image ({err})") from err


def _image_from_array(array) -> Image.Image:
    """An ``(H, W)``, ``(H, W, 1|3|4)`` array (uint8, or floats in [0, 1]) as a PIL image."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels first
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"image array must hold numbers, got dtype {array.dtype}")
        if not np.isfinite(array).all():
            raise ValueError("image array holds NaN / inf values")
        scale = 255.0 if float(array.max(initial=0)) <= 1.0 else 1.0
        array = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def _images(images) -> list[Image.Image]:
    """One image (path, PIL image, array) or a list of them → a non-empty list of PIL images."""
    if isinstance(images, (str, Path, Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("no images given")
    return [open_image(i) for i in images]


def _text(name: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} is empty")
    return value


def _probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def load(task: str, model_id: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load (model, processor) for a task from a folder or Hub id through the transformers Auto classes.

    Refuses, in one line naming what the folder holds, a checkpoint of another kind, one whose task weights are
    missing (no randomly initialised head is returned), truncated or pickled-only weights, and remote code unless
    ``trust_remote_code``."""
    from .io.loading import load_for_task

    if not isinstance(model_id, (str, Path)):
        raise TypeError(f"model_id must be a folder or Hub id, got {type(model_id).__name__}")
    model_id = str(model_id)
    if not Path(model_id).exists() and not _looks_like_hub_id(model_id):
        raise FileNotFoundError(f"model folder not found (and not a Hub id 'namespace/name'): {model_id}")
    model, processor = load_for_task(task, model_id, revision, trust_remote_code)
    from .fast.cpu import enable_cpu_fast_paths

    enable_cpu_fast_paths(model)  # CPU kernel choices; outputs and weights unchanged
    return model, processor


@torch.inference_mode()
def detect(model, image_processor, images, threshold: float = 0.5, attribute_threshold: float = 0.5) -> list[list[dict]]:
    """Per image: `[{"label", "score", "box": [x1, y1, x2, y2], "attributes": [names]}]`, boxes in pixels of the
    original image; `attributes` are the region's attribute names whose probability is `>= attribute_threshold`."""
    threshold = _probability("threshold", threshold)
    attribute_threshold = _probability("attribute_threshold", attribute_threshold)
    images = _images(images)
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
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    images = _images(images)
    for name in ("max_new_tokens", "num_beams", "num_return_sequences", "top_k"):
        if generate_kwargs.get(name) is not None:
            _positive_int(name, generate_kwargs[name])
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
    question = _text("question", question)
    top_k = _positive_int("top_k", top_k)
    inputs = processor(images=[open_image(image)], text=[question])
    logits = model(**inputs).logits
    scores = "softmax" if getattr(model.config, "vqa_loss", "bce") == "softmax" else "sigmoid"
    return processor.post_process_vqa(logits, model.config.id2label, top_k=top_k, score_function=scores)[0]


@torch.inference_mode()
def rank_captions(model, processor, image, captions: list[str], batch_size: int = 32) -> list[dict]:
    """Score one image against N captions; returns `[{"caption", "score"}]` best first."""
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)):
        raise TypeError(f"captions must be a list of strings (one per caption), got {type(captions).__name__}")
    if not captions:
        raise ValueError("captions is empty: give at least one caption to rank")
    captions = [_text(f"captions[{i}]", c) for i, c in enumerate(captions)]
    batch_size = _positive_int("batch_size", batch_size)
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
    statement = _text("statement", statement)
    inputs = processor(images=[open_image(left_image), open_image(right_image)], text=[statement])
    pixel_values = inputs["pixel_values"].unsqueeze(0)  # (1, 2, 3, H, W)
    pixel_mask = inputs["pixel_mask"].unsqueeze(0) if "pixel_mask" in inputs else None
    text = processor(text=[statement])
    logits = model(
        input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixel_values, pixel_mask=pixel_mask
    ).logits
    prob = float(logits.float().softmax(-1)[0, 1])
    return {"label": prob >= 0.5, "score": prob}
