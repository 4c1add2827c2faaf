# Copyright 2025 The minivlm-hf authors.
# Licensed under the MIT license.
"""Training targets and losses of the TEE detector (`TEEForObjectDetection`): first stage (anchors: focal loss +
smooth-L1) and second stage (sampled RoIs: class cross-entropy, attribute BCE, box smooth-L1).

Remote-code file: imports only torch, torchvision and, relatively, `modeling_minivlm_tee_layers`.
"""

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import box_iou, sigmoid_focal_loss

from .modeling_minivlm_tee_layers import _cxcywh_to_xyxy, encode_boxes


def prepare_detection_targets(config, labels: list, image_sizes: torch.Tensor, device: torch.device) -> list:
    """The `labels` of a detection batch (one dict per image: `class_labels` `(n,)`, `boxes` `(n, 4)` normalised
    cxcywh, optional `attribute_labels`) checked (a clear error naming the image and the field) and converted to
    absolute xyxy boxes, class ids and multi-hot attributes; boxes without area are dropped."""
    if len(labels) != image_sizes.shape[0]:
        raise ValueError(f"Got {len(labels)} label dicts for a batch of {image_sizes.shape[0]} images.")
    targets = []
    for index, target in enumerate(labels):
        if "class_labels" not in target or "boxes" not in target:
            raise ValueError(f"labels[{index}] needs the keys 'class_labels' and 'boxes'.")
        classes = torch.as_tensor(target["class_labels"], device=device).long().reshape(-1)
        boxes = torch.as_tensor(target["boxes"], device=device, dtype=torch.float32).reshape(-1, 4)
        if classes.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"labels[{index}] has {classes.shape[0]} class labels but {boxes.shape[0]} boxes."
            )
        if classes.numel() and (classes.min() < 0 or classes.max() >= config.num_labels):
            raise ValueError(
                f"labels[{index}]['class_labels'] must be in [0, {config.num_labels - 1}], got "
                f"{classes.tolist()}."
            )
        height, width = image_sizes[index].tolist()
        scale = boxes.new_tensor([width, height, width, height])
        boxes_xyxy = _cxcywh_to_xyxy(boxes) * scale
        if not torch.isfinite(boxes).all():
            raise ValueError(f"labels[{index}]['boxes'] contains NaN or infinite values.")
        attributes = _attribute_targets(config, target.get("attribute_labels"), classes.shape[0], index, device)
        # Boxes without area cannot be matched by IoU: drop them (with their class and attributes).
        keep = (boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1])
        if not bool(keep.all()):
            classes, boxes_xyxy = classes[keep], boxes_xyxy[keep]
            attributes = attributes[keep] if attributes is not None else None
        targets.append({"class_labels": classes, "boxes": boxes_xyxy, "attributes": attributes})
    return targets

def _attribute_targets(config, attributes, num_objects: int, index: int, device) -> torch.Tensor | None:
    """Multi-hot `(n, num_attributes)` float targets from indices `(n, k)` / `(n,)` (negative = padding) or
    a bool / float multi-hot `(n, num_attributes)`; `None` when not annotated."""
    if attributes is None:
        return None
    num_attributes = config.num_attributes
    attributes = torch.as_tensor(attributes, device=device)
    if attributes.dtype == torch.bool or attributes.is_floating_point():
        if attributes.shape != (num_objects, num_attributes):
            raise ValueError(
                f"labels[{index}]['attribute_labels'] as a multi-hot tensor must have shape "
                f"({num_objects}, {num_attributes}), got {tuple(attributes.shape)}."
            )
        return (attributes > 0).float()
    if attributes.ndim == 1:
        attributes = attributes[:, None]
    if attributes.ndim != 2 or attributes.shape[0] != num_objects:
        raise ValueError(
            f"labels[{index}]['attribute_labels'] as attribute ids must have shape ({num_objects}, k), got "
            f"{tuple(attributes.shape)}."
        )
    attributes = attributes.long()
    if attributes.numel() and attributes.max() >= num_attributes:
        raise ValueError(
            f"labels[{index}]['attribute_labels'] ids must be < num_attributes ({num_attributes}); "
            f"got {int(attributes.max())}."
        )
    multi_hot = torch.zeros((num_objects, num_attributes), device=device)
    valid = attributes >= 0
    rows = torch.arange(num_objects, device=device)[:, None].expand_as(attributes)
    multi_hot[rows[valid], attributes[valid]] = 1.0
    return multi_hot

