# Copyright 2025 The minivlm-hf authors.
# Licensed under the MIT license.
"""MiniVLM TEE: the Two-stage Efficient feature Extractor of MiniVLM (Wang et al. 2020) as transformers models.

Pipeline (shapes for a batch of B images padded to H x W):

    pixel_values (B, 3, H, W) ──► EfficientNet (timm, features_only) ──► C3, C4, C5 (strides 8, 16, 32)
      ──► BiFPN (P3 ... P7, `bifpn_channels` each, `bifpn_num_cells` cells, fast normalised fusion)
      ──► first stage: shared head ──► objectness (B, N) + anchor deltas (B, N, 4) over N anchors
      ──► proposals: top-k per level, decode, clip, NMS, `post_nms_top_k` per image
      ──► second stage: multi-level RoIAlign (4x4, P3-P6) ──► flatten ──► FC-ReLU-FC-ReLU = region feature
      ──► class logits (num_labels + 1, last = background), attribute logits, class-agnostic box deltas
      ──► scores / refined boxes ──► NMS ──► the `num_regions` most confident regions per image.

This file is self-contained remote code: it imports only torch, torchvision, timm, transformers and, relatively,
``configuration_minivlm_tee``.
"""

import math
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import batched_nms, box_iou, roi_align, sigmoid_focal_loss
from transformers import initialization as init
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_minivlm_tee import TEEConfig
from .remote_code_minivlm import MiniVLMRemoteCodeMixin  # minivlm-hf hub: complete auto_map on save


