"""MiniVLM processor: images + text (+ tags, + VQA answers) → model inputs, and outputs → text / answers.

Remote-code file: imports only torch, transformers and sibling files.
"""

import warnings
from collections.abc import Sequence

import torch
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ImagesKwargs, ProcessingKwargs, TextKwargs, Unpack
from transformers.utils import logging

logger = logging.get_logger(__name__)


def _as_list(value, name):
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return list(value)
    raise ValueError(f"{name} must be a string or a list of strings, got {type(value).__name__}")


def tag_token_ids(tokenizer, id2label: dict) -> dict[int, list[int]]:
    """Word pieces of every class / attribute name (`"traffic_light"` → "traffic light"), keyed by id: the
    `config.tag_token_ids` / `tag_attribute_token_ids` from which the model turns detections into tag tokens."""
    return {
        int(i): tokenizer(str(name).replace("_", " "), add_special_tokens=False)["input_ids"]
        for i, name in id2label.items()
    }


class MiniVLMTextKwargs(TextKwargs, total=False):
    """The tokenizer arguments a `MiniVLMProcessor` call accepts for `text`."""


class MiniVLMImageKwargs(ImagesKwargs, total=False):
    """The image-processor arguments a `MiniVLMProcessor` call accepts (plus the image processor's own)."""

    pad_size_divisor: int | None
    do_convert_annotations: bool | None


class MiniVLMProcessorKwargs(ProcessingKwargs, total=False):
    text_kwargs: MiniVLMTextKwargs
    images_kwargs: MiniVLMImageKwargs
    _defaults = {"text_kwargs": {"padding": True}}


