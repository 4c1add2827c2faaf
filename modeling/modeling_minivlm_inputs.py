"""Input helpers of the MiniVLM fusion model: the tag phrases chosen from a TEE's detections
(`select_tag_phrases`, shared with the feature extraction of the minivlm_hf recipes) and the validation of
precomputed region inputs (`region_geometry_check`).

Remote-code file: imports only torch.
"""

from __future__ import annotations

import torch
from transformers.utils import is_tracing

BOX_TOLERANCE = 1e-3


def select_tag_phrases(
    labels, scores, mask, threshold: float, attribute_scores=None, attribute_threshold: float = 0.5,
    max_attributes: int = 2, order: str = "score", boxes=None,
) -> list[tuple]:
    """The tags of one image as `(class id, attribute ids)` phrases, most confident region first (or largest box
    first, `order="area"`).

    Regions count when `mask` is set and `scores >= threshold`. Without `attribute_scores` (shape
    `(num_regions, num_attributes)`, probabilities) each class appears once with no attributes (OSCAR tags). With
    them every kept region is a phrase (repeats kept: they carry counts) naming up to `max_attributes` attributes
    whose probability is `>= attribute_threshold` (the most probable), listed in vocabulary order. The feature
    extraction of the minivlm_hf training recipes calls this same function, so precomputed tags and tags made
    from pixels agree. `order="area"` lists the chosen phrases largest box first (`boxes`: `(num_regions, 4)` xyxy;
    ties keep the score order; without attributes a class counts with its most confident region)."""
    labels, scores, mask = torch.as_tensor(labels), torch.as_tensor(scores).float(), torch.as_tensor(mask).bool()
    keep = mask & (scores >= threshold)
    ranked = torch.argsort(scores.masked_fill(~keep, -1.0), descending=True, stable=True)[: int(keep.sum())]
    phrases, seen = [], set()
    for idx in ranked.tolist():
        label = int(labels[idx])
        if attribute_scores is None:
            if label not in seen:
                seen.add(label)
                phrases.append((label, [], idx))
            continue
        probs = torch.as_tensor(attribute_scores[idx]).float()
        top = torch.argsort(probs, descending=True, stable=True)[:max_attributes]
        phrases.append((label, sorted(int(a) for a in top.tolist() if float(probs[a]) >= attribute_threshold), idx))
    if order == "area":
        if boxes is None:
            raise ValueError("tag order 'area' needs the regions' boxes")
        boxes = torch.as_tensor(boxes).float()
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
        phrases = sorted(phrases, key=lambda phrase: -area[phrase[2]])  # stable: equal areas keep the score order
    elif order != "score":
        raise ValueError(f"tag order must be 'score' or 'area', got {order!r}")
    return [phrase[:2] for phrase in phrases]


def region_geometry_check(region_features, region_boxes, region_mask, config):
    """Validate precomputed region inputs and return them truncated to `config.max_regions`."""
    if region_boxes is None:
        raise ValueError("region_features were given without region_boxes (normalised xyxy, shape (batch, regions, 4))")
    if region_features.dim() != 3:
        raise ValueError(f"region_features must have shape (batch, regions, features), got {tuple(region_features.shape)}")
    if region_features.shape[-1] != config.region_feature_size:
        raise ValueError(
            f"region_features have {region_features.shape[-1]} features per region but the model expects "
            f"config.region_feature_size={config.region_feature_size}"
        )
    if region_boxes.shape[:2] != region_features.shape[:2] or region_boxes.shape[-1] != 4:
        raise ValueError(
            f"region_boxes must have shape {tuple(region_features.shape[:2]) + (4,)} (normalised xyxy), "
            f"got {tuple(region_boxes.shape)}"
        )
    if region_mask is None:
        region_mask = torch.ones(region_features.shape[:2], dtype=torch.bool, device=region_features.device)
    elif region_mask.shape != region_features.shape[:2]:
        raise ValueError(f"region_mask must have shape {tuple(region_features.shape[:2])}, got {tuple(region_mask.shape)}")
    region_mask = region_mask.bool()
    if is_tracing(region_boxes):  # value checks are data-dependent: not under torch.compile / export / ONNX
        limit = config.max_regions
        return region_features[:, :limit], region_boxes[:, :limit].clamp(0, 1), region_mask[:, :limit]
    real = region_boxes[region_mask]
    if real.numel():
        if not torch.isfinite(real).all():
            raise ValueError("region_boxes contain NaN or inf")
        if real.min() < -BOX_TOLERANCE or real.max() > 1 + BOX_TOLERANCE:
            raise ValueError(
                "region_boxes must be normalised xyxy in [0, 1] (divide pixel boxes by the image width/height); "
                f"got values in [{real.min().item():.3f}, {real.max().item():.3f}]"
            )
        if (real[:, 2:] < real[:, :2] - BOX_TOLERANCE).any():
            raise ValueError("region_boxes must be xyxy with x2 >= x1 and y2 >= y1")
    if not torch.isfinite(region_features[region_mask]).all():
        raise ValueError("region_features contain NaN or inf")
    limit = config.max_regions
    return region_features[:, :limit], region_boxes[:, :limit].clamp(0, 1), region_mask[:, :limit]
