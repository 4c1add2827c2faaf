"""The OSCAR-B side's fusion stages: the demo's stage chain, recipes, seeds and step counts, on the OSCAR-B
detector's region features, with a BERT-base-shaped fusion transformer initialised at random.

:class:`BaselineRecipeData` is the recipes' :class:`~minivlm_hf.training.data_setup.RecipeData` with the region
tables made by the OSCAR-B detector (same columns as :func:`~minivlm_hf.training.features.extract_features` writes,
saved under ``features_dir``), so ``run_stage`` / ``evaluate_stage`` run on them unchanged.
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets import Features
from torchvision.transforms.functional import pil_to_tensor

from ..data.vocab import ATTRIBUTE_ID2LABEL, OBJECT_ID2LABEL
from ..training.data_setup import RecipeData
from ..training.features import load_feature_table, region_features_schema, tags_from_detections
from .detector import RegionDetector, detect_regions

#: BERT-base (OSCAR-B's fusion model): ``MiniVLMConfig`` fields; the tiny stand-in for ``--tiny``.
BERT_BASE_FUSION = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
TINY_FUSION = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96}


def autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@torch.no_grad()
def extract_region_table(detector: RegionDetector, images: datasets.Dataset, *, data_config: dict,
                         iou_threshold: float, batch_size: int = 1, bf16: bool = False, progress: bool = True,
                         desc: str = "Extracting OSCAR-B regions") -> datasets.Dataset:
    """The region table of ``images`` (the feature-table format the fusion stages read): ``num_regions`` float16
    features per image, normalised boxes, scores, 0-based labels and the tags, by the rule and settings the TEE's
    tags use (``tags_from_detections`` with the data config's tag threshold, attributes and order). One image per
    batch by default (see ``evaluate_detector_map``: padding to the batch's largest image costs more than batching
    saves on CPU)."""
    from ..progress import progress as progress_bar

    detector.eval()
    base = {k: v for k, v in images.features.items() if k != "image"}
    size = detector.size
    features = Features({**base, **region_features_schema(size.num_regions, size.feature_dim, "float16")})
    rows = {name: [] for name in features}
    columns = list(base)
    starts = list(range(0, len(images), batch_size))
    for start in progress_bar(starts, desc=desc, enabled=progress, unit="batch"):
        chunk = images.select(range(start, min(start + batch_size, len(images))))
        pixels = [pil_to_tensor(img.convert("RGB")).float() / 255.0 for img in chunk["image"]]
        with autocast(bf16):
            regions = detect_regions(detector, pixels, iou_threshold)
        feats = regions["region_features"].float().numpy().astype(np.float16)
        other = chunk.select_columns(columns)[:] if columns else {}
        for i in range(len(pixels)):
            for name in columns:
                rows[name].append(other[name][i])
            labels = regions["region_labels"][i].numpy()
            scores = regions["region_scores"][i].float().numpy()
            mask = regions["region_mask"][i].numpy()
            boxes = regions["region_boxes"][i].numpy()
            rows["region_features"].append(feats[i])
            rows["region_boxes"].append(boxes)
            rows["region_mask"].append(mask.tolist())
            rows["region_scores"].append(scores.tolist())
            rows["region_labels"].append(labels.astype(np.int32).tolist())
            rows["tags"].append(tags_from_detections(
                labels, scores, mask, OBJECT_ID2LABEL, data_config["tag_threshold"],
                regions["region_attribute_scores"][i] if data_config.get("tag_attributes") else None,
                ATTRIBUTE_ID2LABEL, data_config.get("tag_attribute_threshold", 0.5),
                order=data_config.get("tag_order", "score"), boxes=boxes))
    return datasets.Dataset.from_dict(rows, features=features)


class BaselineRecipeData(RecipeData):
    """``RecipeData`` whose region tables come from the OSCAR-B detector (extracted once, kept in
    ``data.features_dir``)."""

    def __init__(self, config: dict, detector: RegionDetector, *, iou_threshold: float, bf16: bool,
                 extract_batch_size: int = 1, progress: bool = True):
        super().__init__(config, progress=progress)
        self.region_detector = detector
        self.iou_threshold = iou_threshold
        self.bf16 = bf16
        self.extract_batch_size = extract_batch_size

    @property
    def num_regions(self) -> int:
        return self.region_detector.size.num_regions

    @property
    def feature_size(self) -> int:
        return self.region_detector.size.feature_dim

    def _regions_for(self, name: str, images):
        path = self._features_path(name)
        if path is not None and path.exists():
            return load_feature_table(path)
        table = extract_region_table(self.region_detector, images, data_config=self.data_config,
                                     iou_threshold=self.iou_threshold, batch_size=self.extract_batch_size,
                                     bf16=self.bf16, progress=self.progress, desc=f"OSCAR-B regions ({name})")
        if path is not None:
            from ..data.cache import save_quietly

            path.parent.mkdir(parents=True, exist_ok=True)
            save_quietly(table, path)
        return table


def baseline_stage_config(settings: dict, stage: str, fusion_sizes: dict, features_dir: Path,
                          init_from: str | None = None) -> dict:
    """The demo's recipe config of ``stage`` with the fusion model made OSCAR-B-shaped: BERT-base sizes, random
    initialisation (no BERT-base weights offline), no TEE inside, and the OSCAR-B region tables."""
    from ..training.demo import stage_config

    return stage_config(settings, stage, data={"features_dir": str(features_dir)},
                        fusion={**fusion_sizes, "init_text": None, "init_from": init_from, "with_vision": False})


def run_fusion_chain(settings: dict, data: BaselineRecipeData, sources: dict, output_dir: Path, fusion_sizes: dict,
                     log, clock, progress: bool = True) -> dict:
    """Train every stage of the chain ``sources`` (task → what it starts from: ``"minilm"`` = a fresh model, here
    random; or an earlier stage) in the demo's order, evaluate each on the test split; returns the metrics."""
    from ..training.demo import FUSION_TASKS, MINILM
    from ..training.recipes import run_stage

    features_dir = Path(data.data_config["features_dir"])
    metrics: dict[str, dict] = {}
    chain = (["pretrain"] if "pretrain" in sources.values() else []) + list(FUSION_TASKS)
    for stage in chain:
        source = sources.get(stage, MINILM)
        init_from = None if source == MINILM else str(output_dir / source)
        config = baseline_stage_config(settings, stage, fusion_sizes, features_dir, init_from)
        saved = _finished_stage(output_dir / stage)
        if saved is not None:  # an interrupted comparison goes on from its last finished stage
            log(f"  OSCAR-B {stage}: reusing the model trained in {output_dir / stage}")
            metrics[stage] = saved
            continue
        log(f"  OSCAR-B {stage}: from " + ("a random BERT-base-shaped model" if source == MINILM else source))
        with clock(f"oscar-b {stage}: train + evaluate"):
            result = run_stage(stage, config, output_dir / stage, data=data, evaluate=stage != "pretrain",
                               progress=progress)
        metrics[stage] = _stage_metrics(result.metrics)
        del result
        gc.collect()
    return metrics


def _stage_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("test_") or k == "train_loss"}


def _finished_stage(folder: Path) -> dict | None:
    """The metrics of a stage an earlier run of the comparison finished in ``folder`` (model saved, then
    metrics.json written), or None."""
    import json

    path = folder / "metrics.json"
    if not ((folder / "config.json").is_file() and path.is_file()):
        return None
    try:
        return _stage_metrics(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
