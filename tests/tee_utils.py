"""Helpers for the TEE tests: the tiny config (the `minivlm-tee-tiny` variant), synthetic scenes of coloured
rectangles, local Auto registration."""

from pathlib import Path

import numpy as np
import torch


REPO_ROOT = Path(__file__).resolve().parents[1]

COLOURS = {0: (220, 30, 30), 1: (30, 200, 40), 2: (40, 60, 230), 3: (240, 220, 30)}


def _tiny_variant():
    import copy

    from minivlm_hf.hub.variants import get_variant

    return copy.deepcopy(get_variant("minivlm-tee-tiny"))


CLASS_NAMES = dict(_tiny_variant().tee["id2label"])
ATTRIBUTE_NAMES = dict(_tiny_variant().tee["attribute_id2label"])


def tiny_tee_config(**overrides):
    """The tiny TEE of the `minivlm-tee-tiny` variant (``minivlm_hf.hub.variants.TINY_TEE``): timm
    `test_efficientnet` backbone, 16-channel single-cell BiFPN, 32-d regions, 4 classes, 3 attributes."""
    from minivlm_hf.modeling.configuration_minivlm_tee import TEEConfig

    return TEEConfig(**{**_tiny_variant().tee, **overrides})


def tiny_image_processor(**overrides):
    from minivlm_hf.modeling.image_processing_minivlm import MiniVLMImageProcessor

    return MiniVLMImageProcessor(**{**_tiny_variant().image_processor, **overrides})


def padded_pair_batch(seed=0):
    """Two images of different sizes (64x64 and 48x96), padded like the image processor does: (pixels, mask)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.zeros(2, 3, 64, 96)
    pixel_values[0, :, :64, :64] = torch.randn(3, 64, 64, generator=generator)
    pixel_values[1, :, :48, :96] = torch.randn(3, 48, 96, generator=generator)
    pixel_mask = torch.zeros(2, 64, 96, dtype=torch.long)
    pixel_mask[0, :64, :64] = 1
    pixel_mask[1, :48, :96] = 1
    return pixel_values, pixel_mask


def synthetic_scene(rects, height=64, width=64, background=(128, 128, 128), image_id=0):
    """
    Draw rectangles on a plain background.

    Args:
        rects: list of `(x1, y1, x2, y2, class_id)` in pixels.
    Returns:
        `(image, annotation)`: a uint8 `(height, width, 3)` array and a COCO detection dict whose objects carry
        `attribute_ids` (small / large by area, plus wide when wider than tall).
    """
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = background
    objects = []
    for x1, y1, x2, y2, class_id in rects:
        image[y1:y2, x1:x2] = COLOURS[class_id]
        w, h = x2 - x1, y2 - y1
        attributes = [0 if w * h < 400 else 1] + ([2] if w > h else [])
        objects.append(
            {"bbox": [x1, y1, w, h], "category_id": class_id, "area": w * h, "iscrowd": 0, "attribute_ids": attributes}
        )
    return image, {"image_id": image_id, "annotations": objects}


def model_labels(annotation, height, width):
    """COCO dict -> the model's label dict (normalised cxcywh relative to the image)."""
    boxes, classes, attributes = [], [], []
    for obj in annotation["annotations"]:
        x, y, w, h = obj["bbox"]
        boxes.append([(x + w / 2) / width, (y + h / 2) / height, w / width, h / height])
        classes.append(obj["category_id"])
        attributes.append(obj["attribute_ids"] + [-1] * (2 - len(obj["attribute_ids"])))
    return {
        "class_labels": torch.tensor(classes, dtype=torch.long),
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "attribute_labels": torch.tensor(attributes, dtype=torch.long).reshape(len(classes), 2),
    }


def register_tee_auto_classes():
    """Register the TEE classes with the Auto classes of this process (idempotent)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection

    from minivlm_hf.modeling.configuration_minivlm_tee import TEEConfig
    from minivlm_hf.modeling.image_processing_minivlm import MiniVLMImageProcessor
    from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection, TEEModel

    AutoConfig.register("minivlm_tee", TEEConfig, exist_ok=True)
    AutoModel.register(TEEConfig, TEEModel, exist_ok=True)
    AutoModelForObjectDetection.register(TEEConfig, TEEForObjectDetection, exist_ok=True)
    AutoImageProcessor.register(TEEConfig, image_processor_classes=MiniVLMImageProcessor.backend_classes(), exist_ok=True)