# Largest log-scale a box delta may apply (boxes at most ~62x bigger than their anchor / proposal).
_BOX_SCALE_CLAMP = math.log(1000.0 / 16)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TEEModelOutput(ModelOutput):
    r"""
    Regions extracted by [`TEEModel`]. K is the largest number of regions kept for an image of the batch (at most
    `config.num_regions`; it can be 0); rows of an image with fewer regions are padding, marked by `region_mask`.

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, K, num_labels + 1)`):
            Class logits of the kept regions; the last column is background / no-object.
        pred_boxes (`torch.FloatTensor` of shape `(batch_size, K, 4)`):
            Region boxes as normalised `(center_x, center_y, width, height)` relative to the unpadded image.
        attribute_logits (`torch.FloatTensor` of shape `(batch_size, K, num_attributes)`):
            Attribute logits (independent sigmoids, multi-label).
        region_features (`torch.FloatTensor` of shape `(batch_size, K, box_head_dim)`):
            Region features: output of the second FC layer (after ReLU) of the box head.
        region_boxes (`torch.FloatTensor` of shape `(batch_size, K, 4)`):
            Region boxes as normalised `(x1, y1, x2, y2)` in [0, 1], relative to the unpadded image.
        region_scores (`torch.FloatTensor` of shape `(batch_size, K)`):
            Highest non-background class probability of each region.
        region_labels (`torch.LongTensor` of shape `(batch_size, K)`):
            Class id (`0 .. num_labels - 1`) of that probability.
        region_mask (`torch.BoolTensor` of shape `(batch_size, K)`):
            `True` for real regions, `False` for padding rows (whose other fields are zeros).
        feature_maps (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            BiFPN outputs P3 ... P7, each `(batch_size, bifpn_channels, H / 2**level, W / 2**level)` (of the
            input padded to a multiple of `2**max_level`).
    """

    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    attribute_logits: torch.FloatTensor | None = None
    region_features: torch.FloatTensor | None = None
    region_boxes: torch.FloatTensor | None = None
    region_scores: torch.FloatTensor | None = None
    region_labels: torch.LongTensor | None = None
    region_mask: torch.BoolTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class TEEObjectDetectionOutput(ModelOutput):
    r"""
    Output of [`TEEForObjectDetection`]: the fields of [`TEEModelOutput`] plus the losses.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
            Weighted sum of the entries of `loss_dict` (weights from the config).
        loss_dict (`dict[str, torch.FloatTensor]`, *optional*, returned when `labels` are given):
            Unweighted losses: `loss_objectness` (first-stage focal loss), `loss_rpn_box` (first-stage smooth-L1),
            `loss_classifier` (second-stage cross-entropy), `loss_attribute` (second-stage multi-label BCE),
            `loss_box_reg` (second-stage smooth-L1).
        logits, pred_boxes, attribute_logits, region_features, region_boxes, region_scores, region_labels,
        region_mask, feature_maps:
            As in [`TEEModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    attribute_logits: torch.FloatTensor | None = None
    region_features: torch.FloatTensor | None = None
    region_boxes: torch.FloatTensor | None = None
    region_scores: torch.FloatTensor | None = None
    region_labels: torch.LongTensor | None = None
    region_mask: torch.BoolTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class _TEEState:
    """Intermediate results of one TEE pass (internal; not a public output)."""

    features: list  # BiFPN maps P3..P7, each (B, C, H_l, W_l)
    image_sizes: torch.Tensor  # (B, 2) valid (height, width) in pixels, float
    objectness: torch.Tensor  # (B, N) first-stage logits
    anchor_deltas: torch.Tensor  # (B, N, 4)
    anchors: torch.Tensor  # (N, 4) xyxy pixels
    proposals: torch.Tensor  # (P, 4) xyxy pixels, all images concatenated (grouped by image)
    proposal_batch_index: torch.Tensor  # (P,)
    regions: dict  # packed region fields (see `TEEModelOutput`)


# ----------------------------------------------------------------------------------------------------------------
# Box utilities (vectorised; boxes are (x1, y1, x2, y2) in pixels unless stated otherwise)
# ----------------------------------------------------------------------------------------------------------------


def encode_boxes(targets: torch.Tensor, references: torch.Tensor, weights) -> torch.Tensor:
    """Regression targets `(dx, dy, dw, dh)` turning `references` (..., 4) into `targets` (..., 4)."""
    wx, wy, ww, wh = weights
    ref_w = references[..., 2] - references[..., 0]
    ref_h = references[..., 3] - references[..., 1]
    ref_x = references[..., 0] + 0.5 * ref_w
    ref_y = references[..., 1] + 0.5 * ref_h
    tgt_w = targets[..., 2] - targets[..., 0]
    tgt_h = targets[..., 3] - targets[..., 1]
    tgt_x = targets[..., 0] + 0.5 * tgt_w
    tgt_y = targets[..., 1] + 0.5 * tgt_h
    eps = torch.finfo(torch.float32).eps
    ref_w = ref_w.clamp(min=eps)
    ref_h = ref_h.clamp(min=eps)
    return torch.stack(
        (
            wx * (tgt_x - ref_x) / ref_w,
            wy * (tgt_y - ref_y) / ref_h,
            ww * torch.log(tgt_w.clamp(min=eps) / ref_w),
            wh * torch.log(tgt_h.clamp(min=eps) / ref_h),
        ),
        dim=-1,
    )


def decode_boxes(deltas: torch.Tensor, references: torch.Tensor, weights) -> torch.Tensor:
    """Apply `deltas` (..., 4) to `references` (..., 4); inverse of [`encode_boxes`]."""
    wx, wy, ww, wh = weights
    deltas = deltas.float()
    references = references.float()
    ref_w = references[..., 2] - references[..., 0]
    ref_h = references[..., 3] - references[..., 1]
    ref_x = references[..., 0] + 0.5 * ref_w
    ref_y = references[..., 1] + 0.5 * ref_h
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=_BOX_SCALE_CLAMP)
    dh = (deltas[..., 3] / wh).clamp(max=_BOX_SCALE_CLAMP)
    ctr_x = dx * ref_w + ref_x
    ctr_y = dy * ref_h + ref_y
    half_w = 0.5 * torch.exp(dw) * ref_w
    half_h = 0.5 * torch.exp(dh) * ref_h
    return torch.stack((ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h), dim=-1)


def clip_boxes(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """Clip `boxes` (..., 4) to `[0, width] x [0, height]`; `image_sizes` (..., 2) = (height, width), broadcastable."""
    width_height = image_sizes.flip(-1).to(boxes.dtype)
    upper = torch.cat((width_height, width_height), dim=-1)
    return torch.minimum(boxes.clamp(min=0), upper)


def _xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def _top_k_per_image(order: torch.Tensor, batch_index: torch.Tensor, k: int, batch_size: int):
    """
    Keep the first `k` entries of every image.

    Args:
        order (`torch.LongTensor` of shape `(M,)`): indices, sorted by decreasing score.
        batch_index (`torch.LongTensor` of shape `(M,)`): image of each entry of `order`.
    Returns:
        `(kept, rank)`: the kept indices grouped by image (decreasing score inside an image) and their rank
        inside their image (0 = best).
    """
    sorted_batch, perm = torch.sort(batch_index, stable=True)
    counts = torch.bincount(sorted_batch, minlength=batch_size)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(sorted_batch.numel(), device=order.device) - starts[sorted_batch]
    keep = rank < k
    return order[perm[keep]], rank[keep]


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------


class TEEBackbone(nn.Module):
    """EfficientNet from timm returning the stride 8, 16 and 32 maps (C3, C4, C5)."""

    def __init__(self, config: TEEConfig):
        super().__init__()
        # `from_pretrained` builds the model on the meta device and then loads every weight from the checkpoint:
        # never ask timm to download ImageNet weights there.
        pretrained = bool(config.pretrained_backbone) and torch.get_default_device().type != "meta"
        self.body = timm.create_model(
            config.backbone,
            pretrained=pretrained,
            features_only=True,
            out_indices=tuple(config.backbone_out_indices),
            in_chans=config.num_channels,
        )
        reductions = list(self.body.feature_info.reduction())
        if reductions != [8, 16, 32]:
            raise ValueError(
                f"`backbone_out_indices` {list(config.backbone_out_indices)} of {config.backbone} give strides "
                f"{reductions}; the TEE needs the stride 8, 16 and 32 maps."
            )
        self.channels = list(self.body.feature_info.channels())
        for module in self.body.modules():
            module._tee_backbone = True  # `_init_weights` gives these timm-style initialisation
        if pretrained:
            # Keep the downloaded weights through `post_init`.
            for tensor in list(self.body.parameters()) + list(self.body.buffers()):
                tensor._is_hf_initialized = True

    def forward(self, pixel_values: torch.Tensor) -> list:
        return list(self.body(pixel_values))


class TEESeparableConv(nn.Module):
    """Depthwise 3x3 conv -> pointwise 1x1 conv -> BatchNorm -> swish."""

    def __init__(self, config: TEEConfig):
        super().__init__()
        channels = config.bifpn_channels
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.act = nn.SiLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.pointwise(self.depthwise(hidden_states))))


class TEEFusionNode(nn.Module):
    """BiFPN node: fast normalised fusion `sum_i relu(w_i) x_i / (sum_i relu(w_i) + eps)`, then a separable conv."""

    def __init__(self, num_inputs: int, config: TEEConfig):
        super().__init__()
        self.fusion_weights = nn.Parameter(torch.ones(num_inputs))
        self.conv = TEESeparableConv(config)

    def forward(self, inputs: list) -> torch.Tensor:
        weights = F.relu(self.fusion_weights)
        weights = weights / (weights.sum() + 1e-4)
        fused = inputs[0] * weights[0]
        for i in range(1, len(inputs)):
            fused = fused + inputs[i] * weights[i]
        return self.conv(fused)


def _upsample_to(hidden_states: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return F.interpolate(hidden_states, size=reference.shape[-2:], mode="nearest")


def _downsample_to(hidden_states: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    pooled = F.max_pool2d(hidden_states, kernel_size=3, stride=2, padding=1)
    if pooled.shape[-2:] != reference.shape[-2:]:  # only for inputs not padded to a multiple of 2**max_level
        pooled = F.adaptive_max_pool2d(hidden_states, reference.shape[-2:])
    return pooled


class TEEBiFPNCell(nn.Module):
    """One BiFPN cell over L levels: a top-down pass then a bottom-up pass, each node a weighted fusion."""

    def __init__(self, config: TEEConfig):
        super().__init__()
        num_levels = config.num_levels
        # top_down[i] produces the intermediate map of level i (0 = P3) from level i and the level above.
        self.top_down = nn.ModuleList([TEEFusionNode(2, config) for _ in range(num_levels - 1)])
        # bottom_up[i - 1] produces the output of level i from its input, its intermediate (not for the top
        # level) and the output below.
        self.bottom_up = nn.ModuleList(
            [TEEFusionNode(3 if level < num_levels - 1 else 2, config) for level in range(1, num_levels)]
        )

    def forward(self, features: list) -> list:
        num_levels = len(features)
        intermediate = [None] * num_levels
        intermediate[-1] = features[-1]
        for level in range(num_levels - 2, -1, -1):
            intermediate[level] = self.top_down[level](
                [features[level], _upsample_to(intermediate[level + 1], features[level])]
            )
        outputs = [intermediate[0]]
        for level in range(1, num_levels):
            inputs = [features[level]]
            if level < num_levels - 1:
                inputs.append(intermediate[level])
            inputs.append(_downsample_to(outputs[-1], features[level]))
            outputs.append(self.bottom_up[level - 1](inputs))
        return outputs


class TEEProjection(nn.Module):
    """1x1 conv + BatchNorm (channel projection of a backbone map)."""

    def __init__(self, in_channels: int, config: TEEConfig):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, config.bifpn_channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(config.bifpn_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(hidden_states))


class TEEBiFPN(nn.Module):
    """
    BiFPN neck. C3-C5 are projected to `bifpn_channels` (1x1 conv + BN); P6 = max-pool(BN(conv1x1(C5))) and each
    further level is a stride-2 max-pool of the one below; then `bifpn_num_cells` cells. Returns P3 ... P`max_level`.
    """

    def __init__(self, config: TEEConfig, in_channels: list):
        super().__init__()
        self.lateral = nn.ModuleList([TEEProjection(channels, config) for channels in in_channels])
        self.extra_projection = TEEProjection(in_channels[-1], config) if config.max_level > 5 else None
        self.num_extra_levels = config.max_level - 5
        self.cells = nn.ModuleList([TEEBiFPNCell(config) for _ in range(config.bifpn_num_cells)])

    def forward(self, backbone_features: list) -> list:
        features = [proj(feature) for proj, feature in zip(self.lateral, backbone_features)]
        if self.num_extra_levels > 0:
            extra = F.max_pool2d(self.extra_projection(backbone_features[-1]), kernel_size=3, stride=2, padding=1)
            features.append(extra)
            for _ in range(self.num_extra_levels - 1):
                features.append(F.max_pool2d(features[-1], kernel_size=3, stride=2, padding=1))
        for cell in self.cells:
            features = cell(features)
        return features


class TEEAnchorGenerator(nn.Module):
    """
    Anchors of every pyramid level: `len(anchor_aspect_ratios)` anchors of size `anchor_sizes[level]` centred on
    every cell `((x + 0.5) * stride, (y + 0.5) * stride)`. Ordered level by level, then (y, x, anchor) like the
    flattened head outputs. No parameters or buffers; the grids are cached per feature-map shape.
    """

    def __init__(self, config: TEEConfig):
        super().__init__()
        self.strides = [2**level for level in range(config.min_level, config.max_level + 1)]
        self.sizes = [float(size) for size in config.anchor_sizes]
        self.aspect_ratios = [float(ratio) for ratio in config.anchor_aspect_ratios]
        self._cache = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.aspect_ratios)

    def forward(self, feature_shapes: list, device: torch.device) -> tuple:
        """
        Args:
            feature_shapes (`list[tuple[int, int]]`): (height, width) of every level's map, P3 first.
        Returns:
            `(anchors, level_sizes)`: anchors `(N, 4)` float32 xyxy pixels and the number of anchors per level.
        """
        key = (tuple(tuple(shape) for shape in feature_shapes), str(device))
        if key not in self._cache:
            if len(self._cache) > 32:
                self._cache.clear()
            ratios = torch.tensor(self.aspect_ratios, dtype=torch.float32, device=device)
            height_scale = torch.sqrt(ratios)
            anchors, level_sizes = [], []
            for (height, width), stride, size in zip(feature_shapes, self.strides, self.sizes):
                half_w = size / height_scale / 2
                half_h = size * height_scale / 2
                cell = torch.stack((-half_w, -half_h, half_w, half_h), dim=-1)  # (A, 4)
                ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) * stride
                xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) * stride
                grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
                centers = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=-1).reshape(-1, 1, 4)
                level_anchors = (centers + cell[None]).reshape(-1, 4)
                anchors.append(level_anchors)
                level_sizes.append(level_anchors.shape[0])
            self._cache[key] = (torch.cat(anchors, dim=0), level_sizes)
        return self._cache[key]


class TEEProposalHead(nn.Module):
    """
    First-stage head shared by all levels: 3x3 conv + ReLU, then 1x1 convs for the objectness logit and the 4 box
    deltas of each anchor.
    """

    def __init__(self, config: TEEConfig, num_anchors: int):
        super().__init__()
        channels = config.bifpn_channels
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.box_deltas = nn.Conv2d(channels, num_anchors * 4, 1)
        self.objectness._tee_prior_bias = True
        self.box_deltas._tee_init_std = 0.01

    def forward(self, features: list) -> tuple:
        """Returns objectness `(B, N)` and anchor deltas `(B, N, 4)`, N = sum over levels of H_l * W_l * A."""
        objectness, deltas = [], []
        for feature in features:
            hidden = F.relu(self.conv(feature))
            logits = self.objectness(hidden)  # (B, A, H, W)
            batch_size, num_anchors, height, width = logits.shape
            objectness.append(logits.permute(0, 2, 3, 1).reshape(batch_size, -1))
            box = self.box_deltas(hidden).view(batch_size, num_anchors, 4, height, width)
            deltas.append(box.permute(0, 3, 4, 1, 2).reshape(batch_size, -1, 4))
        return torch.cat(objectness, dim=1), torch.cat(deltas, dim=1)


class TEEMultiLevelRoIAlign(nn.Module):
    """
    RoIAlign over several pyramid levels. Each RoI goes to level
    `floor(canonical_level + log2(sqrt(area) / canonical_scale))`, clamped to `[roi_min_level, roi_max_level]`.
    """

    def __init__(self, config: TEEConfig):
        super().__init__()
        self.min_level = config.min_level
        self.roi_min_level = config.roi_min_level
        self.roi_max_level = config.roi_max_level
        self.canonical_scale = float(config.roi_canonical_scale)
        self.canonical_level = config.roi_canonical_level
        self.output_size = config.roi_output_size
        self.sampling_ratio = config.roi_sampling_ratio

    def assign_levels(self, boxes: torch.Tensor) -> torch.Tensor:
        sizes = torch.sqrt(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6))
        levels = torch.floor(self.canonical_level + torch.log2(sizes / self.canonical_scale + 1e-6))
        return levels.clamp(self.roi_min_level, self.roi_max_level).long()

    def forward(self, features: list, boxes: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features (`list[torch.FloatTensor]`): pyramid maps P`min_level` ... (B, C, H_l, W_l).
            boxes (`torch.FloatTensor` of shape `(R, 4)`): xyxy pixels of the padded input.
            batch_index (`torch.LongTensor` of shape `(R,)`): image of each box.
        Returns:
            `torch.FloatTensor` of shape `(R, C, roi_output_size, roi_output_size)`.
        """
        reference = features[0]
        rois = torch.cat((batch_index.to(reference.dtype)[:, None], boxes.to(reference.dtype)), dim=1)
        pooled = reference.new_zeros((rois.shape[0], reference.shape[1], self.output_size, self.output_size))
        if rois.shape[0] == 0:
            return pooled
        levels = self.assign_levels(boxes)
        for level in range(self.roi_min_level, self.roi_max_level + 1):
            index = torch.nonzero(levels == level).squeeze(1)
            if index.numel() == 0:
                continue
            pooled[index] = roi_align(
                features[level - self.min_level],
                rois[index],
                output_size=self.output_size,
                spatial_scale=1.0 / 2**level,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            )
        return pooled


