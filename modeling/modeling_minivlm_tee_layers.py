# Copyright 2025 The minivlm-hf authors.
# Licensed under the MIT license.
"""Building blocks of the MiniVLM TEE: box coding, the EfficientNet backbone, BiFPN, anchors, the proposal head,
multi-level RoIAlign and the second-stage box head / predictor. The models themselves are in
``modeling_minivlm_tee.py``.

Self-contained remote code: imports only torch, torchvision, timm, transformers and sibling files.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from .configuration_minivlm_tee import TEEConfig

# Largest log-scale a box delta may apply (boxes at most ~62x bigger than their anchor / proposal).
_BOX_SCALE_CLAMP = math.log(1000.0 / 16)


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


def batched_nms_top_k(
    boxes: torch.Tensor, scores: torch.Tensor, batch_index: torch.Tensor, iou_threshold: float, k: int,
    batch_size: int, prefix_factor: int = 4,
):
    """
    `_top_k_per_image(batched_nms(...), k)`, computed on a score-ordered prefix of every image first.

    Greedy NMS decides each box from higher-scoring boxes only, so NMS on the `prefix_factor * k` best boxes of an
    image keeps exactly the first boxes the full NMS keeps. When that prefix yields `k` kept boxes for every image
    that had more candidates than the prefix, the result equals the full computation; otherwise the full NMS runs.
    This skips most of the quadratic NMS work on the thousands of first-stage candidates.

    Args:
        boxes (`torch.FloatTensor` of shape `(N, 4)`): candidate boxes `(x0, y0, x1, y1)`.
        scores (`torch.FloatTensor` of shape `(N,)`): their scores.
        batch_index (`torch.LongTensor` of shape `(N,)`): image of each candidate.
    Returns:
        `(kept, rank)` as `_top_k_per_image`: indices into `boxes`, grouped by image, decreasing score inside an
        image, and the rank of each inside its image.
    """
    prefix = prefix_factor * k
    counts = torch.bincount(batch_index, minlength=batch_size)
    keep = None
    if scores.numel() > 0 and int(counts.max()) > prefix:
        order = scores.argsort(descending=True, stable=True)
        best, _ = _top_k_per_image(order, batch_index[order], prefix, batch_size)
        keep = best[batched_nms(boxes[best], scores[best], batch_index[best], iou_threshold)]
        if not bool(((torch.bincount(batch_index[keep], minlength=batch_size) >= k) | (counts <= prefix)).all()):
            keep = None  # some image's prefix ran out before k boxes were kept: full NMS
    if keep is None:
        keep = batched_nms(boxes, scores, batch_index, iou_threshold)
    return _top_k_per_image(keep, batch_index[keep], k, batch_size)


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
        import timm  # here, not at the top: importing timm registers its ~1,400 models (0.3-0.6 s)

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
        # RoIAlign runs in float32: torchvision has no half-precision CPU kernel, and box coordinates rounded to bf16
        # would move by whole pixels. The pooled maps come back in the feature maps' dtype.
        rois = torch.cat((batch_index.to(torch.float32)[:, None], boxes.float()), dim=1)
        pooled = reference.new_zeros((rois.shape[0], reference.shape[1], self.output_size, self.output_size))
        if rois.shape[0] == 0:
            return pooled
        levels = self.assign_levels(boxes)
        for level in range(self.roi_min_level, self.roi_max_level + 1):
            index = torch.nonzero(levels == level).squeeze(1)
            if index.numel() == 0:
                continue
            pooled[index] = roi_align(
                features[level - self.min_level].float(),
                rois[index],
                output_size=self.output_size,
                spatial_scale=1.0 / 2**level,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            ).to(pooled.dtype)
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


