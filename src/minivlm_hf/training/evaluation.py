"""Evaluation loops of every stage on a held-out split (used after training by the recipes and the demo).

Each function takes a model, the data it needs and returns ``(metrics, details)``: ``metrics`` is a flat dict of
floats (what goes into ``metrics.json`` / report.md), ``details`` the per-example outputs (for galleries and tests).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from ..data.scenes import detection_annotations
from ..progress import progress as progress_bar
from .collators import CaptioningCollator, NLVRCollator, RetrievalScoringCollator, VQACollator


def _batches(items, batch_size):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _rows(dataset, limit=None) -> list[dict]:
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return [dataset[i] for i in range(len(dataset))]


# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_detector(detector, image_processor, scenes, *, batch_size: int = 16, threshold: float = 0.0,
                      limit: int | None = None, progress: bool = True) -> tuple[dict, list[dict]]:
    """COCO mAP (pycocotools) of ``detector`` on a scenes split: post-processing with the image processor's
    ``post_process_object_detection`` (boxes in original pixels) against the ground-truth boxes."""
    from ..metrics import compute_detection_map

    detector.eval()
    device = _device(detector)
    columns = [c for c in ("image", "objects", "coco_id", "width", "height") if c in scenes.column_names]
    rows = _rows(scenes.select_columns(columns), limit)
    predictions, references = [], []
    for chunk in progress_bar(list(_batches(rows, batch_size)), desc="Evaluating detector", enabled=progress,
                              unit="batch"):
        encoded = image_processor(images=[r["image"] for r in chunk], return_tensors="pt")
        outputs = detector(pixel_values=encoded["pixel_values"].to(device), pixel_mask=encoded["pixel_mask"].to(device))
        sizes = [(r["image"].size[1], r["image"].size[0]) for r in chunk]
        for result in image_processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes):
            predictions.append({k: v.cpu() for k, v in result.items()})
        for row in chunk:
            anns = detection_annotations(row)["annotations"]
            references.append({
                "boxes": [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns],
                "labels": [a["category_id"] for a in anns],
            })
    result = compute_detection_map(predictions, references, reference_box_format="xyxy")
    metrics = {"map": result["map"], "map_50": result["map_50"], "map_75": result["map_75"]}
    details = [{"prediction": p, "reference": r} for p, r in zip(predictions, references)]
    return metrics, details


# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_captions(model, collator: CaptioningCollator, rows: list[dict], *, batch_size: int = 32,
                      max_new_tokens: int = 20, num_beams: int = 1, length_penalty: float = 1.0,
                      progress: bool = True, desc: str = "Generating captions") -> tuple[list[str], list[list[int]]]:
    """Captions for ``rows`` (image inputs only; ``collator.for_generation`` is forced). ``length_penalty`` > 1
    favours longer beams (beam score = log-probability / length ** length_penalty)."""
    model.eval()
    device = _device(model)
    tokenizer = collator.tokenizer
    was = collator.for_generation
    collator.for_generation = True
    texts, ids = [], []
    try:
        for chunk in progress_bar(list(_batches(rows, batch_size)), desc=desc, enabled=progress, unit="batch"):
            batch = _to(collator(chunk), device)
            limit = min(max_new_tokens, model.config.max_text_length - 2)
            generated = model.generate(**batch, max_new_tokens=limit, num_beams=num_beams, do_sample=False,
                                       length_penalty=length_penalty)
            for seq in generated.cpu().tolist():
                ids.append(seq)
                texts.append(tokenizer.decode(seq, skip_special_tokens=True).strip())
    finally:
        collator.for_generation = was
    return texts, ids


def evaluate_captioning(model, collator: CaptioningCollator, examples, *, limit: int | None = None,
                        batch_size: int = 32, max_new_tokens: int = 20, num_beams: int = 1,
                        length_penalty: float = 1.0, progress: bool = True) -> tuple[dict, dict]:
    """BLEU-1..4 and CIDEr-D of generated captions against each image's reference captions. ``examples``: one row
    per image with ``captions`` (see ``caption_examples(per_caption=False)``)."""
    from ..metrics import compute_caption_metrics

    rows = _rows(examples, limit)
    captions, ids = generate_captions(model, collator, rows, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                      num_beams=num_beams, length_penalty=length_penalty, progress=progress)
    references = [list(r["captions"]) for r in rows]
    metrics = compute_caption_metrics([c if c else "." for c in captions], references)
    return metrics, {"captions": captions, "token_ids": ids, "references": references}


# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_logits(model, collator, rows: list[dict], *, batch_size: int = 64, progress: bool = True,
                   desc: str = "Predicting") -> torch.Tensor:
    model.eval()
    device = _device(model)
    out = []
    for chunk in progress_bar(list(_batches(rows, batch_size)), desc=desc, enabled=progress, unit="batch"):
        batch = collator(chunk)
        batch.pop("labels", None)
        out.append(model(**_to(batch, device)).logits.float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def evaluate_vqa(model, collator: VQACollator, examples, *, limit: int | None = None, batch_size: int = 64,
                 progress: bool = True) -> tuple[dict, dict]:
    """VQA v2 accuracy (min(#annotators agreeing / 3, 1), averaged as in the official script) overall and per
    question type; answers = argmax over the answer vocabulary ``model.config.id2label``."""
    from ..metrics import compute_vqa_accuracy

    rows = _rows(examples, limit)
    logits = predict_logits(model, collator, rows, batch_size=batch_size, progress=progress, desc="Answering")
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    answers = [id2label[int(i)] for i in logits.argmax(-1)]
    references = [list(r["answers"]) for r in rows]
    result = compute_vqa_accuracy(answers, references, return_per_question=True)
    metrics = {"accuracy": result["accuracy"]}
    by_type = defaultdict(list)
    for row, acc in zip(rows, result["per_question"]):
        by_type[row.get("question_type", "all")].append(acc)
    for qtype, accs in sorted(by_type.items()):
        metrics[f"accuracy_{qtype}"] = float(np.mean(accs))
    return metrics, {"answers": answers, "logits": logits, "questions": [r["question"] for r in rows]}


# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def retrieval_score_matrix(model, collator: RetrievalScoringCollator, image_indices: list[int], captions: list[str],
                           *, batch_size: int = 128, progress: bool = True, margins: bool = False) -> torch.Tensor:
    """``scores[i, t]`` = P(match) of image ``image_indices[i]`` and ``captions[t]`` (every pair is scored by the
    cross-encoder, as OSCAR does); ``margins=True``: the match logit minus the no-match logit instead (the same
    ranking, without float32 saturation near P = 1)."""
    model.eval()
    device = _device(model)
    pairs = [{"image_index": i, "caption": c} for i in image_indices for c in captions]
    scores = []
    for chunk in progress_bar(list(_batches(pairs, batch_size)), desc="Scoring image-text pairs", enabled=progress,
                              unit="batch"):
        logits = model(**_to(collator(chunk), device)).logits.float()
        scores.append((logits[:, 1] - logits[:, 0] if margins else logits.softmax(-1)[:, 1]).cpu())
    return torch.cat(scores).view(len(image_indices), len(captions))


@torch.no_grad()
def caption_log_likelihood_matrix(caption_model, collator: RetrievalScoringCollator, image_indices: list[int],
                                  captions: list[str], *, batch_size: int = 128, progress: bool = True) -> torch.Tensor:
    """``L[i, t]`` = log p(``captions[t]`` | image ``image_indices[i]``) under a captioning model: the sum over the
    caption's word pieces after [CLS] ([SEP] included) of the log-probability the model gives each when decoding.
    One teacher-forced pass per pair (``MiniVLMForImageCaptioning.caption_log_likelihood``). ``collator`` encodes the
    pairs (``[CLS] caption [SEP]`` + the image's tags and regions), e.g. the retrieval scoring collator."""
    caption_model.eval()
    device = _device(caption_model)
    pairs = [{"image_index": i, "caption": c} for i in image_indices for c in captions]
    totals = []
    for chunk in progress_bar(list(_batches(pairs, batch_size)), desc="Caption likelihoods", enabled=progress,
                              unit="batch"):
        totals.append(caption_model.caption_log_likelihood(**_to(collator(chunk), device)).cpu())
    return torch.cat(totals).view(len(image_indices), len(captions))


def caption_pmi(log_likelihoods: torch.Tensor) -> torch.Tensor:
    """Pointwise mutual information of each (image, caption) pair, ``log p(c | i) - log mean_i' p(c | i')``: the
    marginal over the matrix's images (rows), so that captions likely for every image (short, generic ones) do not
    win every image."""
    marginal = torch.logsumexp(log_likelihoods, dim=0, keepdim=True) - math.log(log_likelihoods.shape[0])
    return log_likelihoods - marginal


def sinkhorn_normalize(log_scores: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Gallery normalisation of a ``[num_images, num_texts]`` matrix of log-scores (e.g. match margins): Sinkhorn
    iterations in log space, alternately normalising every text's column over the images and every image's row over
    the texts, towards a matrix whose ``exp`` has equal column sums and equal row sums. A "hub" caption that scores
    high with every image is thereby scaled down for all of them (and likewise a hub image), which is what a
    one-to-one gallery (each text describes one image) calls for. Transductive: an image's ranking of the texts then
    depends on the other images of the gallery. The result ranks in both directions (rows: image→text, columns:
    text→image)."""
    if log_scores.dim() != 2:
        raise ValueError(f"sinkhorn_normalize expects a [num_images, num_texts] matrix, got shape "
                         f"{tuple(log_scores.shape)}")
    num_images, num_texts = log_scores.shape
    row_target = math.log(num_texts / num_images)  # row sums num_texts / num_images, column sums 1
    scores = log_scores.double()
    for _ in range(int(iterations)):
        scores = scores - torch.logsumexp(scores, dim=0, keepdim=True)
        scores = scores - torch.logsumexp(scores, dim=1, keepdim=True) + row_target
    return scores


def evaluate_retrieval(model, collator: RetrievalScoringCollator, examples, *, num_candidates: int = 100,
                       num_groups: int = 1, batch_size: int = 128, progress: bool = True, caption_model=None,
                       caption_pmi_weight: float = 0.5, sinkhorn: bool = False) -> tuple[dict, dict]:
    """R@1/5/10 in both directions over ``num_candidates`` images and their first captions (image→text: rank the
    ``num_candidates`` captions for each image; text→image: rank the images for each caption). ``examples``: one
    row per image with ``image_index`` and ``captions``.

    ``num_groups`` > 1: the same task on each of that many consecutive, disjoint groups of ``num_candidates`` test
    images, metrics averaged over the groups (each image still competes with ``num_candidates - 1`` others): a
    larger sample of the same measurement, e.g. to compare two versions of a model with less noise.

    ``caption_model`` (a captioning model of the same pipeline): also rank by the retrieval model's match margin +
    ``caption_pmi_weight`` x the caption model's :func:`caption_pmi` over the group's images (transductive: the
    marginal uses the candidate images), reported as ``caption_pmi_i2t_r1`` ... next to the retrieval model's own
    R@k. Every pair is then scored by both models (about twice the time).

    ``sinkhorn``: also rank the group's scores after :func:`sinkhorn_normalize` (gallery normalisation of the match
    margins; transductive, no extra model calls), reported as ``sinkhorn_i2t_r1`` ... (and, with a caption model, the
    fused scores as ``caption_pmi_sinkhorn_i2t_r1`` ...)."""
    from ..metrics import compute_retrieval_recall

    if int(num_groups) < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    num_groups = int(num_groups)
    if num_groups > 1 and len(examples) < num_groups * num_candidates:
        raise ValueError(f"retrieval over {num_groups} groups of {num_candidates} candidates needs "
                         f"{num_groups * num_candidates} test images; the split has {len(examples)}")
    all_rows = _rows(examples, num_candidates * num_groups)
    per_group, details = [], {"scores": [], "captions": [], "image_indices": []}
    for g in range(num_groups):
        rows = all_rows[g * num_candidates:(g + 1) * num_candidates]
        image_indices = [int(r["image_index"]) for r in rows]
        captions = [r["captions"][0] for r in rows]
        # P(match) = sigmoid(margin): one scoring pass gives the probabilities and the margins the fusion needs.
        margins = retrieval_score_matrix(model, collator, image_indices, captions, batch_size=batch_size,
                                         progress=progress, margins=True)
        scores = margins.sigmoid()
        targets = list(range(len(rows)))
        metrics = compute_retrieval_recall(scores.numpy(), targets)
        ranked = {"": margins.double()}  # metric prefix -> score matrix
        if caption_model is not None:
            log_likelihoods = caption_log_likelihood_matrix(caption_model, collator, image_indices, captions,
                                                            batch_size=batch_size, progress=progress)
            ranked["caption_pmi_"] = ranked[""] + caption_pmi_weight * caption_pmi(log_likelihoods.double())
        if sinkhorn:
            ranked.update({f"{prefix}sinkhorn_": sinkhorn_normalize(matrix) for prefix, matrix in list(ranked.items())})
        for prefix, matrix in ranked.items():
            if prefix:  # the unprefixed metrics rank by P(match), computed above
                recall = compute_retrieval_recall(matrix.numpy(), targets)
                metrics.update({f"{prefix}{k}": v for k, v in recall.items()})
        per_group.append({k: float(v) for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))})
        for key, value in (("scores", scores), ("captions", captions), ("image_indices", image_indices)):
            details[key].append(value)
    metrics = {k: float(np.mean([m[k] for m in per_group])) for k in per_group[0] if all(k in m for m in per_group)}
    metrics["num_candidates"] = len(all_rows) // num_groups
    if caption_model is not None:
        metrics["caption_pmi_weight"] = float(caption_pmi_weight)
    if num_groups == 1:
        return metrics, {k: v[0] for k, v in details.items()}
    metrics["num_groups"] = num_groups
    return metrics, details


# ---------------------------------------------------------------------------------------------------------------------
def evaluate_nlvr(model, collator: NLVRCollator, statements, *, limit: int | None = None, batch_size: int = 64,
                  progress: bool = True) -> tuple[dict, dict]:
    """Accuracy (and consistency over the statements of a pair) of true/false predictions."""
    from ..metrics import compute_nlvr_accuracy

    rows = _rows(statements, limit)
    logits = predict_logits(model, collator, rows, batch_size=batch_size, progress=progress, desc="Reasoning")
    predictions = logits.argmax(-1).tolist()
    references = [int(r["label"]) for r in rows]
    metrics = compute_nlvr_accuracy(predictions, references, group_ids=[r.get("pair_id") for r in rows])
    return {k: float(v) for k, v in metrics.items()}, {"predictions": predictions, "logits": logits}


__all__ = [
    "evaluate_captioning",
    "evaluate_detector",
    "evaluate_nlvr",
    "evaluate_retrieval",
    "evaluate_vqa",
    "generate_captions",
    "predict_logits",
    "retrieval_score_matrix",
]