class TEEBoxHead(nn.Module):
    """Flatten the pooled RoI (C x S x S) -> FC + ReLU -> FC + ReLU: the `box_head_dim` region feature."""

    def __init__(self, config: TEEConfig):
        super().__init__()
        in_features = config.bifpn_channels * config.roi_output_size**2
        self.fc1 = nn.Linear(in_features, config.box_head_dim)
        self.fc2 = nn.Linear(config.box_head_dim, config.box_head_dim)
        self.fc1._tee_xavier = True
        self.fc2._tee_xavier = True

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(pooled.flatten(1)))))


class TEERegionPredictor(nn.Module):
    """Class logits (num_labels + 1, last = background), attribute logits and class-agnostic box deltas."""

    def __init__(self, config: TEEConfig):
        super().__init__()
        self.class_logits = nn.Linear(config.box_head_dim, config.num_labels + 1)
        self.attribute_logits = nn.Linear(config.box_head_dim, config.num_attributes)
        self.box_deltas = nn.Linear(config.box_head_dim, 4)
        self.attribute_logits._tee_prior_bias = True
        self.box_deltas._tee_init_std = 0.001

    def forward(self, region_features: torch.Tensor) -> tuple:
        return (
            self.class_logits(region_features),
            self.attribute_logits(region_features),
            self.box_deltas(region_features),
        )


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


