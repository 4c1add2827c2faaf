"""What the recipes train on, built lazily from a recipe config and shared between stages.

:class:`RecipeData` owns the scenes / NLVR datasets, the tokenizer, the trained detector and its image processor,
and the precomputed region features of every split (extracted once, optionally saved to ``data.features_dir`` and
reused from there). When ``data.stream`` is a feature folder (``minivlm-hf data features``), the held-out splits are
read from it instead, and the train split is streamed (``streamed_examples``).
"""

from __future__ import annotations

from pathlib import Path

from .features import (
    RegionStore, extract_features, load_feature_table, nlvr_images, oracle_features,
)
from ..data.cache import save_quietly


class RecipeData:
    """Lazily built data of a recipe config (see ``recipes`` for the keys). Objects passed in are used as they are."""

    def __init__(self, config: dict, *, scenes=None, nlvr=None, tokenizer=None, detector=None, image_processor=None,
                 progress: bool = True):
        self.config = config
        self._scenes, self._nlvr, self._tokenizer = scenes, nlvr, tokenizer
        self._detector, self.image_processor = detector, image_processor
        self.progress = progress
        self._features: dict = {}
        self._stores: dict = {}
        self._nlvr_features: dict = {}
        self._nlvr_statements: dict = {}
        self._nlvr_stores: dict = {}

    # -- sources ----------------------------------------------------------------------------------------------------
    @property
    def data_config(self) -> dict:
        return self.config["data"]

    @property
    def scenes(self):
        if self._scenes is None:
            from ..data import load_scenes

            d = self.data_config
            self._scenes = load_scenes(
                d["cache_dir"], d["num_train"], d["num_validation"], d["num_test"], d["scene_seed"],
                min_size=d["min_size"], max_size=d["max_size"], progress=self.progress,
            )
        return self._scenes

    @property
    def nlvr(self):
        if self._nlvr is None:
            from ..data import load_nlvr

            d = self.data_config
            self._nlvr = load_nlvr(
                d["cache_dir"], d["nlvr_num_train"], d["nlvr_num_validation"], d["nlvr_num_test"], d["scene_seed"],
                statements_per_pair=d.get("nlvr_statements_per_pair", 2), min_size=d["min_size"],
                max_size=d["max_size"], progress=self.progress,
            )
        return self._nlvr

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..convert import load_offline_tokenizer

            self._tokenizer = load_offline_tokenizer()
        return self._tokenizer

    @property
    def detector(self):
        if self._detector is None and self.data_config["features"] == "detector":
            path = self.data_config.get("detector")
            if not path:
                raise ValueError(
                    "data.detector is not set: fusion stages extract regions with a trained TEE. Train one with "
                    "`minivlm-hf train detector --output-dir DIR` and set data.detector to DIR (or use "
                    "data.features='oracle' for ground-truth regions)"
                )
            path = Path(path)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"data.detector: {path / 'config.json'} does not exist (not a trained detector)")
            from transformers import AutoImageProcessor, AutoModelForObjectDetection

            import minivlm_hf  # noqa: F401 - registers the TEE with the Auto classes

            self._detector = AutoModelForObjectDetection.from_pretrained(str(path))
            if self.image_processor is None:
                self.image_processor = AutoImageProcessor.from_pretrained(str(path))
        return self._detector

    def ensure_image_processor(self):
        if self.image_processor is None:
            if self.data_config["features"] == "detector" and self.data_config.get("detector"):
                self.detector  # noqa: B018 - loads the processor saved with the detector
            if self.image_processor is None:
                from ..modeling.image_processing_minivlm import MiniVLMImageProcessor

                self.image_processor = MiniVLMImageProcessor(size={"longest_edge": int(self.data_config["image_size"])})
        return self.image_processor

    @property
    def oracle(self) -> bool:
        mode = self.data_config["features"]
        if mode not in ("detector", "oracle"):
            raise ValueError(f"data.features must be 'detector' or 'oracle', got {mode!r}")
        return mode == "oracle"

    @property
    def num_regions(self) -> int:
        return int(self.data_config["oracle_num_regions"] if self.oracle else self.detector.config.num_regions)

    @property
    def feature_size(self) -> int:
        return int(self.data_config["oracle_feature_size"] if self.oracle else self.detector.config.box_head_dim)

    # -- region features ----------------------------------------------------------------------------------------------
    def streamed_table(self, kind: str, split: str):
        """``split`` of the feature folder ``data.stream`` (in memory) if it holds features of ``kind`` ("scenes" /
        "nlvr") and that split; else None (the split is then extracted from the recipe's own data)."""
        source = self.data_config.get("stream")
        if not source or split == "train":
            return None
        if not hasattr(self, "_stream_kind"):
            import datasets

            from ..data.streaming import stream_dataset

            columns = stream_dataset(source, "train", rank=0, world_size=1).features or {}
            self._stream_kind = ("nlvr" if "left_region_features" in columns
                                 else "scenes" if "region_features" in columns else None)
            self._stream_splits = datasets.get_dataset_split_names(str(source)) if self._stream_kind else []
        if self._stream_kind != kind or split not in self._stream_splits:
            return None
        import datasets

        return datasets.load_dataset(str(source), split=split)

    def _features_path(self, name: str) -> Path | None:
        root = self.data_config.get("features_dir")
        return Path(root) / name if root else None

    def _regions_for(self, name: str, images):
        path = self._features_path(name)
        if path is not None and path.exists():
            return load_feature_table(path)
        d = self.data_config
        if self.oracle:
            table = oracle_features(images, feature_size=d["oracle_feature_size"], num_regions=d["oracle_num_regions"],
                                    tag_attributes=bool(d.get("tag_attributes", False)),
                                    tag_order=d.get("tag_order", "score"))
        else:
            table = extract_features(
                self.detector, self.ensure_image_processor(), images, batch_size=d["extract_batch_size"],
                tag_threshold=d["tag_threshold"], tag_attributes=bool(d.get("tag_attributes", False)),
                attribute_threshold=d.get("tag_attribute_threshold", 0.5), tag_order=d.get("tag_order", "score"),
                desc=f"Extracting regions ({name})", progress=self.progress,
            )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_quietly(table, path)
        return table

    def features(self, split: str):
        """The scenes split with region columns (and without the image column)."""
        if split not in self._features:
            streamed = self.streamed_table("scenes", split)
            if streamed is not None:
                self._features[split] = streamed
                return streamed
            images = self.scenes[split]
            limit = self.data_config.get("fusion_num_train") if split == "train" else None
            if limit is not None and limit < len(images):
                images = images.select(range(int(limit)))
            self._features[split] = self._regions_for(f"scenes_{split}", images)
        return self._features[split]

    def store(self, split: str) -> RegionStore:
        if split not in self._stores:
            self._stores[split] = RegionStore(self.features(split))
        return self._stores[split]

    def _nlvr_split(self, split: str):
        if split not in self._nlvr_statements:
            streamed = self.streamed_table("nlvr", split)
            if streamed is not None:  # statements carrying both images' regions (left_* / right_* columns)
                self._nlvr_statements[split], self._nlvr_features[split] = streamed, None
                return None, streamed
            images, statements = nlvr_images(self.nlvr[split])
            self._nlvr_statements[split] = statements
            self._nlvr_features[split] = self._regions_for(f"nlvr_{split}", images)
        return self._nlvr_features[split], self._nlvr_statements[split]

    def nlvr_statements(self, split: str):
        return self._nlvr_split(split)[1]

    def nlvr_store(self, split: str) -> RegionStore:
        if split not in self._nlvr_stores:
            images = self._nlvr_split(split)[0]
            self._nlvr_stores[split] = RegionStore(images) if images is not None else None
        return self._nlvr_stores[split]

    # -- saving -------------------------------------------------------------------------------------------------------
    def processor(self, model_config=None):
        from ..modeling.processing_minivlm import MiniVLMProcessor

        kwargs = {}
        if model_config is not None:
            kwargs = {"max_text_length": model_config.max_text_length, "max_tag_length": model_config.max_tag_length}
        return MiniVLMProcessor(self.ensure_image_processor(), self.tokenizer, **kwargs)

    def save_processor(self, output_dir, stage: str, model) -> None:
        if stage == "detector":
            self.ensure_image_processor().save_pretrained(str(output_dir))
        else:
            self.processor(model.config).save_pretrained(str(output_dir))


__all__ = ["RecipeData"]
