"""Convert OSCAR / VinVL checkpoints (microsoft/Oscar, `pytorch_model.bin`) to MiniVLM.

OSCAR's `BertImgModel` is BERT plus an image embedding: `bert.img_embedding` (Linear(2054 → hidden)) and, with
`use_img_layernorm`, `bert.LayerNorm` on it. Its heads are `cls.predictions` / `cls.seq_relationship`
(pre-training, captioning) and `classifier` (VQA: Linear-GELU-LayerNorm-Linear; retrieval: Linear(h, 2); NLVR2:
Linear(2h, 3h)-GELU-LayerNorm-Linear). MiniVLM uses the same layout under `minivlm.` (BERT names) and
`minivlm.region_embeddings.{projection,LayerNorm}`, so the conversion is a key rename plus a shape check.
OSCAR's region input is 2048-d features ⊕ the 6-d box `[x1, y1, x2, y2, w, h]` (normalised), exactly MiniVLM's
`region_feature_size=2048, box_feature_size=6` geometry.
"""

from __future__ import annotations

from pathlib import Path

import torch

_RENAMES = (
    ("bert.img_embedding.", "minivlm.region_embeddings.projection."),
    ("bert.LayerNorm.", "minivlm.region_embeddings.LayerNorm."),  # OSCAR's image LayerNorm (not the embeddings')
    ("bert.", "minivlm."),
)
_DROP = ("bert.embeddings.position_ids",)


def convert_oscar_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OSCAR key names → MiniVLM key names (heads `cls.*` and `classifier.*` keep theirs)."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("module."):  # saved from DataParallel
            key = key[len("module."):]
        if key in _DROP:
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        converted[key] = value
    return converted


def load_oscar_checkpoint(model, checkpoint: str | Path | dict) -> dict[str, list[str]]:
    """
    Load an OSCAR checkpoint (a `pytorch_model.bin` path, a folder holding one, or a state dict) into a MiniVLM model.

    Returns `{"missing": [...], "unexpected": [...]}`. Shapes must match: raises a `ValueError` naming the first
    tensor that does not (e.g. a 2054-d OSCAR image embedding into a model with `region_feature_size=1024`).
    """
    if not isinstance(checkpoint, dict):
        path = Path(checkpoint)
        if path.is_dir():
            path = path / "pytorch_model.bin"
        if not path.is_file():
            raise FileNotFoundError(f"OSCAR checkpoint not found: {path}")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"cannot read OSCAR checkpoint {path}: {err}") from err
    state = convert_oscar_state_dict(checkpoint)
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"OSCAR tensor {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)} "
                "(check region_feature_size / hidden size / number of answers)"
            )
    result = model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
