# Copyright 2025 The minivlm-hf authors.
# Licensed under the MIT license.
"""Image processor of MiniVLM (TEE region detector input), PIL / numpy backend.

Same behaviour and options as `MiniVLMImageProcessor` (see `image_processing_minivlm.py`); only the pixel
operations differ (PIL resizing, numpy rescale / normalise / pad). Inputs that are not 8-bit (16-bit, float on the
0-255 scale, RGBA composites) are rounded to uint8 before the PIL resize.
"""

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import SizeDict

from .image_processing_minivlm import MiniVLMImageProcessingMixin


class MiniVLMImageProcessorPil(MiniVLMImageProcessingMixin, PilBackend):
    r"""
    MiniVLM / TEE image processor, PIL backend (`AutoImageProcessor.from_pretrained(..., backend="pil")`). Resizes
    to longest edge 512, rescales to [0, 1], normalises with the ImageNet mean / std, pads bottom/right to the
    batch maximum rounded up to a multiple of 128, returns `pixel_values` and `pixel_mask`, converts COCO detection
    annotations to `labels`, and post-processes detections / regions.
    """

    @staticmethod
    def _to_backend_format(tensor: torch.Tensor, device=None) -> np.ndarray:
        if tensor.dtype == torch.uint8:
            return tensor.numpy()
        if tensor.numel() > 0 and tensor.min() >= 0 and tensor.max() <= 1:
            return tensor.numpy().astype(np.float32)  # a [0, 1] float image kept as is (do_rescale=False)
        return tensor.round().clamp(0, 255).to(torch.uint8).numpy()

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
        **kwargs,
    ) -> BatchFeature:
        annotations = self._check_annotations(annotations, len(images))
        targets = None
        if annotations is not None:
            targets = [
                self._prepare_annotation(annotation, int(image.shape[-2]), int(image.shape[-1]), index)
                for index, (image, annotation) in enumerate(zip(images, annotations))
            ]
        processed = []
        for image in images:
            if do_resize:
                new_size = self._output_size(int(image.shape[-2]), int(image.shape[-1]), size)
                if new_size != tuple(image.shape[-2:]):
                    image = self.resize(image, SizeDict(height=new_size[0], width=new_size[1]), resample=resample)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed.append(image.astype(np.float32))

        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in processed]
        height, width = self._padded_size(sizes, do_pad, pad_size, pad_size_divisor)
        pixel_values = np.zeros((len(processed), 3, height, width), dtype=np.float32)
        pixel_mask = np.zeros((len(processed), height, width), dtype=np.int64)
        for index, (image, (h, w)) in enumerate(zip(processed, sizes)):
            pixel_values[index, :, :h, :w] = image
            pixel_mask[index, :h, :w] = 1
        encoded = BatchFeature({"pixel_values": pixel_values, "pixel_mask": pixel_mask}, tensor_type=return_tensors)
        if targets is not None:
            encoded["labels"] = [
                BatchFeature(
                    {
                        key: value.numpy()
                        for key, value in self._finish_annotation(target, resized, do_convert_annotations).items()
                    },
                    tensor_type=return_tensors,
                )
                for target, resized in zip(targets, sizes)
            ]
        return encoded


__all__ = ["MiniVLMImageProcessorPil"]