class MiniVLMProcessor(ProcessorMixin):
    r"""
    Wraps a [`MiniVLMImageProcessor`] and a BERT tokenizer.

    - `images` → `pixel_values`, `pixel_mask` (the TEE inside the model turns them into regions and tags);
    - `text` → `input_ids`, `attention_mask`: `[CLS] text [SEP]`, truncated to `max_text_length` with a warning;
    - `tags` (object names, when regions are precomputed or tags are known) → `tag_ids`, `tag_attention_mask`
      (segment 1: `tag … [SEP]`, truncated to `max_tag_length`);
    - `answers` + `answer2id` → VQA soft-score `labels` (min(#annotators giving the answer / 3, 1)).

    Args:
        image_processor ([`MiniVLMImageProcessor`]): the image processor.
        tokenizer ([`BertTokenizer`]): BERT uncased word pieces.
        max_text_length (`int`, defaults to 40): text tokens at most, [CLS] and [SEP] included.
        max_tag_length (`int`, defaults to 30): tag tokens at most, the closing [SEP] included.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_text_length: int = 40, max_tag_length: int = 30, **kwargs):
        self.max_text_length = max_text_length
        self.max_tag_length = max_tag_length
        super().__init__(image_processor, tokenizer, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids", "attention_mask", "tag_ids", "tag_attention_mask", "pixel_values", "pixel_mask",
        ]

    # ------------------------------------------------------------------------------------------------------------
    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        tags: list[str] | list[list[str]] | None = None,
        answers: list[str] | list[list[str]] | None = None,
        answer2id: dict[str, int] | None = None,
        annotations=None,
        max_text_length: int | None = None,
        **kwargs: Unpack[MiniVLMProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Args:
            images: one image or a list (PIL, numpy or torch; see the image processor).
            text: one string or a list, one per image (or per row when no images are given).
            tags: object names per image (a list of strings, or a list of lists for a batch).
            answers: VQA annotator answers per question (a string or a list of strings each).
            answer2id: answer vocabulary for `answers` (e.g. `model.config.label2id`).
            annotations: COCO detection annotations, forwarded to the image processor.
            max_text_length: overrides `self.max_text_length` for this call.
            kwargs: tokenizer arguments for `text` (`padding`, `max_length`, `truncation`, `padding_side`,
                `pad_to_multiple_of`, ...) and image-processor arguments for `images` (`size`, `do_normalize`,
                `do_resize`, ...), flat or as `text_kwargs={...}` / `images_kwargs={...}`, plus `return_tensors`
                (default `"pt"`). An argument neither accepts is refused. Text is `[CLS] text [SEP]`, padded to the
                longest row and truncated to `max_text_length` tokens (with a warning) unless told otherwise; for
                batched generation from prompts of different lengths, `generate` re-pads them itself.
        """
        if images is None and text is None and tags is None:
            raise ValueError("the processor needs images, text or tags")
        return_tensors = kwargs.pop("return_tensors", "pt")
        self._check_kwargs(kwargs)
        output_kwargs = self._merge_kwargs(MiniVLMProcessorKwargs, tokenizer_init_kwargs={}, **kwargs)
        data: dict = {}
        batch = None
        if images is not None:
            image_kwargs = dict(output_kwargs["images_kwargs"], return_tensors=return_tensors)
            if annotations is not None:
                image_kwargs["annotations"] = annotations
            image_inputs = self.image_processor(images, **image_kwargs)
            data.update(image_inputs)
            batch = len(image_inputs["pixel_values"])

        texts = _as_list(text, "text")
        if texts is not None and not texts:
            raise ValueError("text is an empty list: give one string per image (or per row)")
        if texts is not None:
            if batch is not None and len(texts) != batch:
                if len(texts) == 1:
                    texts = texts * batch
                else:
                    raise ValueError(f"got {batch} images but {len(texts)} texts: pass one text per image")
            batch = len(texts)
            data.update(self._encode_text(texts, max_text_length or self.max_text_length, output_kwargs["text_kwargs"]))

        if tags is not None:
            tag_lists = [tags] if tags and isinstance(tags[0], str) else list(tags)
            if batch is not None and len(tag_lists) != batch:
                raise ValueError(f"got {len(tag_lists)} tag lists for a batch of {batch}")
            data.update(self._encode_tags(tag_lists))

        if answers is not None:
            if answer2id is None:
                raise ValueError("answers need answer2id (the answer vocabulary, e.g. model.config.label2id)")
            answer_lists = [[a] if isinstance(a, str) else list(a) for a in answers]
            if batch is not None and len(answer_lists) != batch:
                raise ValueError(f"got {len(answer_lists)} answer lists for a batch of {batch}")
            data["labels"] = vqa_soft_scores(answer_lists, answer2id)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _check_kwargs(self, kwargs: dict) -> None:
        """Refuse an argument that neither the tokenizer nor the image processor takes (instead of ignoring it)."""
        text_keys = set(MiniVLMTextKwargs.__annotations__)
        image_keys = set(MiniVLMImageKwargs.__annotations__) | set(
            getattr(getattr(self.image_processor, "valid_kwargs", None), "__annotations__", {})
        )
        groups = {"text_kwargs": text_keys, "images_kwargs": image_keys, "common_kwargs": {"return_tensors"}}
        for key, value in kwargs.items():
            if key in groups:
                unknown = sorted(set(value) - groups[key]) if isinstance(value, dict) else [key]
            else:
                unknown = [] if (key in text_keys or key in image_keys or key == "return_tensors") else [key]
            if unknown:
                raise ValueError(
                    f"MiniVLMProcessor got unexpected argument(s) {unknown}: it takes the tokenizer's arguments for "
                    "text (padding, max_length, truncation, padding_side, ...) and the image processor's for images "
                    f"(size, do_resize, do_normalize, ...); accepted: {sorted((text_keys | image_keys) - {'text_pair', 'text_target', 'text_pair_target'})}"
                )

    def _encode_text(self, texts: list[str], max_length: int, text_kwargs: dict | None = None) -> dict:
        """`[CLS] text [SEP]` rows through the tokenizer with the caller's arguments. The model has positions for
        `max_length` text tokens, so longer rows are truncated (with a warning) and a larger `max_length` is refused."""
        text_kwargs = dict(text_kwargs or {})
        text_kwargs.pop("return_tensors", None)
        limit = text_kwargs.pop("max_length", None) or max_length
        if limit > max_length:
            raise ValueError(
                f"max_length={limit} exceeds max_text_length={max_length}: the model has no positions for more text "
                "tokens ([CLS] and [SEP] included)"
            )
        truncation = text_kwargs.pop("truncation", True)
        if truncation in (False, "do_not_truncate"):
            truncation = True  # longer rows cannot be encoded: truncate, but say so below
        text_kwargs.setdefault("padding", True)
        text_kwargs.setdefault("return_token_type_ids", False)
        lengths = [len(ids) + 2 for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        for index, length in enumerate(lengths):
            if length > limit:
                warnings.warn(
                    f"text {index} has {length} tokens; truncated to max_text_length={limit} ([CLS] and [SEP] "
                    "included)", stacklevel=3,
                )
        encoded = self.tokenizer(
            texts, truncation=truncation, max_length=limit, return_tensors="pt", **text_kwargs
        )
        return dict(encoded)

    def _encode_tags(self, tag_lists: list[list[str]]) -> dict:
        encoded = [encode_tag_phrases(self.tokenizer, tags, self.max_tag_length) for tags in tag_lists]
        return _pad(encoded, self.tokenizer.pad_token_id, "tag_ids", "tag_attention_mask")

    # ------------------------------------------------------------------------------------------------------------
    def prepare_config(self, config):
        """Store in `config` the word pieces of every TEE class and attribute name, so the model can turn detections
        into tags."""
        vision = getattr(config, "vision_config", None)
        if vision is None or not vision.id2label:
            raise ValueError("the config has no vision_config.id2label to build tag tokens from")
        config.tag_token_ids = tag_token_ids(self.tokenizer, vision.id2label)
        config.tag_attribute_token_ids = tag_token_ids(self.tokenizer, getattr(vision, "attribute_id2label", None) or {})
        config.max_text_length = self.max_text_length
        config.max_tag_length = self.max_tag_length
        return config

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Token ids (e.g. `generate` output) → captions."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, sequence, skip_special_tokens: bool = True, **kwargs) -> str:
        return self.tokenizer.decode(sequence, skip_special_tokens=skip_special_tokens, **kwargs)

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    def post_process_vqa(
        self, logits: torch.Tensor, id2label: dict[int, str], top_k: int = 1, score_function: str = "sigmoid"
    ) -> list:
        """VQA logits `(batch, num_answers)` → per question `[{"answer", "score"}]`, best first. `score_function`:
        `"sigmoid"` (models trained with `vqa_loss="bce"`) or `"softmax"` (`vqa_loss="softmax"`)."""
        if score_function not in ("sigmoid", "softmax"):
            raise ValueError(f"score_function must be 'sigmoid' or 'softmax', got {score_function!r}")
        if logits.dim() != 2 or logits.shape[1] != len(id2label):
            raise ValueError(f"logits must have shape (batch, {len(id2label)}), got {tuple(logits.shape)}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if not torch.isfinite(logits).all():
            raise ValueError("logits contain NaN or inf: the model's output is not usable")
        logits = logits.detach().float()
        probs = logits.sigmoid() if score_function == "sigmoid" else logits.softmax(-1)
        top_k = min(top_k, probs.shape[1])
        scores, indices = probs.topk(top_k, dim=-1)
        return [
            [{"answer": id2label[int(i)], "score": float(s)} for s, i in zip(row_s, row_i)]
            for row_s, row_i in zip(scores, indices)
        ]

    def post_process_object_detection(self, *args, **kwargs):
        return self.image_processor.post_process_object_detection(*args, **kwargs)


def encode_tag_phrases(tokenizer, tags: Sequence[str], max_tag_length: int) -> list[int]:
    """Tag phrases → `tag … [SEP]` word pieces, truncated to `max_tag_length`. Each phrase is tokenised on its own
    (for WordPiece the same pieces as the joined string)."""
    ids = []
    if tags:
        for pieces in tokenizer(list(tags), add_special_tokens=False)["input_ids"]:
            ids.extend(pieces)
    return ids[: max_tag_length - 1] + [tokenizer.sep_token_id]


def _pad(rows: list[list[int]], pad_id: int, ids_name: str, mask_name: str) -> dict:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {ids_name: ids, mask_name: mask}


def vqa_normalize(answer: str) -> str:
    return " ".join(answer.lower().strip().rstrip(".").split())


def vqa_soft_scores(answer_lists: list[list[str]], answer2id: dict[str, int]) -> torch.Tensor:
    """VQA v2 soft targets: score(a) = min(#annotators who said a / 3, 1); answers outside the vocabulary are dropped."""
    labels = torch.zeros((len(answer_lists), len(answer2id)), dtype=torch.float)
    for row, answers in enumerate(answer_lists):
        counts: dict[str, int] = {}
        for answer in answers:
            key = vqa_normalize(answer)
            counts[key] = counts.get(key, 0) + 1
        for answer, count in counts.items():
            if answer in answer2id:
                labels[row, answer2id[answer]] = min(count / 3.0, 1.0)
    return labels


__all__ = ["MiniVLMProcessor", "vqa_soft_scores"]
