"""The detector stage's collator (pixels + COCO-style targets)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...data.scenes import detection_annotations
from .base import _row_key, _stable_hash, _to_tensor


# ---------------------------------------------------------------------------------------------------------------------
# detector
# ---------------------------------------------------------------------------------------------------------------------
class DetectionCollator:
    """Scene rows (``image`` + ``objects``) -> ``pixel_values``, ``pixel_mask`` and ``labels`` (one dict per image:
    ``class_labels``, ``boxes`` normalised cxcywh, ``attribute_labels`` padded with -1, ``orig_size``, ``size``) for
    [`TEEForObjectDetection`]. ``hflip_probability`` > 0 mirrors images (and boxes) at random (a detector-only
    augmentation: shapes, colours and sizes do not change under a mirror)."""

    def __init__(self, image_processor, image_column: str = "image", hflip_probability: float = 0.0, seed: int = 0,
                 generator: torch.Generator | None = None):
        self.image_processor = image_processor
        self.image_column = image_column
        self.hflip_probability = hflip_probability
        self.seed = seed
        self.epoch = 0
        self.generator = generator

    def __call__(self, rows: Sequence[dict]) -> dict:
        if not rows:
            raise ValueError("empty batch")
        images, annotations = [], []
        generator = self.generator or torch.Generator().manual_seed(
            _stable_hash(self.seed, self.epoch, [_row_key(r) for r in rows])
        )
        for row in rows:
            if self.image_column not in row or "objects" not in row:
                raise ValueError(f"detector rows need '{self.image_column}' and 'objects' columns, got {sorted(row)}")
            image, target = row[self.image_column], detection_annotations(row)
            if self.hflip_probability and float(torch.rand((), generator=generator)) < self.hflip_probability:
                from PIL import ImageOps

                image = ImageOps.mirror(image.convert("RGB"))
                width = image.size[0]
                for ann in target["annotations"]:
                    x, y, w, h = ann["bbox"]
                    ann["bbox"] = [width - x - w, y, w, h]
            images.append(image)
            annotations.append(target)
        encoded = self.image_processor(images=images, annotations=annotations, return_tensors="pt")
        labels = []
        for label in encoded["labels"]:
            labels.append({k: _to_tensor(v) for k, v in label.items()})
        return {"pixel_values": encoded["pixel_values"], "pixel_mask": encoded["pixel_mask"], "labels": labels}