def first_stage_loss(config, state, targets: list) -> tuple:
    """First stage (anchors): sigmoid focal loss of the objectness and smooth-L1 of the positive anchors' deltas,
    both normalised by the number of positive anchors. Returns `(objectness loss, box loss)`."""
    matcher = Matcher(config.rpn_fg_iou_threshold, config.rpn_bg_iou_threshold, allow_low_quality_matches=True)
    anchors = state.anchors
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    cls_loss = state.objectness.sum() * 0.0
    box_loss = state.anchor_deltas.sum() * 0.0
    num_positive = 0
    for index, target in enumerate(targets):
        height, width = state.image_sizes[index].tolist()
        valid = (centers[:, 0] < width) & (centers[:, 1] < height)  # anchors centred on padding are ignored
        gt_boxes = target["boxes"]
        labels = torch.zeros_like(state.objectness[index], dtype=torch.float32)
        if gt_boxes.shape[0] > 0:
            matches = matcher(box_iou(gt_boxes, anchors))
            positive = matches >= 0
            labels[positive] = 1.0
            valid = (valid & (matches != Matcher.BETWEEN_THRESHOLDS)) | positive
            positive_index = torch.nonzero(positive).squeeze(1)
            if positive_index.numel() > 0:
                box_targets = encode_boxes(
                    gt_boxes[matches[positive_index]], anchors[positive_index], config.rpn_box_coder_weights
                )
                box_loss = box_loss + F.smooth_l1_loss(
                    state.anchor_deltas[index, positive_index].float(),
                    box_targets,
                    beta=config.rpn_smooth_l1_beta,
                    reduction="sum",
                )
                num_positive += positive_index.numel()
        cls_loss = cls_loss + sigmoid_focal_loss(
            state.objectness[index, valid].float(),
            labels[valid],
            alpha=config.focal_alpha,
            gamma=config.focal_gamma,
            reduction="sum",
        )
    normaliser = max(num_positive, 1)
    return cls_loss / normaliser, box_loss / normaliser

def second_stage_loss(config, state, targets: list, second_stage) -> tuple:
    """Second stage on RoIs sampled from the proposals and the ground-truth boxes: cross-entropy over the classes +
    background, multi-label BCE of the attributes (positives with annotated attributes) and smooth-L1 of the
    class-agnostic box refinement. `second_stage(features, boxes, batch_index)` is the TEE's RoIAlign + heads.
    Returns `(class loss, attribute loss, box loss)`."""
    background = config.num_labels
    matcher = Matcher(config.roi_fg_iou_threshold, config.roi_bg_iou_threshold, allow_low_quality_matches=False)
    sampler = BalancedPositiveNegativeSampler(config.roi_batch_size_per_image, config.roi_positive_fraction)
    device = state.proposals.device
    roi_boxes, roi_batch, class_targets, box_targets, attribute_targets, attribute_valid = [], [], [], [], [], []
    for index, target in enumerate(targets):
        gt_boxes = target["boxes"]
        candidates = torch.cat((state.proposals[state.proposal_batch_index == index], gt_boxes), dim=0)
        if gt_boxes.shape[0] > 0:
            matches = matcher(box_iou(gt_boxes, candidates))
        else:
            matches = torch.full((candidates.shape[0],), Matcher.BELOW_LOW_THRESHOLD, device=device)
        sampling_labels = torch.where(matches >= 0, 1, torch.where(matches == Matcher.BELOW_LOW_THRESHOLD, 0, -1))
        positive_mask, negative_mask = sampler([sampling_labels])
        selected = torch.nonzero(positive_mask[0].bool() | negative_mask[0].bool()).squeeze(1)
        selected_matches = matches[selected]
        is_positive = selected_matches >= 0
        matched_gt = selected_matches.clamp(min=0)
        boxes = candidates[selected]
        roi_boxes.append(boxes)
        roi_batch.append(torch.full((selected.numel(),), index, dtype=torch.long, device=device))
        if gt_boxes.shape[0] > 0:
            classes = torch.where(is_positive, target["class_labels"][matched_gt], background)
            box_targets.append(encode_boxes(gt_boxes[matched_gt], boxes, config.roi_box_coder_weights))
        else:
            classes = torch.full((selected.numel(),), background, dtype=torch.long, device=device)
            box_targets.append(boxes.new_zeros((selected.numel(), 4)))
        class_targets.append(classes)
        attributes = target["attributes"]
        if attributes is not None and gt_boxes.shape[0] > 0:
            selected_attributes = attributes[matched_gt]
            attribute_targets.append(selected_attributes)
            attribute_valid.append(is_positive & (selected_attributes.sum(1) > 0))
        else:
            attribute_targets.append(torch.zeros((selected.numel(), config.num_attributes), device=device))
            attribute_valid.append(torch.zeros((selected.numel(),), dtype=torch.bool, device=device))

    roi_boxes = torch.cat(roi_boxes)
    roi_batch = torch.cat(roi_batch)
    class_targets = torch.cat(class_targets)
    box_targets = torch.cat(box_targets)
    attribute_targets = torch.cat(attribute_targets)
    attribute_valid = torch.cat(attribute_valid)
    _, class_logits, attribute_logits, box_deltas = second_stage(state.features, roi_boxes, roi_batch)
    if class_targets.numel() == 0:
        zero = class_logits.sum() * 0.0
        return zero, zero, zero
    cls_loss = F.cross_entropy(class_logits.float(), class_targets)
    positive = class_targets != background
    box_loss = F.smooth_l1_loss(
        box_deltas[positive].float(), box_targets[positive], beta=config.roi_smooth_l1_beta, reduction="sum"
    ) / class_targets.numel()
    if attribute_valid.any():
        attribute_loss = F.binary_cross_entropy_with_logits(
            attribute_logits[attribute_valid].float(), attribute_targets[attribute_valid], reduction="sum"
        ) / attribute_valid.sum()
    else:
        attribute_loss = attribute_logits.sum() * 0.0
    return cls_loss, attribute_loss, box_loss
