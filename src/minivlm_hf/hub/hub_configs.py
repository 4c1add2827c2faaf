"""Write the `hub_configs/<variant>/` folders from the variant table (:mod:`minivlm_hf.hub.variants`).

Every file is generated from the config / processor classes: for a detector variant `config.json` and
`preprocessor_config.json`; for a fusion variant also `processor_config.json` and `generation_config.json` (the
template of its default task, captioning; `minivlm-hf init --task` builds the others); for every variant a
model-card template `README.md` (:mod:`minivlm_hf.hub.model_card`). Regenerate with::

    python -m minivlm_hf.hub.hub_configs            # writes hub_configs/<variant>/ for every variant
    python -m minivlm_hf.hub.hub_configs --check    # exits 1 if a folder differs from what the code generates
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .model_card import card_template
from .variants import VARIANTS, fusion_config, generation_config, get_variant, image_processor, tee_config, variant_dir

__all__ = ["variant_files", "write_variant", "main"]


def _json(data) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _model_files(model, processor) -> dict[str, str]:
    """`config.json` (with the complete `auto_map`) and `preprocessor_config.json` of a model built on the meta
    device, as `save_pretrained` writes them."""
    from ..modeling.remote_code_minivlm import IMAGE_PROCESSOR_CLASSES, PROCESSOR_CLASS, complete_auto_map

    complete_auto_map(model)
    config = model.config
    config.architectures = [type(model).__name__]
    config_dict = config.to_diff_dict()
    config_dict.pop("transformers_version", None)
    config_dict.pop("dtype", None)
    ip_dict = processor.to_dict()
    ip_dict["auto_map"] = {"AutoImageProcessor": dict(IMAGE_PROCESSOR_CLASSES)}
    if config.model_type == "minivlm":
        ip_dict["auto_map"]["AutoProcessor"] = PROCESSOR_CLASS
    return {"config.json": _json(config_dict), "preprocessor_config.json": _json(ip_dict)}


def variant_files(name: str) -> dict[str, str]:
    """`{filename: text}` of a variant folder as the code generates it."""
    import torch

    from ..modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
    from ..modeling.modeling_minivlm_tee import TEEForObjectDetection
    from ..modeling.processing_minivlm import MiniVLMProcessor
    from ..modeling.remote_code_minivlm import PROCESSOR_CLASS
    from ..registration import register_auto_classes

    register_auto_classes()
    variant = get_variant(name)
    files = {"README.md": card_template(variant)}
    if variant.is_detector:
        with torch.device("meta"):
            model = TEEForObjectDetection(tee_config(variant))
        files.update(_model_files(model, image_processor(variant)))
        return files

    from ..convert import load_offline_tokenizer

    config = fusion_config(variant)
    processor = MiniVLMProcessor(
        image_processor(variant),
        load_offline_tokenizer(),
        max_text_length=config.max_text_length,
        max_tag_length=config.max_tag_length,
    )
    processor.prepare_config(config)
    with torch.device("meta"):
        model = MiniVLMForImageCaptioning(config)
    files.update(_model_files(model, processor.image_processor))
    processor_dict = processor.to_dict()
    processor_dict["image_processor"] = json.loads(files["preprocessor_config.json"])
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
    for filename, text in variant_files(name).items():
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
