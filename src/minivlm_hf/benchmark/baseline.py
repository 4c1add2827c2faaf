"""The large baseline of the MiniVLM paper, rebuilt from torchvision parts with random weights.

OSCAR-B reads region features from a Faster R-CNN with a ResNet-101 backbone run on 600x1000 images
(bottom-up-attention / VinVL style extractors): 50 regions x 2048-d pooled box-head features, plus a
6-d box encoding, fed into BERT-base. For *speed, FLOP and parameter* comparisons the weights do not
matter, only the architecture and the work done, so everything here is randomly initialised and
nothing is ever downloaded.

:func:`build_baseline_extractor` returns a :class:`BaselineRegionExtractor`: a torchvision
``FasterRCNN`` (ResNet-101-FPN, ``TwoMLPHead`` box head of width 2048) whose forward runs the same
stages the real extractors run::

    transform (normalise, resize to min 600 / max 1000, pad to /32)
      -> backbone (ResNet-101 + FPN) -> RPN (1000 test proposals after NMS)
      -> MultiScaleRoIAlign 7x7 -> box head (fc6, fc7 = 2048-d) over *all* proposals
      -> box predictor (class logits + class-specific box deltas) over all proposals
      -> per-class NMS, max class confidence per proposal, keep the top ``num_regions``

and always returns exactly ``num_regions`` regions, as the bottom-up-attention feature extractor
does when it falls back to its ``MIN_BOXES`` rule: the proposals are ranked by the maximum class
confidence they keep after per-class NMS and the best ``num_regions`` are kept whatever their score
(with random weights no box passes a 0.2 confidence threshold). Features and boxes belong to the
same proposals (boxes are the proposals, in original-image pixels), as in that extractor.

:func:`build_baseline_fusion_config` gives the BERT-base-shaped fusion settings of OSCAR-B.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = [
    "BaselineOutput",
    "BaselineRegionExtractor",
    "build_baseline_extractor",
    "build_baseline_fusion_config",
    "BASELINE_IMAGE_SIZE",
    "BUTD_NUM_CLASSES",
]

#: (height, width) of the baseline's test images.
BASELINE_IMAGE_SIZE = (600, 1000)
#: 1600 Visual Genome object classes + background, the vocabulary of the bottom-up-attention detector.
BUTD_NUM_CLASSES = 1601


class BaselineOutput(NamedTuple):
    """``region_features`` [B, K, D] and ``region_boxes`` [B, K, 4] (x1, y1, x2, y2 in input pixels)."""

    region_features: Tensor
    region_boxes: Tensor


class BaselineRegionExtractor(nn.Module):
    """Runs a torchvision ``FasterRCNN`` stage by stage and keeps exactly ``num_regions`` regions.

    ``forward(images)`` takes a [3, H, W] tensor, a [B, 3, H, W] tensor or a list of [3, H, W]
    tensors (RGB in [0, 1]) and returns a :class:`BaselineOutput`. After a call, ``last_scores`` and
    ``last_labels`` ([B, K]) hold the kept regions' maximum class confidence and its class (the
    "tags" OSCAR feeds next to the regions).
    """

    def __init__(
        self,
        detector: FasterRCNN,
        num_regions: int = 50,
        nms_thresh: float = 0.3,
        pre_nms_top_n: int | None = 10000,
    ):
        super().__init__()
        self.detector = detector
        self.num_regions = int(num_regions)
        # Per-class NMS threshold of the bottom-up-attention test config (TEST.NMS = 0.3).
        self.nms_thresh = float(nms_thresh)
        # How many (proposal, class) hypotheses enter per-class NMS. A trained detector prunes them
        # with a score threshold (torchvision 0.05, VinVL 0.2) to a few per proposal; with random
        # weights the softmax is flat and no threshold means anything, so the top-N scores are
        # kept instead (10 per proposal for 1000 proposals). None = all N x (C-1) pairs, which
        # costs seconds of CPU NMS for 1600 classes and would dominate the measurement.
        self.pre_nms_top_n = pre_nms_top_n
        self.last_scores: Tensor | None = None
        self.last_labels: Tensor | None = None

    @property
    def feature_dim(self) -> int:
        return self.detector.roi_heads.box_head.fc7.out_features

    def _as_list(self, images) -> list[Tensor]:
        if isinstance(images, Tensor):
            if images.dim() == 3:
                return [images]
            if images.dim() == 4:
                return list(images.unbind(0))
            raise ValueError(f"expected a [3, H, W] or [B, 3, H, W] tensor, got shape {tuple(images.shape)}")
        return list(images)

    def select_regions(
        self, class_logits: Tensor, box_regression: Tensor, proposals: Tensor, image_shape: Sequence[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Index of the kept proposals ([K]), their max class confidence and class, for one image.

        Class-specific boxes are decoded from the deltas and NMS is applied per foreground class
        (as the bottom-up-attention extractor does); each proposal's confidence is the best score
        it keeps in any class; the top ``num_regions`` proposals by that confidence are kept. When
        there are fewer proposals than ``num_regions`` the ranking is repeated cyclically. Only the
        ``pre_nms_top_n`` best (proposal, class) scores enter NMS (see ``__init__``).
        """
        roi_heads = self.detector.roi_heads
        num_props, num_classes = class_logits.shape
        scores = torch.softmax(class_logits, dim=-1)
        boxes = roi_heads.box_coder.decode(box_regression, [proposals]).reshape(num_props, num_classes, 4)
        boxes = box_ops.clip_boxes_to_image(boxes, tuple(image_shape))
        fg_scores = scores[:, 1:]
        fg_boxes = boxes[:, 1:]
        flat_scores = fg_scores.reshape(-1)
        flat_boxes = fg_boxes.reshape(-1, 4)
        flat_labels = torch.arange(1, num_classes, device=scores.device).repeat(num_props)
        if self.pre_nms_top_n is not None and flat_scores.numel() > self.pre_nms_top_n:
            cand = flat_scores.topk(self.pre_nms_top_n).indices
        else:
            cand = torch.arange(flat_scores.numel(), device=scores.device)
        keep = cand[box_ops.batched_nms(flat_boxes[cand], flat_scores[cand], flat_labels[cand], self.nms_thresh)]
        prop_of_keep = torch.div(keep, num_classes - 1, rounding_mode="floor")
        max_conf = torch.zeros(num_props, dtype=scores.dtype, device=scores.device)
        max_conf = max_conf.scatter_reduce(0, prop_of_keep, flat_scores[keep], reduce="amax", include_self=True)
        order = torch.argsort(max_conf, descending=True, stable=True)
        if order.numel() == 0:
            raise RuntimeError("the RPN returned no proposals")
        if order.numel() < self.num_regions:
            reps = -(-self.num_regions // order.numel())
            order = order.repeat(reps)
        idx = order[: self.num_regions]
        labels = fg_scores[idx].argmax(dim=-1) + 1
        return idx, max_conf[idx], labels

    def forward(self, images) -> BaselineOutput:
        det = self.detector
        image_list = self._as_list(images)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in image_list]
        batched, _ = det.transform(image_list)
        features = det.backbone(batched.tensors)
        proposals, _ = det.rpn(batched, features)
        roi_heads = det.roi_heads
        pooled = roi_heads.box_roi_pool(features, proposals, batched.image_sizes)
        box_features = roi_heads.box_head(pooled)  # [sum(N_i), 2048] over all proposals
        class_logits, box_regression = roi_heads.box_predictor(box_features)

        counts = [p.shape[0] for p in proposals]
        feats_out, boxes_out, scores_out, labels_out = [], [], [], []
        for props, feats, logits, deltas, im_shape, orig in zip(
            proposals,
            box_features.split(counts),
            class_logits.split(counts),
            box_regression.split(counts),
            batched.image_sizes,
            original_sizes,
        ):
            idx, conf, labels = self.select_regions(logits, deltas, props, im_shape)
            feats_out.append(feats[idx])
            boxes_out.append(resize_boxes(props[idx], list(im_shape), list(orig)))
            scores_out.append(conf)
            labels_out.append(labels)
        self.last_scores = torch.stack(scores_out)
        self.last_labels = torch.stack(labels_out)
        return BaselineOutput(torch.stack(feats_out), torch.stack(boxes_out))


