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
``configuration_minivlm_tee``, ``modeling_minivlm_tee_layers`` (the building blocks) and ``loss_minivlm_tee`` (the
training targets and losses).
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms
from transformers import initialization as init
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput, is_tracing

from .configuration_minivlm_tee import TEEConfig
from .loss_minivlm_tee import (
    first_stage_loss,
    prepare_detection_targets,
    second_stage_loss,
)
from .modeling_minivlm_tee_layers import (
    TEEAnchorGenerator,
    TEEBackbone,
    TEEBiFPN,
    TEEBoxHead,
    TEEFusionNode,
    TEEMultiLevelRoIAlign,
    TEEProposalHead,
    TEERegionPredictor,
    _top_k_per_image,
    _xyxy_to_cxcywh,
    batched_nms_top_k,
    clip_boxes,
    decode_boxes,
)
from .remote_code_minivlm import (
    MiniVLMRemoteCodeMixin,  # minivlm-hf hub: complete auto_map on save
)

if TYPE_CHECKING:
    # Never imported at run time: transformers copies (downloads) every file named by a flat relative import, so this
    # ships both image-processor backends, which the saved `auto_map` names, with every TEE checkpoint.
    from .image_processing_minivlm import MiniVLMImageProcessor  # noqa: F401
    from .image_processing_pil_minivlm import MiniVLMImageProcessorPil  # noqa: F401

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
# Models
# ----------------------------------------------------------------------------------------------------------------


class TEEPreTrainedModel(MiniVLMRemoteCodeMixin, PreTrainedModel):  # mixin: see remote_code_minivlm.py
    config: TEEConfig
    config_class = TEEConfig
    base_model_prefix = "tee"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    # The TEE has no attention layers, so every attention implementation is trivially supported: a composite model
    # (MiniVLM with `vision_config`) can be loaded with any `attn_implementation` its fusion encoder supports.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
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
        # NaN / inf pixels would give finite but meaningless detections: refuse them (not under tracing / export,
        # where a data-dependent check cannot be captured).
        if not (is_tracing(pixel_values) or torch.onnx.is_in_onnx_export()) and not torch.isfinite(pixel_values).all():
            raise ValueError("`pixel_values` contain NaN or infinite values.")
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
        # The image processor gives float32: run in the weights' dtype (e.g. a checkpoint loaded with dtype=bf16).
        pixel_values = pixel_values.to(self.dtype)
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
        keep, _ = batched_nms_top_k(
            boxes[valid], scores[valid], batch_index[valid], config.proposal_nms_iou_threshold,
            config.post_nms_top_k, batch_size,
        )
        keep = valid[keep]
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

    def _dense_features(self, pixel_values: torch.Tensor) -> list:
        """The BiFPN maps P3 … P`max_level` of the padded batch (EfficientNet, then BiFPN)."""
        return self.bifpn(self.backbone(pixel_values))

    def _run(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> _TEEState:
        pixel_values, image_sizes = self._prepare_inputs(pixel_values, pixel_mask)
        features = self._dense_features(pixel_values)
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
    `AutoModelForObjectDetection` loads; its only weights are those of `self.tee`. The losses are in
    `loss_minivlm_tee.py`.
    """

    def __init__(self, config: TEEConfig):
        super().__init__(config)
        self.tee = TEEModel(config)
        self.post_init()

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
            targets = prepare_detection_targets(self.config, labels, state.image_sizes, state.objectness.device)
            loss_objectness, loss_rpn_box = first_stage_loss(self.config, state, targets)
            loss_classifier, loss_attribute, loss_box_reg = second_stage_loss(
                self.config, state, targets, self.tee._second_stage
            )
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
