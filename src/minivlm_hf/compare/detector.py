"""The OSCAR-B side's region detector, trained on the scenes: torchvision Faster R-CNN, ResNet-FPN, 2048-d box head.

The architecture is the benchmark's baseline extractor (:mod:`minivlm_hf.benchmark.baseline`: ResNet-101-FPN,
images resized to shorter side 600 / longer side at most 1000, ``TwoMLPHead`` of width 2048, per-class NMS at 0.3,
exactly 50 regions per image), with two changes for training from scratch on these scenes: the box predictor has the
scenes' 8 classes (+ background) instead of Visual Genome's 1600, and the backbone's batch norms are trainable (no
ImageNet weights exist offline; frozen batch norms only suit a pre-trained backbone). Like the bottom-up-attention
detector that OSCAR / VinVL read, it has an attribute head on the 2048-d region features, trained with binary
cross-entropy on the ground-truth boxes' features; its scores make the "attribute … class" tags MiniVLM's TEE gives.

Training uses torchvision's own losses (RPN objectness + box, Fast R-CNN class + box) through ``transformers.Trainer``
with the detector stage's ``TrainingArguments`` (optimiser, schedule, bf16 autocast) and the TEE's number of sampled
regions per image (``roi_batch_size_per_image``; torchvision's default of 512 makes the CPU ``roi_align`` backward
the costliest part of a step), so both detectors train with the same recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import box_iou
from torchvision.transforms.functional import pil_to_tensor

from ..benchmark.baseline import BaselineRegionExtractor
from ..data.scenes import detection_annotations
from ..data.vocab import ATTRIBUTE_ID2LABEL, OBJECT_ID2LABEL


@dataclass(frozen=True)
class DetectorSize:
    """Sizes of the OSCAR-B-shaped detector (the real one or the tiny one of ``--tiny``)."""

    backbone: str = "resnet101"
    feature_dim: int = 2048
    min_size: int = 600
    max_size: int = 1000
    num_regions: int = 50
    rpn_post_nms_top_n_test: int = 1000


FULL_DETECTOR = DetectorSize()
TINY_DETECTOR = DetectorSize(backbone="resnet18", feature_dim=64, min_size=128, max_size=160, num_regions=10,
                             rpn_post_nms_top_n_test=100)


class RegionDetector(BaselineRegionExtractor):
    """Faster R-CNN + attribute head. ``forward(images)`` (eval) returns the baseline's exactly ``num_regions``
    regions (features and boxes in input pixels) and sets ``last_labels`` (class ids, 0-based as in
    ``OBJECT_ID2LABEL``), ``last_scores`` and ``last_attribute_scores``; ``forward(images, targets)`` in training mode
    returns torchvision's losses plus the attribute loss, summed in ``loss``."""

    def __init__(self, size: DetectorSize = FULL_DETECTOR, attribute_loss_weight: float = 0.5,
                 roi_batch_size_per_image: int = 512):
        backbone = resnet_fpn_backbone(backbone_name=size.backbone, weights=None, trainable_layers=5,
                                       norm_layer=nn.BatchNorm2d)
        resolution = 7  # MultiScaleRoIAlign output of torchvision's default box_roi_pool
        detector = FasterRCNN(
            backbone, num_classes=None, min_size=size.min_size, max_size=size.max_size,
            rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=size.rpn_post_nms_top_n_test,
            box_head=TwoMLPHead(backbone.out_channels * resolution**2, size.feature_dim),
            box_predictor=FastRCNNPredictor(size.feature_dim, len(OBJECT_ID2LABEL) + 1),
            box_score_thresh=0.0, box_detections_per_img=100, box_batch_size_per_image=roi_batch_size_per_image,
        )
        super().__init__(detector, num_regions=size.num_regions)
        # NHWC convolutions (as the TEE's CPU fast path): under CPU bf16 autocast the NCHW ones spend most of their
        # time reordering, and a training step or an extraction runs several times slower.
        detector.backbone.to(memory_format=torch.channels_last)
        self.size = size
        self.attribute_loss_weight = float(attribute_loss_weight)
        self.roi_batch_size_per_image = int(roi_batch_size_per_image)
        self.attribute_head = nn.Linear(size.feature_dim, len(ATTRIBUTE_ID2LABEL))
        self.last_attribute_scores: Tensor | None = None

    def forward(self, images, targets: list[dict] | None = None):
        if targets is not None:
            return self.training_losses(images, targets)
        out = super().forward(images)
        # torchvision numbers the classes from 1 (0 = background); the fusion side's tag vocabulary from 0
        self.last_labels = self.last_labels - 1
        self.last_attribute_scores = self.attribute_head(out.region_features).float().sigmoid()
        return out

    def training_losses(self, images: list[Tensor], targets: list[dict]) -> dict:
        det = self.detector
        attributes = [t["attributes"] for t in targets]
        boxes_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        batched, boxes_targets = det.transform(list(images), boxes_targets)
        features = det.backbone(batched.tensors)
        proposals, rpn_losses = det.rpn(batched, features, boxes_targets)
        _, roi_losses = det.roi_heads(features, proposals, batched.image_sizes, boxes_targets)
        losses = {**rpn_losses, **roi_losses}
        gt_boxes = [t["boxes"] for t in boxes_targets]  # resized with the images by the transform
        if sum(len(b) for b in gt_boxes):
            pooled = det.roi_heads.box_roi_pool(features, gt_boxes, batched.image_sizes)
            logits = self.attribute_head(det.roi_heads.box_head(pooled))
            losses["loss_attribute"] = self.attribute_loss_weight * nn.functional.binary_cross_entropy_with_logits(
                logits.float(), torch.cat(attributes).float())
        return {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}


