"""Size and cost of each side's image → answer call: parameters, FLOPs (``torch.utils.flop_counter``) and wall
time, both sides timed in the same interleaved rounds (:func:`minivlm_hf.benchmark.timing.compare`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.transforms.functional import pil_to_tensor

from .detector import RegionDetector, detect_regions


def count_parameters(*modules: nn.Module) -> int:
    """Parameters of ``modules`` together, each tensor counted once."""
    seen: dict[int, int] = {}
    for module in modules:
        for param in module.parameters():
            seen[id(param)] = param.numel()
    return sum(seen.values())


def minivlm_answer_call(model, processor, image, question: str) -> Callable[[], torch.Tensor]:
    """MiniVLM's image → answer logits in one call of the saved VQA model (its TEE runs inside)."""

    def run():
        inputs = processor(images=[image], text=[question], return_tensors="pt")
        return model(**inputs).logits

    return run


def oscar_b_answer_call(detector: RegionDetector, model, processor, image, question: str,
                        iou_threshold: float) -> Callable[[], torch.Tensor]:
    """OSCAR-B's image → answer logits: the Faster R-CNN's 50 regions and their tags, then the BERT-base-shaped
    VQA model (the same question tokens and tag rule as MiniVLM)."""

    def run():
        text = processor(text=[question], return_tensors="pt")
        regions = detect_regions(detector, [pil_to_tensor(image.convert("RGB")).float() / 255.0], iou_threshold)
        tag_ids, tag_mask = model.minivlm.tags_from_regions(
            regions["region_labels"], regions["region_scores"], regions["region_mask"],
            regions["region_attribute_scores"], region_boxes=regions["region_boxes"])
        return model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                     region_features=regions["region_features"], region_boxes=regions["region_boxes"],
                     region_mask=regions["region_mask"], tag_ids=tag_ids, tag_attention_mask=tag_mask).logits

    return run


def measure_costs(calls: dict[str, Callable], models: dict[str, tuple[nn.Module, ...]], *, runs: int, warmup: int,
                  progress: bool = True) -> dict[str, dict]:
    """Per side: ``parameters``, ``flops`` and ``time_s`` (median) of its call, plus the timing's min / max."""
    from ..benchmark.accounting import total_flops
    from ..benchmark.timing import compare

    stats = compare(calls, runs=runs, warmup=warmup, progress=progress)
    out = {}
    for name, fn in calls.items():
        out[name] = {"parameters": count_parameters(*models[name]), "flops": total_flops(fn),
                     "time_s": stats[name].median, "time_min_s": stats[name].min, "time_max_s": stats[name].max,
                     "timing_runs": len(stats[name].runs), "threads": stats[name].threads}
    return out
