"""Data collators of every training stage: plain callables ``rows -> batch dict`` usable as ``Trainer(data_collator=)``.

Region inputs of the fusion stages come from one of three places, tried in this order for each batch:

1. the rows themselves (``region_features`` ``[K, F]``, ``region_boxes`` ``[K, 4]`` normalised xyxy, ``region_mask``
   ``[K]`` and ``tags`` (the detected tag phrases)), e.g. rows of a precomputed-feature dataset
   (:func:`minivlm_hf.training.features.extract_features`);
2. a :class:`~minivlm_hf.training.features.RegionStore` passed as ``regions=``, indexed by the row's ``image_index``
   (task rows then stay small: an image's features are stored once, not once per caption / question);
3. pixels: rows of the scenes dataset (``image`` column) and an ``image_processor=``; the model then runs its TEE.

Randomness (token masking, polluted pairs, negatives) is drawn from a ``torch.Generator`` seeded from the collator's
``seed``, its ``epoch`` and the identities of the rows in the batch, never from global state. A collator therefore
returns the same batch for the same rows, which is what makes ``resume_from_checkpoint`` reproduce an uninterrupted
run exactly (the Trainer skips the already-seen batches without calling the collator). Set ``epoch`` (e.g. with
:class:`CollatorEpochCallback`) to draw new masks every epoch. ``generator=`` overrides this with an explicit
generator (then successive calls differ).
"""

from .base import CollatorEpochCallback, FusionCollator, mask_tokens
from .detection import DetectionCollator
from .masked_tokens import CaptioningCollator, PreTrainingCollator
from .tasks import NLVRCollator, RetrievalCollator, RetrievalScoringCollator, VQACollator

__all__ = [
    "CaptioningCollator",
    "CollatorEpochCallback",
    "DetectionCollator",
    "FusionCollator",
    "NLVRCollator",
    "PreTrainingCollator",
    "RetrievalCollator",
    "RetrievalScoringCollator",
    "VQACollator",
    "mask_tokens",
]
