"""Data for minivlm-hf: synthetic scenes with exact ground truth, and loaders for the standard formats.

- :mod:`.vocab`: shapes, colours, sizes, label maps, the VQA answer vocabulary;
- :mod:`.scenes`: :func:`load_scenes` / :func:`load_nlvr` (cached ``DatasetDict``s), COCO conversion;
- :mod:`.formats`: COCO detection, COCO captions (Karpathy split), VQA v2, OSCAR/VinVL feature TSV.
"""

from .formats import (
    iter_feature_tsv,
    load_coco_detection,
    load_karpathy_captions,
    load_vqa_v2,
    read_coco_categories,
    read_feature_tsv,
    write_feature_tsv,
)
from .scenes import (
    GENERATOR_VERSION,
    NLVR_FEATURES,
    SCENE_FEATURES,
    SceneConfig,
    build_nlvr,
    build_scenes,
    detection_annotations,
    load_nlvr,
    load_scenes,
    make_scene,
    scene_to_coco,
)
from .vocab import (
    ATTRIBUTE_ID2LABEL,
    ATTRIBUTE_LABEL2ID,
    COLORS,
    OBJECT_ID2LABEL,
    OBJECT_LABEL2ID,
    SHAPES,
    SIZES,
    SYNTHETIC_ANSWERS,
    build_answer_vocab,
)

__all__ = [
    "ATTRIBUTE_ID2LABEL", "ATTRIBUTE_LABEL2ID", "COLORS", "GENERATOR_VERSION", "NLVR_FEATURES",
    "OBJECT_ID2LABEL", "OBJECT_LABEL2ID", "SCENE_FEATURES", "SHAPES", "SIZES", "SYNTHETIC_ANSWERS",
    "SceneConfig", "build_answer_vocab", "build_nlvr", "build_scenes", "detection_annotations",
    "iter_feature_tsv", "load_coco_detection", "load_karpathy_captions", "load_nlvr", "load_scenes",
    "load_vqa_v2", "make_scene", "read_coco_categories", "read_feature_tsv", "scene_to_coco",
    "write_feature_tsv",
]
