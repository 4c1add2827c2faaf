# Copyright 2025 The minivlm-hf authors.
# Licensed under the MIT license.
"""Configuration of the MiniVLM TEE (Two-stage Efficient feature Extractor) region detector.

This file is part of the self-contained ``modeling/`` folder: it imports only ``transformers`` and
``huggingface_hub`` so that it can be shipped as remote code next to a checkpoint.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig


# Backbones the TEE is defined for: EfficientNet B0-B3 (timm PyTorch-style or TF-ported weights) and timm's
# `test_efficientnet`, a ~80k-parameter EfficientNet used by the test-suite. All of them give stride 8/16/32 feature
# maps at `features_only=True, out_indices=(2, 3, 4)`.
SUPPORTED_BACKBONES = (
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "tf_efficientnet_b0",
    "tf_efficientnet_b1",
    "tf_efficientnet_b2",
    "tf_efficientnet_b3",
    "test_efficientnet",
)

# Default vocabulary sizes: the Visual Genome vocabulary used by VinVL / MiniVLM (1594 object classes, 524
# attributes). No label names ship with the paper, so the default names are placeholders ("class_0", ...,
# "attribute_0", ...); pass `id2label` / `attribute_id2label` to use real names.
DEFAULT_NUM_LABELS = 1594
DEFAULT_NUM_ATTRIBUTES = 524


@strict
class TEEConfig(PreTrainedConfig):
    r"""
    Configuration of a MiniVLM TEE region detector ([`TEEModel`], [`TEEForObjectDetection`]): an EfficientNet
    backbone, a BiFPN neck, a one-stage proposal head with NMS, and a second stage (multi-level RoIAlign 4x4 -> two
    FC layers) whose output is the region feature, with object class, attribute and box-refinement heads on top.
    The defaults are the TEE-B0 settings of the MiniVLM paper (Wang et al. 2020).

    Args:
        backbone (`str`, *optional*, defaults to `"efficientnet_b0"`):
            timm model name of the EfficientNet backbone; one of `SUPPORTED_BACKBONES` (B0-B3, `tf_` variants and
            the tiny `test_efficientnet` used for tests).
        pretrained_backbone (`bool`, *optional*, defaults to `False`):
            Load timm's ImageNet weights when the model is built from a config (needs internet). Never used by
            `from_pretrained`, whose checkpoint supplies every weight.
        backbone_out_indices (`list[int]`, *optional*, defaults to `(2, 3, 4)`):
            timm `out_indices` of the stride 8, 16 and 32 feature maps (C3, C4, C5).
        num_channels (`int`, *optional*, defaults to 3):
            Number of input image channels.
        image_size (`int`, *optional*, defaults to 512):
            Longest image edge at test time (informational; the image processor does the resizing).
        bifpn_channels (`int`, *optional*, defaults to 64):
            Channels of every BiFPN level.
        bifpn_num_cells (`int`, *optional*, defaults to 3):
            Number of repeated BiFPN cells.
        min_level (`int`, *optional*, defaults to 3):
            Lowest pyramid level (stride `2**min_level`); must be 3 (the backbone's stride-8 map).
        max_level (`int`, *optional*, defaults to 7):
            Highest pyramid level; levels above 5 are made from C5 (1x1 conv + BN + stride-2 max-pool, then
            max-pools). Inputs are padded internally to a multiple of `2**max_level`.
        anchor_sizes (`list[int]`, *optional*, defaults to `(32, 64, 128, 256, 512)`):
            Anchor size (square-root of the area, pixels) of each pyramid level, P3 first.
        anchor_aspect_ratios (`list[float]`, *optional*, defaults to `(0.5, 1.0, 2.0)`):
            Anchor aspect ratios (height / width), the same on every level.
        pre_nms_top_k (`int`, *optional*, defaults to 1000):
            Proposals kept per pyramid level (by objectness) before the proposal NMS.
        post_nms_top_k (`int`, *optional*, defaults to 100):
            Proposals kept per image after the proposal NMS.
        proposal_nms_iou_threshold (`float`, *optional*, defaults to 0.7):
            IoU threshold of the proposal NMS (class-agnostic, across levels).
        min_box_size (`float`, *optional*, defaults to 1.0):
            Proposals / regions smaller than this (pixels, either side) are dropped.
        num_regions (`int`, *optional*, defaults to 50):
            Regions kept per image at the end (the most confident ones); must be `<= post_nms_top_k`.
        detection_nms_iou_threshold (`float`, *optional*, defaults to 0.5):
            IoU threshold of the final NMS over the refined regions.
        detection_nms_class_agnostic (`bool`, *optional*, defaults to `False`):
            Whether the final NMS ignores the predicted class (otherwise boxes of different classes may overlap).
        score_threshold (`float`, *optional*, defaults to 0.0):
            Regions whose score (highest non-background class probability) is below this are dropped. The default
            keeps `num_regions` regions whenever there are enough proposals, which is what feature extraction wants.
        ignore_box_regression (`bool`, *optional*, defaults to `False`):
            Report the proposal boxes (from which the region features were pooled) instead of the refined boxes, as
            VinVL's feature extraction does.
        roi_output_size (`int`, *optional*, defaults to 4):
            Output size of RoIAlign (4x4 in the paper).
        roi_sampling_ratio (`int`, *optional*, defaults to 2):
            RoIAlign sampling ratio.
        roi_min_level (`int`, *optional*, defaults to 3):
            Lowest pyramid level RoIs are pooled from.
        roi_max_level (`int`, *optional*, defaults to 6):
            Highest pyramid level RoIs are pooled from.
        roi_canonical_scale (`int`, *optional*, defaults to 224):
            FPN level-assignment rule: a RoI of this size (sqrt of area) goes to `roi_canonical_level`.
        roi_canonical_level (`int`, *optional*, defaults to 4):
            See `roi_canonical_scale`.
        box_head_dim (`int`, *optional*, defaults to 1024):
            Width of the two FC layers of the box head, i.e. the size of the region feature.
        attribute_id2label (`dict[int, str]`, *optional*):
            Attribute vocabulary. Defaults to 524 placeholder names (`"attribute_0"`, ...). The number of
            attributes can also be given as `num_attributes=...`.
        rpn_cls_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the first-stage objectness (sigmoid focal) loss.
        rpn_box_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the first-stage box regression (smooth-L1) loss.
        cls_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the second-stage class cross-entropy.
        attribute_loss_weight (`float`, *optional*, defaults to 0.5):
            Weight of the second-stage attribute loss (multi-label binary cross-entropy, summed over attributes
            and averaged over the foreground RoIs that have at least one attribute annotated).
        box_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the second-stage (class-agnostic) box regression loss.
        focal_alpha (`float`, *optional*, defaults to 0.25):
            Alpha of the first-stage focal loss (a negative value disables the weighting).
        focal_gamma (`float`, *optional*, defaults to 2.0):
            Gamma of the first-stage focal loss.
        rpn_fg_iou_threshold (`float`, *optional*, defaults to 0.5):
            Anchors with IoU >= this with a ground-truth box are positives (each box also gets its best anchors).
        rpn_bg_iou_threshold (`float`, *optional*, defaults to 0.4):
            Anchors with IoU < this with every ground-truth box are negatives; in between they are ignored.
        rpn_smooth_l1_beta (`float`, *optional*, defaults to 1/9):
            Beta of the first-stage smooth-L1 box loss.
        roi_batch_size_per_image (`int`, *optional*, defaults to 256):
            RoIs sampled per image for the second-stage losses (proposals plus ground-truth boxes).
        roi_positive_fraction (`float`, *optional*, defaults to 0.25):
            Largest fraction of positives among the sampled RoIs.
        roi_fg_iou_threshold (`float`, *optional*, defaults to 0.5):
            RoIs with IoU >= this with a ground-truth box are foreground.
        roi_bg_iou_threshold (`float`, *optional*, defaults to 0.5):
            RoIs with IoU < this are background; in between they are not sampled.
        roi_smooth_l1_beta (`float`, *optional*, defaults to 1.0):
            Beta of the second-stage smooth-L1 box loss.
        rpn_box_coder_weights (`list[float]`, *optional*, defaults to `(1.0, 1.0, 1.0, 1.0)`):
            (wx, wy, ww, wh) weights of the anchor box coding.
        roi_box_coder_weights (`list[float]`, *optional*, defaults to `(10.0, 10.0, 5.0, 5.0)`):
            (wx, wy, ww, wh) weights of the second-stage box coding.
        prior_prob (`float`, *optional*, defaults to 0.01):
            Prior probability used to initialise the objectness and attribute biases.
        initializer_range (`float`, *optional*, defaults to 0.01):
            Standard deviation of the normal initialisation of the head layers.
        batch_norm_momentum (`float`, *optional*, defaults to 0.01):
            Momentum of the BiFPN batch norms.
        batch_norm_eps (`float`, *optional*, defaults to 1e-3):
            Epsilon of the BiFPN batch norms.

    The object classes are `id2label` (ids `0 .. num_labels - 1`; the class head has one more output, the last
    one, for background / no-object). Without `id2label` (and without `num_labels=`), the default vocabulary is 1594
    placeholder classes (`"class_0"`, ...), the size of the Visual Genome vocabulary of VinVL / MiniVLM.

    Example:

    ```python
    >>> from minivlm_hf.modeling.configuration_minivlm_tee import TEEConfig
    >>> from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection

    >>> config = TEEConfig(id2label={0: "cat", 1: "dog"}, attribute_id2label={0: "black", 1: "white"})
    >>> model = TEEForObjectDetection(config)
    ```
    """

    model_type = "minivlm_tee"
    base_config_key = "vision_config"

    backbone: str = "efficientnet_b0"
    pretrained_backbone: bool = False
    backbone_out_indices: list[int] | tuple[int, ...] = (2, 3, 4)
    num_channels: int = 3
    image_size: int = 512
    bifpn_channels: int = 64
    bifpn_num_cells: int = 3
    min_level: int = 3
    max_level: int = 7
    anchor_sizes: list[int | float] | tuple[int | float, ...] = (32, 64, 128, 256, 512)
    anchor_aspect_ratios: list[int | float] | tuple[int | float, ...] = (0.5, 1.0, 2.0)
    pre_nms_top_k: int = 1000
    post_nms_top_k: int = 100
    proposal_nms_iou_threshold: float | int = 0.7
    min_box_size: float | int = 1.0
    num_regions: int = 50
    detection_nms_iou_threshold: float | int = 0.5
    detection_nms_class_agnostic: bool = False
    score_threshold: float | int = 0.0
    ignore_box_regression: bool = False
    roi_output_size: int = 4
    roi_sampling_ratio: int = 2
    roi_min_level: int = 3
    roi_max_level: int = 6
    roi_canonical_scale: int = 224
    roi_canonical_level: int = 4
    box_head_dim: int = 1024
    attribute_id2label: dict[int, str] | dict[str, str] | None = None
    rpn_cls_loss_weight: float | int = 1.0
    rpn_box_loss_weight: float | int = 1.0
    cls_loss_weight: float | int = 1.0
    attribute_loss_weight: float | int = 0.5
    box_loss_weight: float | int = 1.0
    focal_alpha: float | int = 0.25
    focal_gamma: float | int = 2.0
    rpn_fg_iou_threshold: float | int = 0.5
    rpn_bg_iou_threshold: float | int = 0.4
    rpn_smooth_l1_beta: float | int = 1.0 / 9.0
    roi_batch_size_per_image: int = 256
    roi_positive_fraction: float | int = 0.25
    roi_fg_iou_threshold: float | int = 0.5
    roi_bg_iou_threshold: float | int = 0.5
    roi_smooth_l1_beta: float | int = 1.0
    rpn_box_coder_weights: list[int | float] | tuple[int | float, ...] = (1.0, 1.0, 1.0, 1.0)
    roi_box_coder_weights: list[int | float] | tuple[int | float, ...] = (10.0, 10.0, 5.0, 5.0)
    prior_prob: float | int = 0.01
    initializer_range: float | int = 0.01
    batch_norm_momentum: float | int = 0.01
    batch_norm_eps: float | int = 1e-3

    def __post_init__(self, **kwargs):
        # Default object vocabulary (only when neither `id2label` nor `num_labels` is given).
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = {i: f"class_{i}" for i in range(DEFAULT_NUM_LABELS)}
        if self.id2label is not None and self.label2id is None:
            self.label2id = {name: int(i) for i, name in self.id2label.items()}

        # Attribute vocabulary: `attribute_id2label`, else `num_attributes=`, else the default size.
        num_attributes = kwargs.pop("num_attributes", None)
        if self.attribute_id2label is None:
            if num_attributes is None:
                num_attributes = DEFAULT_NUM_ATTRIBUTES
            if isinstance(num_attributes, bool) or not isinstance(num_attributes, int) or num_attributes < 1:
                raise ValueError(f"`num_attributes` must be a positive integer, got {num_attributes!r}.")
            self.attribute_id2label = {i: f"attribute_{i}" for i in range(num_attributes)}
        else:
            self.attribute_id2label = {int(k): v for k, v in self.attribute_id2label.items()}
            if num_attributes is not None and num_attributes != len(self.attribute_id2label):
                raise ValueError(
                    f"`num_attributes`={num_attributes} does not match `attribute_id2label` "
                    f"({len(self.attribute_id2label)} entries)."
                )

        # JSON gives lists; keep lists everywhere so that a reloaded config equals the original one.
        for name in (
            "backbone_out_indices",
            "anchor_sizes",
            "anchor_aspect_ratios",
            "rpn_box_coder_weights",
            "roi_box_coder_weights",
        ):
            value = getattr(self, name)
            if isinstance(value, tuple):
                setattr(self, name, list(value))

        super().__post_init__(**kwargs)
        self._check_fields()

    @property
    def num_attributes(self) -> int:
        """`int`: number of attribute classes (`len(attribute_id2label)`)."""
        return len(self.attribute_id2label) if self.attribute_id2label is not None else 0

    @property
    def num_levels(self) -> int:
        """`int`: number of pyramid levels (`max_level - min_level + 1`)."""
        return self.max_level - self.min_level + 1

    def validate_architecture(self):
        """Part of `@strict`-powered validation (also run by `save_pretrained`)."""
        self._check_fields()

    def _check_fields(self):
        def fail(field: str, message: str):
            raise ValueError(f"`{field}` {message}")

        if self.backbone not in SUPPORTED_BACKBONES:
            fail("backbone", f"must be one of {list(SUPPORTED_BACKBONES)}, got {self.backbone!r}.")
        if len(self.backbone_out_indices) != 3:
            fail(
                "backbone_out_indices",
                f"must name the 3 backbone stages of stride 8, 16 and 32, got {list(self.backbone_out_indices)}.",
            )
        for name in (
            "num_channels",
            "image_size",
            "bifpn_channels",
            "bifpn_num_cells",
            "pre_nms_top_k",
            "post_nms_top_k",
            "num_regions",
            "roi_output_size",
            "roi_sampling_ratio",
            "roi_canonical_scale",
            "box_head_dim",
            "roi_batch_size_per_image",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or value <= 0:
                fail(name, f"must be a positive integer, got {value!r}.")
        if self.min_level != 3:
            fail("min_level", f"must be 3 (the stride-8 backbone map is the lowest level), got {self.min_level}.")
        if not 5 <= self.max_level <= 8:
            fail("max_level", f"must be between 5 and 8, got {self.max_level}.")
        if len(self.anchor_sizes) != self.num_levels:
            fail(
                "anchor_sizes",
                f"needs one size per pyramid level ({self.num_levels} levels for min_level={self.min_level}, "
                f"max_level={self.max_level}), got {len(self.anchor_sizes)}: {list(self.anchor_sizes)}.",
            )
        if any(not _is_finite_number(s) or s <= 0 for s in self.anchor_sizes):
            fail("anchor_sizes", f"must be positive numbers, got {list(self.anchor_sizes)}.")
        if len(self.anchor_aspect_ratios) == 0 or any(
            not _is_finite_number(r) or r <= 0 for r in self.anchor_aspect_ratios
        ):
            fail("anchor_aspect_ratios", f"must be a non-empty list of positive numbers, got {self.anchor_aspect_ratios}.")
        for name in (
            "proposal_nms_iou_threshold",
            "detection_nms_iou_threshold",
            "rpn_fg_iou_threshold",
            "rpn_bg_iou_threshold",
            "roi_fg_iou_threshold",
            "roi_bg_iou_threshold",
            "roi_positive_fraction",
        ):
            value = getattr(self, name)
            if not _is_finite_number(value) or not 0.0 < value <= 1.0:
                fail(name, f"must be in (0, 1], got {value!r}.")
        if self.rpn_bg_iou_threshold > self.rpn_fg_iou_threshold:
            fail(
                "rpn_bg_iou_threshold",
                f"({self.rpn_bg_iou_threshold}) must not exceed `rpn_fg_iou_threshold` ({self.rpn_fg_iou_threshold}).",
            )
        if self.roi_bg_iou_threshold > self.roi_fg_iou_threshold:
            fail(
                "roi_bg_iou_threshold",
                f"({self.roi_bg_iou_threshold}) must not exceed `roi_fg_iou_threshold` ({self.roi_fg_iou_threshold}).",
            )
        if not _is_finite_number(self.score_threshold) or not 0.0 <= self.score_threshold <= 1.0:
            fail("score_threshold", f"must be in [0, 1], got {self.score_threshold!r}.")
        if not _is_finite_number(self.min_box_size) or self.min_box_size < 0:
            fail("min_box_size", f"must be >= 0, got {self.min_box_size!r}.")
        if self.num_regions > self.post_nms_top_k:
            fail(
                "num_regions",
                f"({self.num_regions}) cannot exceed `post_nms_top_k` ({self.post_nms_top_k}): the regions are "
                "chosen among the proposals.",
            )
        if not self.min_level <= self.roi_min_level <= self.max_level:
            fail(
                "roi_min_level",
                f"must be a BiFPN level in [min_level, max_level] = [{self.min_level}, {self.max_level}], "
                f"got {self.roi_min_level}.",
            )
        if not self.roi_min_level <= self.roi_max_level <= self.max_level:
            fail(
                "roi_max_level",
                f"must be a BiFPN level in [roi_min_level, max_level] = [{self.roi_min_level}, {self.max_level}], "
                f"got {self.roi_max_level}.",
            )
        if not self.roi_min_level <= self.roi_canonical_level <= self.roi_max_level:
            fail(
                "roi_canonical_level",
                f"({self.roi_canonical_level}) must lie in [roi_min_level, roi_max_level] = "
                f"[{self.roi_min_level}, {self.roi_max_level}].",
            )
        if not self.id2label:
            fail("id2label", "must contain at least one object class.")
        if sorted(self.id2label.keys()) != list(range(len(self.id2label))):
            fail("id2label", "keys must be the consecutive class ids 0 .. num_labels - 1.")
        if not self.attribute_id2label:
            fail("attribute_id2label", "must contain at least one attribute.")
        if sorted(self.attribute_id2label.keys()) != list(range(len(self.attribute_id2label))):
            fail("attribute_id2label", "keys must be the consecutive attribute ids 0 .. num_attributes - 1.")
        for name in (
            "rpn_cls_loss_weight",
            "rpn_box_loss_weight",
            "cls_loss_weight",
            "attribute_loss_weight",
            "box_loss_weight",
            "focal_gamma",
        ):
            value = getattr(self, name)
            if not _is_finite_number(value) or value < 0:
                fail(name, f"must be a non-negative number, got {value!r}.")
        if not _is_finite_number(self.focal_alpha) or self.focal_alpha > 1:
            fail("focal_alpha", f"must be <= 1 (negative disables it), got {self.focal_alpha!r}.")
        for name in ("rpn_smooth_l1_beta", "roi_smooth_l1_beta"):
            value = getattr(self, name)
            if not _is_finite_number(value) or value < 0:
                fail(name, f"must be >= 0, got {value!r}.")
        for name in ("rpn_box_coder_weights", "roi_box_coder_weights"):
            value = getattr(self, name)
            if len(value) != 4 or any(not _is_finite_number(v) or v <= 0 for v in value):
                fail(name, f"must be 4 positive numbers (wx, wy, ww, wh), got {list(value)}.")
        if not _is_finite_number(self.prior_prob) or not 0.0 < self.prior_prob < 1.0:
            fail("prior_prob", f"must be in (0, 1), got {self.prior_prob!r}.")
        for name in ("initializer_range", "batch_norm_eps"):
            value = getattr(self, name)
            if not _is_finite_number(value) or value <= 0:
                fail(name, f"must be positive, got {value!r}.")
        if not _is_finite_number(self.batch_norm_momentum) or not 0.0 <= self.batch_norm_momentum <= 1.0:
            fail("batch_norm_momentum", f"must be in [0, 1], got {self.batch_norm_momentum!r}.")


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["TEEConfig", "SUPPORTED_BACKBONES"]
