"""MiniVLM fusion-transformer configuration.

Remote-code file: imports only transformers / huggingface_hub and sibling files (flat relative imports).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_minivlm_tee import TEEConfig


@strict
class MiniVLMConfig(PreTrainedConfig):
    r"""
    Configuration of the MiniVLM fusion transformer (an OSCAR-style single-stream BERT over text tokens,
    object-tag tokens and region features), optionally with its TEE region extractor.

    The defaults are the paper's fusion model: MiniLM shape (12 layers, hidden 384, 12 heads, FFN 1536,
    BERT-uncased vocabulary) over 1024-d TEE region features plus 6-d box geometry.

    Args:
        vision_config (`TEEConfig` or `dict`, *optional*):
            The TEE region extractor. `None` builds a model for precomputed region features only.
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act,
        hidden_dropout_prob, attention_probs_dropout_prob, max_position_embeddings, type_vocab_size,
        initializer_range, layer_norm_eps, pad_token_id:
            As in `BertConfig`.
        region_feature_size (`int`, defaults to 1024):
            Size of one region feature (1024 for TEE, 2048 for OSCAR/VinVL Faster R-CNN features).
        box_feature_size (`int`, defaults to 6):
            Size of the box geometry appended to each region feature:
            `[x1, y1, x2, y2, w, h]`, normalised by the image size.
        use_image_layer_norm (`bool`, defaults to `True`):
            LayerNorm after the region projection (OSCAR's `img_layer_norm`).
        freeze_vision_model (`bool`, defaults to `True`):
            Run the TEE inside the fusion model as a frozen extractor (eval mode, no gradients), as OSCAR uses its
            detector. Train the TEE on its own with `TEEForObjectDetection`.
        max_regions (`int`, defaults to 50): regions fed to the encoder at most.
        max_text_length (`int`, defaults to 40): text tokens at most, [CLS] and [SEP] included. Tag tokens take
            the positions from `max_text_length` on, however long the text is.
        max_tag_length (`int`, defaults to 30): tag tokens at most, the closing [SEP] included.
        tag_score_threshold (`float`, defaults to 0.2): a TEE region becomes a tag when its score is at least this.
        tag_attributes (`bool`, defaults to `False`): tag style. `False` (OSCAR): each detected class name once.
            `True` (VinVL-style attribute tags): one phrase per kept region, most confident first, its attribute
            names (vocabulary order) then its class name, e.g. "red large circle"; repeats are kept, so tags also
            carry counts. Needs `tag_attribute_token_ids`.
        tag_attribute_threshold (`float`, defaults to 0.5): an attribute is named when its probability (sigmoid
            of the TEE's attribute logit) is at least this.
        max_tag_attributes (`int`, defaults to 2): attributes named per region at most (the most probable).
        tag_order (`str`, defaults to `"score"`): order of the tag phrases. `"score"` (OSCAR / VinVL): most confident
            region first. `"area"`: largest box first (which regions become tags is decided by score either way), so
            the most salient objects, which captions mention first, lead the tag segment.
        tag_attribute_token_ids (`dict[int, list[int]]`, *optional*): word-piece ids of every TEE attribute name
            (filled like `tag_token_ids`).
        tag_token_ids (`dict[int, list[int]]`, *optional*): word-piece ids of every TEE class name, used to turn
            the TEE's detected labels into tag tokens when the model runs the TEE itself. Filled by
            `MiniVLMProcessor.prepare_config` / `minivlm_hf.init_fusion_from_bert`.
        vqa_loss (`str`, defaults to `"bce"`): VQA training loss on the soft answer scores. `"bce"` (OSCAR): binary
            cross-entropy per answer, scaled by the number of answers; answer scores are sigmoids. `"softmax"`:
            cross-entropy against the soft scores normalised to sum to 1; answer scores are a softmax (it learns
            single-answer questions in far fewer steps; see docs/results.md).
        caption_label_smoothing (`float`, defaults to 0.1): label smoothing of the captioning loss.
        classifier_dropout (`float`, *optional*): dropout before the classification heads.
        unpad_tokens (`bool`, defaults to `True`): when at least 10% of a batch's sequence is padding (text, tags and
            regions are padded separately), run the encoder's projections, feed-forward and LayerNorms on the real
            tokens only and scatter them into the padded layout just for the attention: the same outputs at every
            real position for less compute (padding positions of `last_hidden_state` are then zeros). Off with a
            cache, with returned hidden states / attentions, and under tracing, `torch.compile` or ONNX export.
        mask_token_id, cls_token_id, sep_token_id: special token ids (BERT uncased by default).
    """

    model_type = "minivlm"
    sub_configs_defaults = {"vision_config": SubConfigSpec(TEEConfig, optional=True)}

    vision_config: dict | PreTrainedConfig | None = None
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    region_feature_size: int = 1024
    box_feature_size: int = 6
    use_image_layer_norm: bool = True
    freeze_vision_model: bool = True
    max_regions: int = 50
    max_text_length: int = 40
    max_tag_length: int = 30
    tag_score_threshold: float | int = 0.2
    tag_token_ids: dict | None = None
    tag_attributes: bool = False
    tag_attribute_threshold: float | int = 0.5
    max_tag_attributes: int = 2
    tag_order: str = "score"
    tag_attribute_token_ids: dict | None = None
    caption_label_smoothing: float | int = 0.1
    vqa_loss: str = "bce"
    classifier_dropout: float | int | None = None
    unpad_tokens: bool = True
    pad_token_id: int | None = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    bos_token_id: int | None = 101
    eos_token_id: int | list[int] | None = 102
    use_cache: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        self._check_vision_config()
        super().__post_init__(**kwargs)
        if self.tag_token_ids is not None:
            # JSON turns int keys into strings.
            self.tag_token_ids = {int(k): [int(t) for t in v] for k, v in self.tag_token_ids.items()}
        if self.tag_attribute_token_ids is not None:
            self.tag_attribute_token_ids = {
                int(k): [int(t) for t in v] for k, v in self.tag_attribute_token_ids.items()
            }
        self._check()

    def _check_vision_config(self):
        # Before the sub-config is built: a dict of another model_type would become a TEEConfig of that type.
        vision = self.vision_config
        if vision is None:
            return
        model_type = vision.get("model_type", TEEConfig.model_type) if isinstance(vision, dict) else getattr(
            vision, "model_type", None)
        if not isinstance(vision, (dict, PreTrainedConfig)) or model_type != TEEConfig.model_type:
            raise ValueError(
                f"MiniVLMConfig.vision_config: must be a TEEConfig (model_type {TEEConfig.model_type!r}), its dict or "
                f"None, got {type(vision).__name__}" + (f" with model_type {model_type!r}" if model_type else "")
            )

    def _check_types(self):
        expected = {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}
        for field, kind in _FIELD_TYPES.items():
            if not hasattr(self, field):
                continue
            value = getattr(self, field)
            ok = isinstance(value, bool) if kind is bool else (
                isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool))
            if not ok and not (value is None and field in _OPTIONAL_FIELDS):
                raise ValueError(f"MiniVLMConfig.{field}: must be {expected[kind]}, got {value!r} ({type(value).__name__})")

    def _check(self):
        def fail(field, why):
            raise ValueError(f"MiniVLMConfig.{field}: {why}")

        self._check_types()

        for field in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "region_feature_size", "max_regions", "max_text_length", "max_tag_length", "max_position_embeddings",
        ):
            if getattr(self, field) <= 0:
                fail(field, f"must be positive, got {getattr(self, field)}")
        if self.hidden_size % self.num_attention_heads:
            fail("num_attention_heads", f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads}")
        if self.box_feature_size not in (4, 6):
            fail("box_feature_size", f"must be 4 (xyxy) or 6 (xyxy + w, h), got {self.box_feature_size}")
        if self.max_text_length + self.max_tag_length > self.max_position_embeddings:
            fail("max_tag_length", "max_text_length + max_tag_length exceeds max_position_embeddings")
        if self.vqa_loss not in ("bce", "softmax"):
            fail("vqa_loss", f"must be 'bce' or 'softmax', got {self.vqa_loss!r}")
        if not 0.0 <= self.tag_score_threshold <= 1.0:
            fail("tag_score_threshold", f"must be in [0, 1], got {self.tag_score_threshold}")
        if not 0.0 <= self.tag_attribute_threshold <= 1.0:
            fail("tag_attribute_threshold", f"must be in [0, 1], got {self.tag_attribute_threshold}")
        if self.tag_order not in ("score", "area"):
            fail("tag_order", f"must be 'score' or 'area', got {self.tag_order!r}")
        if self.max_tag_attributes < 0:
            fail("max_tag_attributes", f"must be >= 0, got {self.max_tag_attributes}")
        if not 0.0 <= self.caption_label_smoothing < 1.0:
            fail("caption_label_smoothing", f"must be in [0, 1), got {self.caption_label_smoothing}")
        if self.type_vocab_size < 2:
            fail("type_vocab_size", "needs 2 token types (0 = text, 1 = tags)")
        if self.vision_config is not None and self.vision_config.box_head_dim != self.region_feature_size:
            fail(
                "region_feature_size",
                f"{self.region_feature_size} differs from the TEE's region feature size "
                f"vision_config.box_head_dim={self.vision_config.box_head_dim}",
            )


_FIELD_TYPES = {
    **dict.fromkeys(("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size", "region_feature_size", "box_feature_size",
                     "max_regions", "max_text_length", "max_tag_length", "max_tag_attributes"), int),
    **dict.fromkeys(("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps",
                     "tag_score_threshold", "tag_attribute_threshold", "caption_label_smoothing",
                     "classifier_dropout"), float),
    **dict.fromkeys(("use_image_layer_norm", "freeze_vision_model", "tag_attributes", "unpad_tokens"), bool),
    **dict.fromkeys(("hidden_act", "tag_order", "vqa_loss"), str),
}
_OPTIONAL_FIELDS = {"classifier_dropout"}

__all__ = ["MiniVLMConfig"]