class DetectorCollator:
    """Scene rows → ``{"images": [3, H, W] floats in [0, 1], "targets": [{boxes xyxy, labels (1-based),
    attributes (multi-hot)}]}``, mirrored at random with ``hflip_probability`` (the TEE's augmentation; the draw
    depends only on the seed, the epoch and the rows, as in ``DetectionCollator``)."""

    def __init__(self, hflip_probability: float = 0.0, seed: int = 0):
        self.hflip_probability = hflip_probability
        self.seed = seed
        self.epoch = 0

    def __call__(self, rows) -> dict:
        from ..training.collators.base import _row_key, _stable_hash

        if not rows:
            raise ValueError("empty batch")
        generator = torch.Generator().manual_seed(_stable_hash(self.seed, self.epoch, [_row_key(r) for r in rows]))
        images, targets = [], []
        for row in rows:
            pixels = pil_to_tensor(row["image"].convert("RGB")).float() / 255.0
            anns = detection_annotations(row)["annotations"]
            boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                  for a in anns], dtype=torch.float32).reshape(-1, 4)
            if self.hflip_probability and float(torch.rand((), generator=generator)) < self.hflip_probability:
                pixels = pixels.flip(-1)
                width = pixels.shape[-1]
                boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
            attributes = torch.zeros(len(anns), len(ATTRIBUTE_ID2LABEL))
            for k, a in enumerate(anns):
                attributes[k, a["attribute_ids"]] = 1.0
            labels = torch.tensor([a["category_id"] + 1 for a in anns], dtype=torch.long)
            images.append(pixels)
            targets.append({"boxes": boxes, "labels": labels, "attributes": attributes})
        return {"images": images, "targets": targets}


def train_detector(detector: RegionDetector, train_rows, training_args, *, seed: int = 0,
                   hflip_probability: float = 0.5, progress: bool = True):
    """Train ``detector`` on the scene rows with ``training_args`` (``TrainingArguments``); returns the Trainer."""
    from transformers import PrinterCallback, Trainer

    from ..progress import is_quiet, progress_enabled
    from ..training.collators import CollatorEpochCallback

    detector.train()
    detector.requires_grad_(True)
    if not progress_enabled(progress):
        training_args.disable_tqdm = True
    # Batches of images with similar aspect ratios, as torchvision's detection training reference groups them: a batch
    # is padded to its widest and its tallest resized image, so mixed ratios pay for pixels no image has.
    ratios = [float(h) / float(w) for h, w in zip(train_rows["height"], train_rows["width"])]
    train_rows = train_rows.add_column("aspect_ratio", ratios)
    training_args.train_sampling_strategy = "group_by_length"
    training_args.length_column_name = "aspect_ratio"
    collator = DetectorCollator(hflip_probability=hflip_probability, seed=seed)
    trainer = Trainer(model=detector, args=training_args, train_dataset=train_rows, data_collator=collator,
                      callbacks=[CollatorEpochCallback(collator)])
    if is_quiet():
        trainer.remove_callback(PrinterCallback)
    trainer.train()
    detector.eval()
    detector.requires_grad_(False)
    return trainer


