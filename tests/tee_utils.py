"""Helpers for the TEE tests: a tiny config, synthetic scenes of coloured rectangles, local Auto registration.

Run as a script (`python tests/tee_utils.py`) to (re)write `hub_configs/minivlm-tee` (TEE-B0 paper settings)
and `hub_configs/minivlm-tee-tiny` (the tiny test config) from the config / image-processor classes.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch


REPO_ROOT = Path(__file__).resolve().parents[1]

COLOURS = {0: (220, 30, 30), 1: (30, 200, 40), 2: (40, 60, 230), 3: (240, 220, 30)}
CLASS_NAMES = {0: "red box", 1: "green box", 2: "blue box", 3: "yellow box"}
ATTRIBUTE_NAMES = {0: "small", 1: "large", 2: "wide"}


def tiny_tee_config(**overrides):
    """Tiny TEE: timm `test_efficientnet` backbone, 16-channel single-cell BiFPN, 32-d regions, 4 classes,
    3 attributes, small proposal counts. Builds in ~20 ms and runs a 64 px image in a few ms."""
    from minivlm_hf.modeling.configuration_minivlm_tee import TEEConfig

    kwargs = {
        "backbone": "test_efficientnet",
        "bifpn_channels": 16,
        "bifpn_num_cells": 1,
        "box_head_dim": 32,
        "id2label": dict(CLASS_NAMES),
        "attribute_id2label": dict(ATTRIBUTE_NAMES),
        "anchor_sizes": [16, 32, 64, 128, 256],
        "pre_nms_top_k": 50,
        "post_nms_top_k": 20,
        "num_regions": 10,
        "roi_batch_size_per_image": 16,
        "image_size": 128,
    }
    kwargs.update(overrides)
    return TEEConfig(**kwargs)


def tiny_image_processor(**overrides):
    from minivlm_hf.modeling.image_processing_minivlm import MiniVLMImageProcessor

    kwargs = {"size": {"longest_edge": 64}}
    kwargs.update(overrides)
    return MiniVLMImageProcessor(**kwargs)


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


# ----------------------------------------------------------------------------------------------------------------
# hub_configs
# ----------------------------------------------------------------------------------------------------------------

# What `save_pretrained` writes for a registered TEEForObjectDetection (see modeling/remote_code_minivlm.py).
IMAGE_PROCESSOR_AUTO_MAP = {
    "AutoImageProcessor": {
        "torchvision": "image_processing_minivlm.MiniVLMImageProcessor",
        "pil": "image_processing_pil_minivlm.MiniVLMImageProcessorPil",
    }
}
HUB_AUTO_MAP = {
    "AutoConfig": "configuration_minivlm_tee.TEEConfig",
    "AutoModel": "modeling_minivlm_tee.TEEModel",
    "AutoModelForObjectDetection": "modeling_minivlm_tee.TEEForObjectDetection",
    **IMAGE_PROCESSOR_AUTO_MAP,
}


def hub_config_dicts():
    """`{variant: {"config.json": dict, "preprocessor_config.json": dict}}` built from the classes."""
    from minivlm_hf.modeling.configuration_minivlm_tee import TEEConfig
    from minivlm_hf.modeling.image_processing_minivlm import MiniVLMImageProcessor

    variants = {
        "minivlm-tee": (TEEConfig(), MiniVLMImageProcessor()),
        "minivlm-tee-tiny": (tiny_tee_config(), tiny_image_processor()),
    }
    result = {}
    for name, (config, processor) in variants.items():
        config.architectures = ["TEEForObjectDetection"]
        config_dict = config.to_diff_dict()
        config_dict["auto_map"] = json.loads(json.dumps(HUB_AUTO_MAP))
        config_dict.pop("transformers_version", None)
        processor_dict = processor.to_dict()
        processor_dict["auto_map"] = json.loads(json.dumps(IMAGE_PROCESSOR_AUTO_MAP))
        result[name] = {"config.json": config_dict, "preprocessor_config.json": processor_dict}
    return result


def write_hub_configs(root=REPO_ROOT / "hub_configs"):
    for variant, files in hub_config_dicts().items():
        folder = Path(root) / variant
        folder.mkdir(parents=True, exist_ok=True)
        for filename, content in files.items():
            (folder / filename).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
            print(f"wrote {folder / filename}", file=sys.stderr)


if __name__ == "__main__":
    write_hub_configs()
