"""Data for minivlm-hf: synthetic scenes with exact ground truth, and loaders for the standard formats.

- :mod:`.vocab`: shapes, colours, sizes, label maps, the VQA answer vocabulary;
- :mod:`.scenes`: :func:`load_scenes` / :func:`load_nlvr` (cached ``DatasetDict``s), COCO conversion;
- :mod:`.formats`: COCO detection, COCO captions (Karpathy split), VQA v2, OSCAR/VinVL feature TSV;
- :mod:`.parquet`: sharded parquet export with a dataset card, and its upload to a Hub dataset repo;
- :mod:`.webdataset`: the same export as WebDataset tar shards, read back as the same rows;
- :mod:`.streaming`: :func:`stream_dataset`, a split streamed shard by shard, each rank reading its own shards.
"""

from .._lazy import lazy_attributes

# public name -> submodule that defines it; imported on first use (PEP 562)
_LAZY = {
    **dict.fromkeys((
        "ATTRIBUTE_ID2LABEL", "ATTRIBUTE_LABEL2ID", "COLORS", "OBJECT_ID2LABEL", "OBJECT_LABEL2ID", "SHAPES",
        "SIZES", "SYNTHETIC_ANSWERS", "build_answer_vocab",
    ), "vocab"),
    **dict.fromkeys((
        "GENERATOR_VERSION", "NLVR_FEATURES", "SCENE_FEATURES", "SceneConfig", "build_nlvr", "build_scenes",
        "detection_annotations", "load_nlvr", "load_scenes", "make_scene", "scene_to_coco",
    ), "scenes"),
    **dict.fromkeys((
        "iter_feature_tsv", "load_coco_detection", "load_karpathy_captions", "load_vqa_v2", "read_coco_categories",
        "read_feature_tsv", "write_feature_tsv",
    ), "formats"),
    **dict.fromkeys(("push_dataset_folder", "write_parquet_shards"), "parquet"),
    "stream_dataset": "streaming",
    "write_webdataset_shards": "webdataset",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