@torch.no_grad()
def evaluate_detector_map(detector: RegionDetector, scenes, *, batch_size: int = 1, progress: bool = True) -> dict:
    """COCO mAP on a scenes split with torchvision's own post-processing (score-sorted, per-class NMS, boxes in the
    original pixels), computed as the TEE's is (``compute_detection_map`` against the same ground-truth boxes).
    One image per batch by default: a batch is padded to its largest resized image, and the scenes' aspect ratios
    differ, so on CPU larger batches cost more per image."""
    from ..metrics import compute_detection_map
    from ..progress import progress as progress_bar

    detector.eval()
    rows = [scenes[i] for i in range(len(scenes))]
    predictions, references = [], []
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    for chunk in progress_bar(batches, desc="Evaluating the OSCAR-B detector", enabled=progress, unit="batch"):
        images = [pil_to_tensor(r["image"].convert("RGB")).float() / 255.0 for r in chunk]
        for out in detector.detector(images):
            predictions.append({"boxes": out["boxes"].float(), "scores": out["scores"].float(),
                                "labels": out["labels"] - 1})
        for row in chunk:
            anns = detection_annotations(row)["annotations"]
            references.append({"boxes": [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                          a["bbox"][1] + a["bbox"][3]] for a in anns],
                               "labels": [a["category_id"] for a in anns]})
    result = compute_detection_map(predictions, references, reference_box_format="xyxy")
    return {"map": result["map"], "map_50": result["map_50"], "map_75": result["map_75"]}


def tag_scores(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """``scores`` with every region that overlaps a more confident one by more than ``iou_threshold`` set to 0:
    the 50 regions hold several proposals per object, and one object must give one tag (class-agnostic NMS, as the
    TEE's final detections use)."""
    order = scores.argsort(descending=True, stable=True)
    keep = torch.ones_like(scores, dtype=torch.bool)
    iou = box_iou(boxes.float(), boxes.float())
    for rank, i in enumerate(order.tolist()):
        if keep[i]:
            later = order[rank + 1:]
            keep[later[iou[i, later] > iou_threshold]] = False
    return torch.where(keep, scores, torch.zeros_like(scores))


@torch.no_grad()
def detect_regions(detector: RegionDetector, images: list[Tensor], iou_threshold: float) -> dict:
    """Region inputs of a batch of images ([3, H, W] in [0, 1]): ``region_features`` [B, K, D], ``region_boxes``
    (normalised xyxy), ``region_mask``, ``region_labels`` (0-based), ``region_scores`` (tag scores, see
    :func:`tag_scores`) and ``region_attribute_scores``."""
    out = detector(images)
    sizes = torch.tensor([[img.shape[-1], img.shape[-2], img.shape[-1], img.shape[-2]] for img in images],
                         dtype=torch.float32)
    boxes = (out.region_boxes.float() / sizes[:, None, :]).clamp(0, 1)
    scores = torch.stack([tag_scores(b, s.float(), iou_threshold) for b, s in zip(boxes, detector.last_scores)])
    return {"region_features": out.region_features, "region_boxes": boxes,
            "region_mask": torch.ones(boxes.shape[:2], dtype=torch.bool), "region_labels": detector.last_labels,
            "region_scores": scores, "region_attribute_scores": detector.last_attribute_scores}


def save_detector(detector: RegionDetector, folder: Path, metrics: dict | None = None,
                  steps: int | None = None) -> None:
    """Weights (safetensors), sizes, test metrics and training steps, so that a later run can reuse the detector."""
    import json

    from safetensors.torch import save_file

    from ..io.atomic import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, str(folder / "model.safetensors"))
    atomic_write_text(folder / "detector.json", json.dumps(
        {"size": asdict(detector.size), "attribute_loss_weight": detector.attribute_loss_weight,
         "roi_batch_size_per_image": detector.roi_batch_size_per_image,
         "metrics": metrics or {}, "steps": steps}, indent=1))


def load_detector(folder: Path) -> tuple[RegionDetector, dict]:
    import json

    from safetensors.torch import load_file

    settings_path = folder / "detector.json"
    if not settings_path.is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} holds no saved OSCAR-B detector (detector.json + model.safetensors)")
    settings = json.loads(settings_path.read_text())
    detector = RegionDetector(DetectorSize(**settings["size"]), settings["attribute_loss_weight"],
                              settings["roi_batch_size_per_image"])
    detector.load_state_dict(load_file(str(folder / "model.safetensors")))
    detector.eval()
    detector.requires_grad_(False)
    return detector, settings.get("metrics", {})
