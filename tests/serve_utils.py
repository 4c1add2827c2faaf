"""Tiny task checkpoints laid out as the demo writes them (detector/, pretrain/, caption/, vqa/, retrieval/, nlvr/)."""

from pathlib import Path

DEMO_LAYOUT = {"detector": ("minivlm-tee-tiny", "detector"), "pretrain": ("minivlm-tiny", "pretrain"),
               "caption": ("minivlm-tiny", "caption"), "vqa": ("minivlm-tiny", "vqa"),
               "retrieval": ("minivlm-tiny", "retrieval"), "nlvr": ("minivlm-tiny", "nlvr")}


def make_demo_folder(root: Path) -> Path:
    """Random-weight tiny checkpoints of every stage (~1 s): what ``minivlm-hf serve`` finds in ``make demo``'s
    output, at test size."""
    from minivlm_hf.hub.init_checkpoint import init_checkpoint

    for folder, (variant, task) in DEMO_LAYOUT.items():
        init_checkpoint(variant, root / folder, task=task, seed=1)
    return root