def build_baseline_extractor(
    num_regions: int = 50,
    feature_dim: int = 2048,
    *,
    num_classes: int = BUTD_NUM_CLASSES,
    min_size: int = 600,
    max_size: int = 1000,
    backbone_name: str = "resnet101",
    rpn_post_nms_top_n_test: int = 1000,
    pre_nms_top_n: int | None = 10000,
    seed: int | None = 0,
    calibrate: bool = True,
) -> BaselineRegionExtractor:
    """The OSCAR-B feature extractor: Faster R-CNN, ResNet-101-FPN, 2048-d box head, random weights.

    ``min_size``/``max_size`` are the test resize rule (600/1000 as in bottom-up-attention); tests
    may pass smaller values to run faster without changing the architecture. ``num_classes``
    (default 1600 VG classes + background) sizes the box predictor and the per-class NMS.
    Weights are random (``weights=None`` everywhere); nothing is downloaded. ``seed`` makes the
    random weights reproducible without touching the global RNG (``None``: use the global RNG).

    A random ResNet-101 whose (frozen) batch norms are identities blows activations up to ~1e5 by
    ``layer4``; the RPN's box deltas then push every anchor off the image and no proposal survives.
    ``calibrate=True`` (default) therefore sets each frozen batch norm's statistics from one pass
    over a random image (data-dependent re-estimation), which gives unit-scale activations like a
    trained network's. It changes only buffer values, not the architecture or the work done.
    """
    settings = dict(
        num_regions=num_regions,
        feature_dim=feature_dim,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        backbone_name=backbone_name,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        pre_nms_top_n=pre_nms_top_n,
        calibrate=calibrate,
    )
    if seed is None:
        return _build(**settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(**settings)


@torch.no_grad()
def calibrate_frozen_batchnorm(module: nn.Module, images: Tensor) -> int:
    """Set every ``FrozenBatchNorm2d`` in ``module`` to normalise its input of ``module(images)``.

    Runs one forward pass; a pre-hook on each frozen BN (in execution order, so later layers see
    already-normalised inputs) sets ``running_mean``/``running_var`` to the per-channel statistics
    of its input. Returns the number of layers set.
    """
    handles = []
    count = 0

    def pre_hook(bn: FrozenBatchNorm2d, args):
        nonlocal count
        (x,) = args
        bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
        count += 1

    for sub in module.modules():
        if isinstance(sub, FrozenBatchNorm2d):
            handles.append(sub.register_forward_pre_hook(pre_hook))
    try:
        module(images)
    finally:
        for h in handles:
            h.remove()
    return count


def _build(
    *, num_regions, feature_dim, num_classes, min_size, max_size, backbone_name, rpn_post_nms_top_n_test,
    pre_nms_top_n, calibrate,
) -> BaselineRegionExtractor:
    backbone = resnet_fpn_backbone(backbone_name=backbone_name, weights=None, trainable_layers=0)
    resolution = 7  # MultiScaleRoIAlign output of torchvision's default box_roi_pool
    box_head = TwoMLPHead(backbone.out_channels * resolution**2, feature_dim)
    box_predictor = FastRCNNPredictor(feature_dim, num_classes)
    detector = FasterRCNN(
        backbone,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_head=box_head,
        box_predictor=box_predictor,
        box_score_thresh=0.0,
        box_detections_per_img=num_regions,
    )
    extractor = BaselineRegionExtractor(detector, num_regions=num_regions, pre_nms_top_n=pre_nms_top_n)
    extractor.eval()
    if calibrate:
        # A 256x256 random image in the detector's normalised input space (ImageNet mean/std).
        calib = detector.transform.normalize(torch.rand(3, 256, 256))[None]
        calibrate_frozen_batchnorm(detector.backbone.body, calib)
    for p in extractor.parameters():
        p.requires_grad_(False)
    return extractor


def build_baseline_fusion_config() -> dict:
    """BERT-base-shaped fusion settings of OSCAR-B, as ``MiniVLMConfig`` keyword arguments.

    12 layers, hidden 768, 12 heads, FFN 3072 (BERT-base), and the OSCAR-B region input: 2048-d
    region features + the 6-d box encoding (2054-d, OSCAR's ``img_feature_dim``), 50 regions.
    Keys follow ``minivlm_hf.modeling.configuration_minivlm.MiniVLMConfig``
    (``region_feature_size``, ``box_feature_size``, ``max_regions``).
    """
    return {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "region_feature_size": 2048,
        "box_feature_size": 6,
        "max_regions": 50,
    }
