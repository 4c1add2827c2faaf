# Copyright 2025 The minivlm-hf authors.
# Licensed under the MIT license.
"""Image processor of MiniVLM (TEE region detector input), torchvision backend.

`MiniVLMImageProcessor` (this file, torchvision backend, the default) and `MiniVLMImageProcessorPil`
(`image_processing_pil_minivlm.py`, PIL backend) share everything but the pixel operations, which live in
`MiniVLMImageProcessingMixin`:

* input checking and conversion: PIL images (any mode: grayscale, RGBA/LA/PA and palette with transparency are
  composited on white, P, CMYK, YCbCr, 16-bit `I;16`, 32-bit `I`, float `F`), EXIF orientation applied, numpy
  arrays and torch tensors (HWC or CHW, 1/3/4 channels, uint8 / uint16 / other integers / bool / float), file
  paths and URLs. Clear `ValueError`s for empty inputs, zero-sized images, wrong channel counts, NaN / inf pixels,
  unsupported objects, possible decompression bombs (more pixels than `PIL.Image.MAX_IMAGE_PIXELS`) and
  annotation lists whose length differs from the number of images;
* every image becomes 3-channel RGB whatever `do_convert_rgb` says (the TEE backbone takes 3 channels);
* resizing (default: longest edge 512, aspect ratio kept; also `shortest_edge`, `shortest_edge` + `longest_edge`
  (DETR rule), `height` + `width`, `max_height` + `max_width`), rescaling to [0, 1], ImageNet normalisation;
* padding bottom/right to the largest image of the batch, rounded up to a multiple of `pad_size_divisor` (128 =
  the stride of P7, so no further padding happens in the model), with a `pixel_mask` (1 = real pixel);
* COCO detection annotations -> `labels` (`class_labels`, `boxes` as normalised cxcywh relative to the UNPADDED
  resized image, `attribute_labels` (n, k) padded with -1, `area`, `iscrowd`, `orig_size`, `size`, `image_id`);
* post-processing of [`TEEForObjectDetection`] / [`TEEModel`] outputs.

Self-contained remote code: third-party imports only (numpy, PIL, torch, torchvision, transformers).
"""

import math
import os

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import get_size_with_aspect_ratio, group_images_by_shape, reorder_images
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
    get_image_size_for_max_height_width,
)
from transformers.processing_utils import ImagesKwargs

from .remote_code_minivlm import with_backend_auto_map  # minivlm-hf hub: dict-form AutoImageProcessor


class MiniVLMImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    pad_size_divisor (`int`, *optional*, defaults to 128):
        With `do_pad`, the padded height and width are rounded up to a multiple of this (0 or 1: no rounding).
    do_convert_annotations (`bool`, *optional*, defaults to `True`):
        Convert the boxes of the annotations to normalised `(center_x, center_y, width, height)` relative to the
        unpadded (resized) image; otherwise they stay absolute `(x1, y1, x2, y2)` pixels of the resized image.
    """

    pad_size_divisor: int | None
    do_convert_annotations: bool | None


def _is_path_like(item) -> bool:
    return isinstance(item, (str, os.PathLike))


class MiniVLMImageProcessingMixin:
    """Backend-independent part of the MiniVLM image processors (see the module docstring)."""

    valid_kwargs = MiniVLMImageProcessorKwargs
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"longest_edge": 512}
    default_to_square = False
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_pad = True
    do_convert_rgb = True
    pad_size_divisor = 128
    do_convert_annotations = True
    model_input_names = ["pixel_values", "pixel_mask"]

    def to_dict(self):
        # minivlm-hf hub: save `auto_map["AutoImageProcessor"]` as {"torchvision": ..., "pil": ...} so that
        # `backend="pil"` works with trust_remote_code (transformers saves only the registered class, and without
        # the dict `backend="pil"` silently returns the torchvision one); see remote_code_minivlm.py.
        return with_backend_auto_map(super().to_dict())

    # -- kwargs ---------------------------------------------------------------------------------------------------

    def _standardize_kwargs(self, size=None, **kwargs):
        # A bare int means "longest edge" here (the TEE is run at longest edge 512).
        if isinstance(size, int) and not isinstance(size, bool):
            size = {"longest_edge": size}
        standardized = super()._standardize_kwargs(size=size, **kwargs)
        divisor = standardized.get("pad_size_divisor")
        if divisor is not None and (isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 0):
            raise ValueError(f"`pad_size_divisor` must be a non-negative integer, got {divisor!r}.")
        return standardized

    def preprocess(self, images, annotations=None, **kwargs) -> BatchFeature:
        r"""
        Preprocess an image or a batch of images (and optionally their COCO detection annotations).

        Args:
            images (`ImageInput`):
                A PIL image, numpy array, torch tensor, path or URL, or a (nested) list of them; a 4-D array /
                tensor is a batch.
            annotations (`dict` or `list[dict]`, *optional*):
                One COCO detection dict per image: `{"image_id": int, "annotations": [{"bbox": [x, y, w, h],
                "category_id": int, "area": float, "iscrowd": 0, "attribute_ids": [int, ...]}, ...]}`
                (`area`, `iscrowd` and `attribute_ids` optional). Crowd boxes and empty boxes are dropped.
            **kwargs: any of [`MiniVLMImageProcessorKwargs`] (`size`, `do_pad`, `pad_size_divisor`, `return_tensors` ...).

        Returns:
            [`BatchFeature`] with `pixel_values` `(B, 3, H, W)` float32, `pixel_mask` `(B, H, W)` int64 and, with
            annotations, `labels`: one [`BatchFeature`] per image.
        """
        return super().preprocess(images, annotations, **kwargs)

    # -- input checking -------------------------------------------------------------------------------------------

    def _prepare_images_structure(self, images, expected_ndims: int = 3) -> list:
        flat = self._flatten_images(images)
        if len(flat) == 0:
            raise ValueError("No images were given: expected at least one image.")
        return [self._load_if_path(item, index) for index, item in enumerate(flat)]

    def _flatten_images(self, images) -> list:
        if isinstance(images, (list, tuple)):
            flat = []
            for item in images:
                flat.extend(self._flatten_images(item) if isinstance(item, (list, tuple)) else self._split_batch(item))
            return flat
        return self._split_batch(images)

    @staticmethod
    def _split_batch(item) -> list:
        if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
            return list(item)
        return [item]

    @staticmethod
    def _check_pixel_count(height: int, width: int, index: int):
        if height <= 0 or width <= 0:
            raise ValueError(f"Image {index} has zero size (height={height}, width={width}).")
        limit = PIL.Image.MAX_IMAGE_PIXELS
        if limit is not None and height * width > limit:
            raise ValueError(
                f"Image {index} has {height * width} pixels ({height}x{width}), more than "
                f"PIL.Image.MAX_IMAGE_PIXELS={limit}: refusing it as a possible decompression bomb (raise the "
                "limit explicitly if the image is trusted)."
            )

    def _load_if_path(self, item, index: int):
        if not _is_path_like(item):
            if not isinstance(item, (PIL.Image.Image, np.ndarray, torch.Tensor)):
                raise ValueError(
                    f"Image {index} has unsupported type {type(item).__name__}: expected a PIL image, a numpy "
                    "array, a torch tensor, or a path / URL."
                )
            return item
        location = os.fspath(item)
        try:
            if location.startswith(("http://", "https://")):
                from transformers.image_utils import load_image

                return load_image(location)
            if not os.path.isfile(location):
                raise ValueError(f"Image {index}: no such file {location!r}.")
            with PIL.Image.open(location) as opened:
                opened.load()
                return opened.copy()
        except PIL.Image.DecompressionBombError as error:
            raise ValueError(
                f"Image {index} ({location!r}) exceeds PIL.Image.MAX_IMAGE_PIXELS={PIL.Image.MAX_IMAGE_PIXELS}: "
                f"refusing it as a possible decompression bomb ({error})."
            ) from error
        except PIL.UnidentifiedImageError as error:
            raise ValueError(f"Image {index} ({location!r}) is not a readable image file.") from error

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, device=None, **kwargs):
        """One raw image -> the backend's channels-first RGB array (see `_to_rgb_tensor`)."""
        tensor = self._to_rgb_tensor(
            image, kwargs.get("_image_index", 0), input_data_format, do_rescale=kwargs.get("do_rescale", True)
        )
        return self._to_backend_format(tensor, device)

    def _prepare_image_like_inputs(self, images, *args, expected_ndims: int = 3, **kwargs) -> list:
        images = self._prepare_images_structure(images, expected_ndims=expected_ndims)
        return [self.process_image(image, *args, _image_index=i, **kwargs) for i, image in enumerate(images)]

    def _to_rgb_tensor(self, image, index: int, input_data_format=None, do_rescale: bool = True) -> torch.Tensor:
        """
        Convert one image to a `(3, H, W)` tensor holding values on the 0-255 scale: uint8, or float32 for
        16-bit, float and RGBA inputs. 16-bit inputs (PIL `I;16*`, uint16 arrays) are divided by 257; other
        integer arrays are read as 8-bit when their maximum is <= 255, else as 16-bit. Float inputs whose values all
        lie in [0, 1] are read as [0, 1] images (multiplied by 255) when `do_rescale` is on, otherwise as 0-255.
        """
        if isinstance(image, PIL.Image.Image):
            image = PIL.ImageOps.exif_transpose(image)
            width, height = image.size
            self._check_pixel_count(height, width, index)
            if image.mode.startswith("I;16"):
                array = np.array(image).astype(np.float32) / 257.0
                return self._finish_rgb_tensor(torch.from_numpy(array)[None], index, do_rescale, unit_range=False)
            if image.mode in ("I", "F"):
                return self._finish_rgb_tensor(torch.from_numpy(np.array(image))[None], index, do_rescale)
            has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
                image.mode == "P" and "transparency" in image.info
            )
            if has_alpha:
                rgba = image.convert("RGBA")
                background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = PIL.Image.alpha_composite(background, rgba).convert("RGB")
            elif image.mode != "RGB":
                image = image.convert("RGB")
            return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()

        unit_range = True
        if isinstance(image, np.ndarray):
            if image.dtype == object or np.iscomplexobj(image):
                raise ValueError(f"Image {index} has unsupported dtype {image.dtype}.")
            if image.dtype == np.uint16:
                image, unit_range = image.astype(np.float32) / 257.0, False
            elif image.dtype.kind == "u" and image.dtype != np.uint8:
                image = image.astype(np.int64)
            tensor = torch.from_numpy(np.ascontiguousarray(image))
            prefer = "last"
        else:
            tensor = image.detach().cpu()
            if tensor.is_complex():
                raise ValueError(f"Image {index} has unsupported dtype {tensor.dtype}.")
            if tensor.dtype == torch.uint16:
                tensor, unit_range = tensor.to(torch.int64).float() / 257.0, False
            elif tensor.dtype in (torch.uint32, torch.uint64):
                tensor = tensor.to(torch.int64)
            prefer = "first"

        if tensor.ndim == 2:
            tensor = tensor[None]
        elif tensor.ndim == 3:
            tensor = self._channels_first(tensor, index, input_data_format, prefer)
        else:
            raise ValueError(
                f"Image {index} has {tensor.ndim} dimensions (shape {tuple(tensor.shape)}); expected (H, W), "
                "(H, W, C) or (C, H, W)."
            )
        return self._finish_rgb_tensor(tensor, index, do_rescale, unit_range=unit_range)

    @staticmethod
    def _channels_first(tensor: torch.Tensor, index: int, input_data_format, prefer: str) -> torch.Tensor:
        if input_data_format is not None:
            fmt = ChannelDimension(input_data_format)
            return tensor if fmt == ChannelDimension.FIRST else tensor.permute(2, 0, 1)
        first_ok = tensor.shape[0] in (1, 3, 4)
        last_ok = tensor.shape[-1] in (1, 3, 4)
        if not first_ok and not last_ok:
            raise ValueError(
                f"Image {index} has shape {tuple(tensor.shape)}: expected 1, 3 or 4 channels in the first or last "
                "dimension."
            )
        channels_last = last_ok and (prefer == "last" or not first_ok)
        return tensor.permute(2, 0, 1) if channels_last else tensor

    def _finish_rgb_tensor(self, tensor: torch.Tensor, index: int, do_rescale: bool, unit_range: bool = True):
        channels, height, width = tensor.shape
        if channels not in (1, 3, 4):
            raise ValueError(
                f"Image {index} has {channels} channels (shape {tuple(tensor.shape)}); expected 1 (grayscale), "
                "3 (RGB) or 4 (RGBA)."
            )
        self._check_pixel_count(height, width, index)
        if tensor.dtype == torch.bool:
            tensor = tensor.to(torch.uint8) * 255
        elif tensor.is_floating_point():
            tensor = tensor.float()
            if not torch.isfinite(tensor).all():
                raise ValueError(f"Image {index} contains NaN or infinite pixel values.")
            if unit_range and do_rescale and tensor.min() >= 0 and tensor.max() <= 1:
                tensor = tensor * 255.0
        elif tensor.dtype != torch.uint8:
            tensor = tensor.to(torch.int64)
            low, high = int(tensor.min()), int(tensor.max())
            if low < 0:
                raise ValueError(f"Image {index} has negative integer pixel values (min {low}).")
            if high > 65535:
                raise ValueError(f"Image {index} has integer pixel values above 65535 (max {high}).")
            tensor = tensor.to(torch.uint8) if high <= 255 else tensor.float() / 257.0
        if channels == 1:
            tensor = tensor.expand(3, height, width)
        elif channels == 4:
            alpha = tensor[3:].float() / 255.0
            tensor = tensor[:3].float() * alpha + 255.0 * (1.0 - alpha)
        return tensor.contiguous()

    # -- geometry ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _output_size(height: int, width: int, size: SizeDict) -> tuple:
        if size.height and size.width:
            return int(size.height), int(size.width)
        if size.shortest_edge and size.longest_edge:
            return tuple(get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge))
        if size.longest_edge:
            scale = size.longest_edge / max(height, width)
        elif size.shortest_edge:
            scale = size.shortest_edge / min(height, width)
        elif size.max_height and size.max_width:
            return tuple(get_image_size_for_max_height_width((height, width), size.max_height, size.max_width))
        else:
            raise ValueError(
                "`size` must have `longest_edge`, `shortest_edge`, `shortest_edge` + `longest_edge`, `height` + "
                f"`width` or `max_height` + `max_width`; got {dict(size)}."
            )
        return max(1, int(round(height * scale))), max(1, int(round(width * scale)))

    @staticmethod
    def _padded_size(sizes: list, do_pad: bool, pad_size, pad_size_divisor) -> tuple:
        height = max(h for h, _ in sizes)
        width = max(w for _, w in sizes)
        if not do_pad:
            if any(s != (height, width) for s in sizes):
                raise ValueError(
                    f"The images have different sizes {sorted(set(sizes))}; set `do_pad=True` to batch them."
                )
            return height, width
        if pad_size is not None:
            if pad_size.height < height or pad_size.width < width:
                raise ValueError(
                    f"`pad_size` {dict(pad_size)} is smaller than the largest image ({height}x{width})."
                )
            height, width = pad_size.height, pad_size.width
        if pad_size_divisor and pad_size_divisor > 1:
            height = int(math.ceil(height / pad_size_divisor) * pad_size_divisor)
            width = int(math.ceil(width / pad_size_divisor) * pad_size_divisor)
        return height, width

    # -- annotations ------------------------------------------------------------------------------------------------

    def _check_annotations(self, annotations, num_images: int):
        if annotations is None:
            return None
        if isinstance(annotations, dict):
            annotations = [annotations]
        if not isinstance(annotations, (list, tuple)):
            raise ValueError(
                f"`annotations` must be a COCO detection dict or a list of them, got {type(annotations).__name__}."
            )
        if len(annotations) != num_images:
            raise ValueError(
                f"The number of images ({num_images}) and annotations ({len(annotations)}) do not match."
            )
        return list(annotations)

    @staticmethod
    def _prepare_annotation(annotation: dict, height: int, width: int, index: int) -> dict:
        """COCO detection dict -> absolute xyxy boxes (clipped, crowd / empty boxes dropped) of the original image."""
        if not isinstance(annotation, dict) or not isinstance(annotation.get("annotations"), (list, tuple)):
            raise ValueError(
                f"Annotation {index} must be a dict with an 'annotations' list (COCO detection format), got "
                f"{annotation!r:.200}."
            )
        classes, boxes, areas, attributes = [], [], [], []
        for obj_index, obj in enumerate(annotation["annotations"]):
            if not isinstance(obj, dict) or "bbox" not in obj or "category_id" not in obj:
                raise ValueError(f"Annotation {index}, object {obj_index}: needs 'bbox' and 'category_id'.")
            if obj.get("iscrowd", 0):
                continue
            bbox = [float(v) for v in obj["bbox"]]
            if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
                raise ValueError(
                    f"Annotation {index}, object {obj_index}: 'bbox' must be 4 finite numbers [x, y, w, h], got "
                    f"{obj['bbox']!r}."
                )
            x, y, w, h = bbox
            boxes.append([x, y, x + w, y + h])
            classes.append(int(obj["category_id"]))
            areas.append(float(obj.get("area", w * h)))
            attributes.append([int(a) for a in obj.get("attribute_ids", None) or []])
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        max_attributes = max((len(a) for a in attributes), default=0)
        attribute_labels = torch.full((len(attributes), max_attributes), -1, dtype=torch.int64)
        for row, ids in enumerate(attributes):
            attribute_labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return {
            "image_id": torch.tensor([int(annotation.get("image_id", index))], dtype=torch.int64),
            "class_labels": torch.tensor(classes, dtype=torch.int64)[keep],
            "boxes": boxes[keep],
            "attribute_labels": attribute_labels[keep],
            "area": torch.tensor(areas, dtype=torch.float32)[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }

    @staticmethod
    def _finish_annotation(target: dict, resized_size: tuple, do_convert_annotations: bool) -> dict:
        """Scale to the resized image and (optionally) normalise to cxcywh relative to it (padding excluded)."""
        orig_h, orig_w = target["orig_size"].tolist()
        new_h, new_w = resized_size
        scale_x, scale_y = new_w / orig_w, new_h / orig_h
        boxes = target["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y])
        target = dict(target)
        target["area"] = target["area"] * (scale_x * scale_y)
        target["size"] = torch.tensor([new_h, new_w], dtype=torch.int64)
        if do_convert_annotations:
            x1, y1, x2, y2 = boxes.unbind(-1)
            boxes = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)
            boxes = boxes / torch.tensor([new_w, new_h, new_w, new_h], dtype=torch.float32)
        target["boxes"] = boxes
        return target

    # -- post-processing --------------------------------------------------------------------------------------------

    def post_process_object_detection(self, outputs, threshold: float = 0.5, target_sizes=None) -> list:
        """
        Turn [`TEEForObjectDetection`] outputs into detections.

        Args:
            outputs: model output with `logits` `(B, K, num_labels + 1)`, `pred_boxes` `(B, K, 4)` (normalised
                cxcywh relative to the unpadded image) and, optionally, `region_mask` `(B, K)`.
            threshold (`float`): keep detections whose score (highest non-background probability) is above it.
            target_sizes (`torch.Tensor` `(B, 2)` or `list[tuple[int, int]]`, *optional*): `(height, width)` of
                each original image; boxes are scaled to it. Without it boxes stay normalised.

        Returns:
            `list[dict]`: per image `{"scores": (n,), "labels": (n,), "boxes": (n, 4) xyxy}`.
        """
        logits = outputs["logits"] if "logits" in outputs else outputs.logits
        pred_boxes = outputs["pred_boxes"] if "pred_boxes" in outputs else outputs.pred_boxes
        region_mask = outputs.get("region_mask") if hasattr(outputs, "get") else getattr(outputs, "region_mask", None)
        if target_sizes is not None and len(target_sizes) != logits.shape[0]:
            raise ValueError(
                f"Got {len(target_sizes)} target sizes for a batch of {logits.shape[0]} images; pass one (height, "
                "width) per image."
            )
        probs = logits.float().softmax(-1)[..., :-1]
        if probs.shape[-1] == 0:
            scores = probs.new_zeros(probs.shape[:-1])
            labels = torch.zeros(probs.shape[:-1], dtype=torch.long, device=probs.device)
        else:
            scores, labels = probs.max(-1)
        cx, cy, w, h = pred_boxes.float().unbind(-1)
        boxes = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)
        if target_sizes is not None:
            if isinstance(target_sizes, torch.Tensor):
                sizes = target_sizes.to(boxes.device, torch.float32)
            else:
                sizes = torch.tensor([[float(h_), float(w_)] for h_, w_ in target_sizes], device=boxes.device)
            scale = torch.stack((sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]), dim=1)
            boxes = boxes * scale[:, None, :]
        results = []
        for index in range(logits.shape[0]):
            keep = scores[index] > threshold
            if region_mask is not None:
                keep = keep & region_mask[index].bool()
            results.append(
                {"scores": scores[index][keep], "labels": labels[index][keep], "boxes": boxes[index][keep]}
            )
        return results

    def post_process_regions(self, outputs, threshold: float = 0.0, id2label: dict | None = None) -> list:
        """
        Per-image region lists for the MiniVLM fusion model (OSCAR-style "features + boxes + tags").

        Args:
            outputs: [`TEEModelOutput`] / [`TEEObjectDetectionOutput`].
            threshold (`float`): keep regions whose `region_scores` are `>= threshold`.
            id2label (`dict[int, str]`, *optional*): class names for `tags` (e.g. `model.config.id2label`);
                without it the tags are the class ids as strings.

        Returns:
            `list[dict]`: per image `{"region_features": (n, D), "boxes": (n, 4) normalised xyxy relative to the
            unpadded image, "scores": (n,), "labels": (n,), "tags": list[str]}`.
        """
        results = []
        for index in range(outputs.region_features.shape[0]):
            keep = outputs.region_mask[index].bool() & (outputs.region_scores[index] >= threshold)
            labels = outputs.region_labels[index][keep]
            tags = [
                (id2label.get(int(label), str(int(label))) if id2label is not None else str(int(label)))
                for label in labels.tolist()
            ]
            results.append(
                {
                    "region_features": outputs.region_features[index][keep],
                    "boxes": outputs.region_boxes[index][keep],
                    "scores": outputs.region_scores[index][keep],
                    "labels": labels,
                    "tags": tags,
                }
            )
        return results