class TEEPreTrainedModel(MiniVLMRemoteCodeMixin, PreTrainedModel):  # mixin: see remote_code_minivlm.py
    config: TEEConfig
    config_class = TEEConfig
    base_model_prefix = "tee"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    # The losses are per-batch means: the Trainer must not rescale them with `num_items_in_batch`.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """
        Backbone (timm) modules: He-normal (fan-out) convs, unit BatchNorms, as timm does for EfficientNet. Neck and
        heads: Xavier-like uniform for convs and the box-head FCs, N(0, `initializer_range`) for the predictors,
        prior-probability bias (`-log((1 - p) / p)`) for the objectness and attribute logits.
        """
        std = self.config.initializer_range
        prior_bias = -math.log((1 - self.config.prior_prob) / self.config.prior_prob)
        if isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Conv2d):
            if getattr(module, "_tee_backbone", False):
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif getattr(module, "_tee_prior_bias", False) or hasattr(module, "_tee_init_std"):
                init.normal_(module.weight, std=getattr(module, "_tee_init_std", std))
            else:
                init.kaiming_uniform_(module.weight, a=1)
            if module.bias is not None:
                if getattr(module, "_tee_prior_bias", False):
                    init.constant_(module.bias, prior_bias)
                else:
                    init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if getattr(module, "_tee_backbone", False):
                bound = 1.0 / math.sqrt(module.weight.shape[0])
                init.uniform_(module.weight, -bound, bound)
            elif getattr(module, "_tee_xavier", False):
                init.kaiming_uniform_(module.weight, a=1)
            else:
                init.normal_(module.weight, std=getattr(module, "_tee_init_std", std))
            if module.bias is not None:
                if getattr(module, "_tee_prior_bias", False):
                    init.constant_(module.bias, prior_bias)
                else:
                    init.zeros_(module.bias)
        elif isinstance(module, TEEFusionNode):
            init.ones_(module.fusion_weights)


class TEEModel(TEEPreTrainedModel):
    """
    The complete two-stage TEE extractor (no losses): pixels in, the `num_regions` most confident regions of each
    image out, with their features, boxes, class / attribute logits and scores. This is the module the MiniVLM
    fusion model embeds.

    Inputs of any size are accepted: they are padded (bottom/right, zeros) to a multiple of `2**max_level` inside
    the model, and `pixel_mask` (1 = real pixel) tells where each image of a padded batch ends, so that boxes are
    clipped to and normalised by each image's own extent.
    """

    def __init__(self, config: TEEConfig):
        super().__init__(config)
        self.backbone = TEEBackbone(config)
        self.bifpn = TEEBiFPN(config, self.backbone.channels)
        self.anchor_generator = TEEAnchorGenerator(config)
        self.proposal_head = TEEProposalHead(config, self.anchor_generator.num_anchors_per_location)
        self.roi_pooler = TEEMultiLevelRoIAlign(config)
        self.box_head = TEEBoxHead(config)
        self.predictor = TEERegionPredictor(config)
        self.post_init()

    # -- stages -----------------------------------------------------------------------------------------------

    def _prepare_inputs(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> tuple:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, {self.config.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}."
            )
        batch_size, _, height, width = pixel_values.shape
        if pixel_mask is None:
            image_sizes = torch.tensor([[height, width]], dtype=torch.float32, device=pixel_values.device)
            image_sizes = image_sizes.expand(batch_size, 2)
        else:
            if pixel_mask.shape != (batch_size, height, width):
                raise ValueError(
                    f"`pixel_mask` must have shape {(batch_size, height, width)}, got {tuple(pixel_mask.shape)}."
                )
            valid = pixel_mask > 0
            image_sizes = torch.stack((valid.any(dim=2).sum(1), valid.any(dim=1).sum(1)), dim=1).float()
            image_sizes = image_sizes.clamp(min=1)
        divisor = 2**self.config.max_level
        pad_h = (-height) % divisor
        pad_w = (-width) % divisor
        if pad_h or pad_w:
            pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))
        return pixel_values, image_sizes

    def _first_stage(self, features: list) -> tuple:
        objectness, deltas = self.proposal_head(features)
        anchors, level_sizes = self.anchor_generator([f.shape[-2:] for f in features], features[0].device)
        return objectness, deltas, anchors, level_sizes

    @torch.no_grad()
    def _select_proposals(self, objectness, deltas, anchors, level_sizes, image_sizes) -> tuple:
        """Top-k per level, decode, clip, drop tiny boxes, NMS, `post_nms_top_k` per image (no gradient)."""
        config = self.config
        batch_size = objectness.shape[0]
        objectness = objectness.float()
        top_indices, start = [], 0
        for num in level_sizes:
            k = min(config.pre_nms_top_k, num)
            top_indices.append(objectness[:, start : start + num].topk(k, dim=1).indices + start)
            start += num
        index = torch.cat(top_indices, dim=1)  # (B, M)
        scores = objectness.gather(1, index)
        selected_deltas = deltas.gather(1, index[..., None].expand(-1, -1, 4))
        boxes = decode_boxes(selected_deltas, anchors[index], config.rpn_box_coder_weights)
        boxes = clip_boxes(boxes, image_sizes[:, None, :])
        num_per_image = index.shape[1]
        batch_index = torch.arange(batch_size, device=boxes.device).repeat_interleave(num_per_image)
        boxes = boxes.reshape(-1, 4)
        scores = scores.reshape(-1)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        valid = torch.nonzero(
            (widths >= config.min_box_size) & (heights >= config.min_box_size) & (widths > 0) & (heights > 0)
            & torch.isfinite(scores)
        ).squeeze(1)
        keep = valid[batched_nms(boxes[valid], scores[valid], batch_index[valid], config.proposal_nms_iou_threshold)]
        keep, _ = _top_k_per_image(keep, batch_index[keep], config.post_nms_top_k, batch_size)
        return boxes[keep], batch_index[keep]

    def _second_stage(self, features: list, boxes: torch.Tensor, batch_index: torch.Tensor) -> tuple:
        """RoIAlign + box head + predictors for `boxes` (R, 4) of images `batch_index` (R,)."""
        pooled = self.roi_pooler(features[: self.config.roi_max_level - self.config.min_level + 1], boxes, batch_index)
        region_features = self.box_head(pooled)
        class_logits, attribute_logits, box_deltas = self.predictor(region_features)
        return region_features, class_logits, attribute_logits, box_deltas

    def _detect(self, features, proposals, proposal_batch_index, image_sizes, batch_size) -> dict:
        """Second stage on the proposals, then score, refine, NMS and keep `num_regions` per image (packed)."""
        config = self.config
        region_features, class_logits, attribute_logits, box_deltas = self._second_stage(
            features, proposals, proposal_batch_index
        )
        probs = class_logits.float().softmax(-1)
        scores, labels = probs[:, :-1].max(-1)
        proposal_sizes = image_sizes[proposal_batch_index]
        if config.ignore_box_regression:
            boxes = proposals.float()
        else:
            boxes = clip_boxes(decode_boxes(box_deltas, proposals, config.roi_box_coder_weights), proposal_sizes)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        candidates = torch.nonzero(
            (scores >= config.score_threshold)
            & (widths >= config.min_box_size)
            & (heights >= config.min_box_size)
            & (widths > 0)
            & (heights > 0)
        ).squeeze(1)
        groups = proposal_batch_index[candidates]
        if not config.detection_nms_class_agnostic:
            groups = groups * config.num_labels + labels[candidates]
        keep = candidates[
            batched_nms(
                boxes[candidates].detach(), scores[candidates].detach(), groups, config.detection_nms_iou_threshold
            )
        ]
        keep, rank = _top_k_per_image(keep, proposal_batch_index[keep], config.num_regions, batch_size)
        kept_batch = proposal_batch_index[keep]

        counts = torch.bincount(kept_batch, minlength=batch_size)
        num_slots = int(counts.max()) if counts.numel() > 0 else 0

        def pack(values: torch.Tensor) -> torch.Tensor:
            packed = values.new_zeros((batch_size, num_slots, *values.shape[1:]))
            packed[kept_batch, rank] = values
            return packed

        normaliser = torch.cat((proposal_sizes.flip(-1), proposal_sizes.flip(-1)), dim=-1)[keep]
        region_boxes = (boxes[keep] / normaliser).clamp(0, 1)
        region_mask = torch.zeros((batch_size, num_slots), dtype=torch.bool, device=boxes.device)
        region_mask[kept_batch, rank] = True
        return {
            "logits": pack(class_logits[keep]),
            "pred_boxes": pack(_xyxy_to_cxcywh(region_boxes)),
            "attribute_logits": pack(attribute_logits[keep]),
            "region_features": pack(region_features[keep]),
            "region_boxes": pack(region_boxes),
            "region_scores": pack(scores[keep]),
            "region_labels": pack(labels[keep]),
            "region_mask": region_mask,
        }

    def _run(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> _TEEState:
        pixel_values, image_sizes = self._prepare_inputs(pixel_values, pixel_mask)
        features = self.bifpn(self.backbone(pixel_values))
        objectness, deltas, anchors, level_sizes = self._first_stage(features)
        proposals, proposal_batch_index = self._select_proposals(
            objectness.detach(), deltas.detach(), anchors, level_sizes, image_sizes
        )
        regions = self._detect(features, proposals, proposal_batch_index, image_sizes, pixel_values.shape[0])
        return _TEEState(
            features=features,
            image_sizes=image_sizes,
            objectness=objectness,
            anchor_deltas=deltas,
            anchors=anchors,
            proposals=proposals,
            proposal_batch_index=proposal_batch_index,
            regions=regions,
        )

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        pixel_mask: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> TEEModelOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images (see [`MiniVLMImageProcessor`]), padded bottom/right to a common size.
            pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
                1 for real pixels, 0 for padding. Without it every image fills the whole tensor.
            output_hidden_states (`bool`, *optional*):
                Also return the BiFPN maps as `feature_maps`.
            return_dict (`bool`, *optional*):
                Return a [`TEEModelOutput`] (default) instead of a tuple.

        Returns:
            [`TEEModelOutput`] (see its fields for the shapes).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        state = self._run(pixel_values, pixel_mask)
        output = TEEModelOutput(
            **state.regions, feature_maps=tuple(state.features) if output_hidden_states else None
        )
        return output if return_dict else output.to_tuple()


class TEEForObjectDetection(TEEPreTrainedModel):
    """
    [`TEEModel`] plus its training losses: first stage sigmoid focal loss (objectness) and smooth-L1 (anchor boxes),
    second stage cross-entropy (classes + background), multi-label binary cross-entropy (attributes) and smooth-L1
    (class-agnostic box refinement) on RoIs sampled from the proposals and the ground-truth boxes. This is the class
    `AutoModelForObjectDetection` loads; its only weights are those of `self.tee`.
    """

    def __init__(self, config: TEEConfig):
        super().__init__(config)
        self.tee = TEEModel(config)
        self.post_init()

    # -- target preparation -----------------------------------------------------------------------------------

    def _prepare_targets(self, labels: list, image_sizes: torch.Tensor, device: torch.device) -> list:
        config = self.config
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
            attributes = self._attribute_targets(target.get("attribute_labels"), classes.shape[0], index, device)
            # Boxes without area cannot be matched by IoU: drop them (with their class and attributes).
            keep = (boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1])
            if not bool(keep.all()):
                classes, boxes_xyxy = classes[keep], boxes_xyxy[keep]
                attributes = attributes[keep] if attributes is not None else None
            targets.append({"class_labels": classes, "boxes": boxes_xyxy, "attributes": attributes})
        return targets

    def _attribute_targets(self, attributes, num_objects: int, index: int, device) -> torch.Tensor | None:
        """Multi-hot `(n, num_attributes)` float targets from indices `(n, k)` / `(n,)` (negative = padding) or
        a bool / float multi-hot `(n, num_attributes)`; `None` when not annotated."""
        if attributes is None:
            return None
        num_attributes = self.config.num_attributes
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

    # -- losses -----------------------------------------------------------------------------------------------

    def _first_stage_loss(self, state: _TEEState, targets: list) -> tuple:
        config = self.config
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

    def _second_stage_loss(self, state: _TEEState, targets: list) -> tuple:
        config = self.config
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
        _, class_logits, attribute_logits, box_deltas = self.tee._second_stage(state.features, roi_boxes, roi_batch)
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

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        pixel_mask: torch.LongTensor | None = None,
        labels: list | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> TEEObjectDetectionOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images, padded bottom/right to a common size.
            pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
                1 for real pixels, 0 for padding.
            labels (`list[dict]`, *optional*):
                One dict per image with `"class_labels"` (`LongTensor` `(n,)`, ids in `[0, num_labels)`),
                `"boxes"` (`FloatTensor` `(n, 4)`, normalised `(cx, cy, w, h)` relative to the unpadded image) and
                optionally `"attribute_labels"`: attribute ids (`LongTensor` `(n, k)` or `(n,)`, negative values
                are padding) or a bool / float multi-hot `(n, num_attributes)`. `n` may be 0. Objects without any
                attribute do not enter the attribute loss; boxes without area are ignored.
            output_hidden_states (`bool`, *optional*):
                Also return the BiFPN maps as `feature_maps`.
            return_dict (`bool`, *optional*):
                Return a [`TEEObjectDetectionOutput`] (default) instead of a tuple.

        Returns:
            [`TEEObjectDetectionOutput`]: the regions (as [`TEEModelOutput`]) plus `loss` and `loss_dict` when
            `labels` are given. The regions are always computed from the current proposals, in train mode too.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        state = self.tee._run(pixel_values, pixel_mask)

        loss, loss_dict = None, None
        if labels is not None:
            targets = self._prepare_targets(labels, state.image_sizes, state.objectness.device)
            loss_objectness, loss_rpn_box = self._first_stage_loss(state, targets)
            loss_classifier, loss_attribute, loss_box_reg = self._second_stage_loss(state, targets)
            loss_dict = {
                "loss_objectness": loss_objectness,
                "loss_rpn_box": loss_rpn_box,
                "loss_classifier": loss_classifier,
                "loss_attribute": loss_attribute,
                "loss_box_reg": loss_box_reg,
            }
            config = self.config
            loss = (
                config.rpn_cls_loss_weight * loss_objectness
                + config.rpn_box_loss_weight * loss_rpn_box
                + config.cls_loss_weight * loss_classifier
                + config.attribute_loss_weight * loss_attribute
                + config.box_loss_weight * loss_box_reg
            )

        output = TEEObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            **state.regions,
            feature_maps=tuple(state.features) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "TEEPreTrainedModel",
    "TEEModel",
    "TEEForObjectDetection",
    "TEEModelOutput",
    "TEEObjectDetectionOutput",
]
