"""``Trainer`` subclasses, ``compute_metrics`` functions and callbacks of the recipes.

- :class:`DetectionTrainer`: evaluation returns post-processed detections (padded per batch) so ``compute_metrics``
  can compute COCO mAP (the Trainer cannot concatenate ragged per-image detections across batches).
- :class:`CaptioningTrainer`: ``prediction_step`` computes the masked-token loss on the batch, then ``generate``s
  from the image inputs alone (the Seq2SeqTrainer ``predict_with_generate`` trap: it would continue the
  teacher-forced caption), and returns ``(loss, generated ids, image indices)``; ``compute_metrics`` scores CIDEr-D.
- ``*_metrics`` builders for the classification stages.
- :class:`ParamHashCallback` (data-parallel checks) and :class:`StopAtStepCallback` (interrupted-run tests).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

GENERATION_INPUTS = (
    "pixel_values", "pixel_mask", "region_features", "region_boxes", "region_mask", "tag_ids", "tag_attention_mask",
)


class _CountParametersOnce:
    """``Trainer`` logs ``total_flos`` as 6 × input size × ``model.num_parameters()`` after every step, and counting
    the hundreds of parameter tensors of a fusion model with its TEE each time is a visible share of a CPU step. The
    count is taken once per model."""

    def floating_point_ops(self, inputs) -> int:
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        cached = getattr(self, "_parameter_count", None)
        if cached is None or cached[0] is not self.model:
            cached = self._parameter_count = (self.model, self.model.num_parameters(exclude_embeddings=True))
        return 6 * inputs[main_input].numel() * cached[1]


class _LogLossParts:
    """Logs the parts of a model's training loss (the TEE's ``loss_dict``, pre-training's ``masked_lm_loss`` and
    ``contrastive_loss``) next to ``loss``, averaged over the same steps, so that the training curves show which
    objective moves. The sums stay on the device between logs (no synchronisation per step)."""

    _PARTS = ("masked_lm_loss", "contrastive_loss")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            parts = dict(getattr(outputs, "loss_dict", None) or {})
            parts.update({name: getattr(outputs, name) for name in self._PARTS
                          if getattr(outputs, name, None) is not None})
            if parts:
                sums = self.__dict__.setdefault("_loss_part_sums", {})
                for name, value in parts.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float()
                self._loss_part_count = getattr(self, "_loss_part_count", 0) + 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        sums = getattr(self, "_loss_part_sums", None)
        if sums and "loss" in logs:
            logs.update({name: round(float(total) / self._loss_part_count, 4) for name, total in sums.items()})
            self._loss_part_sums, self._loss_part_count = {}, 0
        super().log(logs, start_time)


class DetectionTrainer(_LogLossParts, _CountParametersOnce, Trainer):
    """Trainer for ``TEEForObjectDetection`` whose evaluation yields detections for mAP."""

    def __init__(self, *args, image_processor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_processor = image_processor

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            outputs = model(**inputs)
        loss = outputs.loss.detach() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        sizes = [tuple(int(v) for v in label["orig_size"].tolist()) for label in inputs["labels"]]
        results = self.image_processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        count = max(1, max(r["scores"].numel() for r in results))
        preds = torch.full((len(results), count, 6), -100.0, device=loss.device if loss is not None else None)
        for i, r in enumerate(results):
            n = r["scores"].numel()
            preds[i, :n, :4] = r["boxes"]
            preds[i, :n, 4] = r["scores"]
            preds[i, :n, 5] = r["labels"].float()
        refs_count = max(1, max(label["class_labels"].numel() for label in inputs["labels"]))
        refs = torch.full((len(results), refs_count, 5), -100.0, device=preds.device)
        for i, label in enumerate(inputs["labels"]):
            n = label["class_labels"].numel()
            h, w = sizes[i]
            cx, cy, bw, bh = label["boxes"].float().unbind(-1)
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
            refs[i, :n, :4] = boxes * torch.tensor([w, h, w, h], device=boxes.device, dtype=boxes.dtype)
            refs[i, :n, 4] = label["class_labels"].float()
        return loss, preds, refs


def detection_metrics(eval_pred) -> dict:
    from ..metrics import compute_detection_map

    preds, refs = eval_pred.predictions, eval_pred.label_ids
    predictions, references = [], []
    for p, r in zip(preds, refs):
        keep = p[:, 4] > -50
        predictions.append({"boxes": p[keep, :4], "scores": p[keep, 4], "labels": p[keep, 5].astype(np.int64)})
        keep = r[:, 4] > -50
        references.append({"boxes": r[keep, :4], "labels": r[keep, 4].astype(np.int64)})
    result = compute_detection_map(predictions, references, reference_box_format="xyxy", per_class=False)
    return {"map": result["map"], "map_50": result["map_50"], "map_75": result["map_75"]}


class FusionTrainer(_LogLossParts, _CountParametersOnce, Trainer):
    """``Trainer`` of the fusion stages."""


class CaptioningTrainer(FusionTrainer):
    """Trainer for ``MiniVLMForImageCaptioning``; evaluation generates captions (see the module docstring).
    Evaluation batches carry ``image_index`` (popped before the model sees them)."""

    def __init__(self, *args, generation_kwargs: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # use_cache: the Trainer sets config.use_cache to its training value (False), which decoding must not take
        self.generation_kwargs = {"max_new_tokens": 20, "num_beams": 1, "use_cache": True, **(generation_kwargs or {})}

    def compute_loss(self, model, inputs, *args, **kwargs):
        inputs = {k: v for k, v in inputs.items() if k != "image_index"}
        return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        index = inputs.pop("image_index", None)
        with torch.no_grad():
            loss = model(**inputs).loss
            loss = loss.detach() if loss is not None else None
            if prediction_loss_only:
                return loss, None, None
            unwrapped = self.accelerator.unwrap_model(model)
            kwargs = dict(self.generation_kwargs)
            kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], unwrapped.config.max_text_length - 2)
            generated = unwrapped.generate(
                **{k: v for k, v in inputs.items() if k in GENERATION_INPUTS}, do_sample=False, **kwargs
            )
        return loss, generated, index


def caption_metrics_fn(tokenizer, examples):
    """``compute_metrics`` for :class:`CaptioningTrainer`: decodes the generated ids and scores them against the
    reference captions of ``examples[image_index]``."""
    from ..metrics import compute_caption_metrics

    references = {int(i): list(c) for i, c in zip(examples["image_index"], examples["captions"])}

    def compute(eval_pred):
        predictions, index = eval_pred.predictions, eval_pred.label_ids
        texts, refs = [], []
        for seq, i in zip(predictions, np.asarray(index).reshape(-1)):
            seq = [int(t) for t in seq if t >= 0]
            texts.append(tokenizer.decode(seq, skip_special_tokens=True).strip() or ".")
            refs.append(references[int(i)])
        result = compute_caption_metrics(texts, refs)
        return {"cider": result["cider"], "bleu_4": result["bleu_4"]}

    return compute


def vqa_metrics(eval_pred) -> dict:
    """VQA soft accuracy: the soft score (min(#annotators / 3, 1)) of the arg-max answer."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    best = logits.argmax(-1)
    return {"vqa_soft_accuracy": float(labels[np.arange(len(best)), best].mean())}


def accuracy_metrics(eval_pred) -> dict:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((logits.argmax(-1) == labels.reshape(-1)).mean())}


# ---------------------------------------------------------------------------------------------------------------------
def parameter_hash(model) -> str:
    """SHA-256 over every parameter and buffer (names and bytes, in state-dict order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


class ParamHashCallback(TrainerCallback):
    """At the end of training every rank writes ``param_hash_rank{R}.json`` (parameter hash at the start and at the
    end, step, world size, loss history) into ``output_dir``: data-parallel ranks must hold identical parameters."""

    def __init__(self, output_dir):
        self.output_dir = Path(output_dir)
        self.initial_hash = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.initial_hash = parameter_hash(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.output_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": rank,
            "world_size": world,
            "global_step": state.global_step,
            "hash": parameter_hash(model),
            "initial_hash": self.initial_hash,
            "losses": [h["loss"] for h in state.log_history if "loss" in h],
            "pid": os.getpid(),
        }
        (self.output_dir / f"param_hash_rank{rank}.json").write_text(json.dumps(record, indent=1))


class StopAtStepCallback(TrainerCallback):
    """Stops training (after the step's save) at ``step``: simulates an interrupted run."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


class TimingCallback(TrainerCallback):
    """Records the wall time of the training loop (``seconds``)."""

    def __init__(self):
        self.seconds = 0.0
        self._start = None

    def on_train_begin(self, args, state, control, **kwargs):
        import time

        self._start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        import time

        if self._start is not None:
            self.seconds = time.perf_counter() - self._start


__all__ = [
    "CaptioningTrainer",
    "DetectionTrainer",
    "ParamHashCallback",
    "StopAtStepCallback",
    "TimingCallback",
    "accuracy_metrics",
    "caption_metrics_fn",
    "detection_metrics",
    "parameter_hash",
    "vqa_metrics",
]