class MiniVLMImageProcessor(MiniVLMImageProcessingMixin, TorchvisionBackend):
    r"""
    MiniVLM / TEE image processor (torchvision backend, the default). Resizes to longest edge 512, rescales to
    [0, 1], normalises with the ImageNet mean / std, pads bottom/right to the batch maximum rounded up to a
    multiple of 128, returns `pixel_values` and `pixel_mask`, converts COCO detection annotations to `labels`,
    and post-processes detections / regions. See the module docstring for the accepted inputs and checks.
    """

    @classmethod
    def backend_classes(cls) -> dict:
        """`{"torchvision": MiniVLMImageProcessor, "pil": MiniVLMImageProcessorPil}` (for `AutoImageProcessor.register`)."""
        from .image_processing_pil_minivlm import MiniVLMImageProcessorPil

        return {"torchvision": MiniVLMImageProcessor, "pil": MiniVLMImageProcessorPil}

    @staticmethod
    def _to_backend_format(tensor: torch.Tensor, device=None) -> torch.Tensor:
        return tensor.to(device) if device is not None else tensor

    def _preprocess(
        self,
        images: list,
        annotations=None,
        do_resize: bool = True,
        size: SizeDict | None = None,
        resample=None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean=None,
        image_std=None,
        do_pad: bool = True,
        pad_size: SizeDict | None = None,
        pad_size_divisor: int | None = None,
        do_convert_annotations: bool = True,
        return_tensors=None,
        disable_grouping: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        annotations = self._check_annotations(annotations, len(images))
        targets = None
        if annotations is not None:
            targets = [
                self._prepare_annotation(annotation, int(image.shape[-2]), int(image.shape[-1]), index)
                for index, (image, annotation) in enumerate(zip(images, annotations))
            ]
        grouped, grouped_index = group_images_by_shape(images, disable_grouping=disable_grouping)
        processed = {}
        for shape, stacked in grouped.items():
            if do_resize:
                new_size = self._output_size(int(stacked.shape[-2]), int(stacked.shape[-1]), size)
                if new_size != tuple(stacked.shape[-2:]):
                    stacked = self.resize(stacked, SizeDict(height=new_size[0], width=new_size[1]), resample=resample)
            stacked = self.rescale_and_normalize(
                stacked, do_rescale, rescale_factor, do_normalize, image_mean, image_std
            )
            processed[shape] = stacked.float()
        images = reorder_images(processed, grouped_index)

        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        height, width = self._padded_size(sizes, do_pad, pad_size, pad_size_divisor)
        pixel_values = images[0].new_zeros((len(images), 3, height, width))
        pixel_mask = torch.zeros((len(images), height, width), dtype=torch.int64, device=images[0].device)
        for index, (image, (h, w)) in enumerate(zip(images, sizes)):
            pixel_values[index, :, :h, :w] = image
            pixel_mask[index, :h, :w] = 1
        encoded = BatchFeature({"pixel_values": pixel_values, "pixel_mask": pixel_mask}, tensor_type=return_tensors)
        if targets is not None:
            encoded["labels"] = [
                BatchFeature(self._finish_annotation(target, resized, do_convert_annotations), tensor_type=return_tensors)
                for target, resized in zip(targets, sizes)
            ]
        return encoded


__all__ = ["MiniVLMImageProcessor", "MiniVLMImageProcessingMixin", "MiniVLMImageProcessorKwargs"]
