"""ONNX export of the TEE, of the fusion encoder + VQA head and of the captioning decoder, with ONNX Runtime
runners and verification.

Exporters, per graph: the captioning decoder uses the dynamo-based ``torch.onnx.export(..., dynamo=True)`` (see
:mod:`.onnx_captioning`, which describes its two graphs; :class:`~.onnx_captioner.OnnxCaptioner` runs them). The TEE
and VQA graphs use the TorchScript-based ``dynamo=False``: the dynamo exporter writes opset 18, and its conversion
to the offered opsets fails below 17 for every graph (``LayerNormalization`` has no earlier version) and at the
default 17 for the TEE (its ``ReduceMean`` axes input has no opset-17 form), leaving an opset-18 file. With torch 2.14 /
onnxscript 0.7 at opset 18 it exports the three graphs within 2e-6 of PyTorch (the dense graph from an example of at
least 256 x 384 pixels: at 128 x 128 the 1 x 1 top level specialises the size), at about the same ONNX Runtime speed.
The TEE's data-dependent stages (proposal selection, NMS) stay in Python under either exporter.
Opsets 14-20 export; the default is 17 (the first with a native ``LayerNormalization``), tested with
onnxruntime 1.32. ``SUPPORTED_OPSETS`` lists what the tests cover.

What is in the graphs and what stays in Python
----------------------------------------------
``tee_dense.onnx``       pixel_values ``(B, 3, H, W)`` (already padded to a multiple of ``2**max_level``, i.e. 128)
                         → BiFPN maps ``p3 … p7`` + first-stage ``objectness (B, N)`` and ``anchor_deltas (B, N, 4)``.
                         EfficientNet + BiFPN + proposal head; dynamic batch, height and width.
``tee_box_head.onnx``    pooled RoIs ``(R, C, 4, 4)`` → ``region_features (R, 1024)``, ``class_logits``,
                         ``attribute_logits``, ``box_deltas``; dynamic R.
Python (the TEE's own code, reused): padding / image sizes, anchors, proposal selection (per-level top-k, box
decoding, clipping, NMS, top-k per image), multi-level RoIAlign (level assignment by box size, torchvision
``roi_align``), and the final scoring / box refinement / class-wise NMS / top-``num_regions`` packing. These are
data-dependent (the number of boxes surviving NMS decides every later shape); traced into a graph they would be
frozen to the example's counts. They are cheap (a few ms of the TEE's time, see the benchmark).
``fusion_vqa.onnx``      ``input_ids``, ``attention_mask`` ``(B, T)``, ``tag_ids``, ``tag_attention_mask`` ``(B, G)``,
                         ``region_features (B, K, F)``, ``region_boxes (B, K, 4)`` (normalised xyxy),
                         ``region_mask (B, K)`` (bool) → ``logits (B, num_answers)``; dynamic B, T, G, K.
                         Embeddings, encoder (eager attention), pooler and VQA classifier. Turning detections into
                         tag tokens (``MiniVLMModel.tags_from_regions``) stays in Python.

:class:`OnnxTEE` and :class:`OnnxVQA` run the exported files with ONNX Runtime; ``OnnxTEE`` returns the same region
fields as ``TEEModel``. :func:`export_onnx` exports whatever the model holds and verifies every graph against
PyTorch (max |Δ| ≤ ``atol``, default 1e-4).
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_OPSET",
    "SUPPORTED_OPSETS",
    "ExportResult",
    "OnnxTEE",
    "OnnxVQA",
    "export_onnx",
    "export_tee",
    "export_vqa",
    "load_for_export",
]

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = tuple(range(14, 21))
MANIFEST = "onnx_manifest.json"
TEE_DENSE = "tee_dense.onnx"
TEE_BOX_HEAD = "tee_box_head.onnx"
FUSION_VQA = "fusion_vqa.onnx"
VQA_INPUTS = (
    "input_ids", "attention_mask", "tag_ids", "tag_attention_mask", "region_features", "region_boxes", "region_mask",
)


# ------------------------------------------------------------------------------------------------------------ graphs


class TEEDenseGraph(nn.Module):
    """EfficientNet + BiFPN + proposal head of a TEE (``pixel_values`` padded to a multiple of 128)."""

    def __init__(self, tee: nn.Module):
        super().__init__()
        self.tee = tee

    def forward(self, pixel_values: Tensor):
        features = self.tee.bifpn(self.tee.backbone(pixel_values))
        objectness, deltas = self.tee.proposal_head(features)
        return (*features, objectness, deltas)


class TEEBoxHeadGraph(nn.Module):
    """Box head (2 FC) + predictors of a TEE, over pooled RoIs."""

    def __init__(self, tee: nn.Module):
        super().__init__()
        self.tee = tee

    def forward(self, pooled: Tensor):
        region_features = self.tee.box_head(pooled)
        class_logits, attribute_logits, box_deltas = self.tee.predictor(region_features)
        return region_features, class_logits, attribute_logits, box_deltas


class FusionVQAGraph(nn.Module):
    """Fusion encoder + VQA head over precomputed regions and tag ids."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.input_names = VQA_INPUTS

    def forward(self, *inputs):
        return self.model(**dict(zip(self.input_names, inputs)), return_dict=True).logits


# ------------------------------------------------------------------------------------------------------------ helpers


def _num_levels(tee) -> int:
    return tee.config.max_level - tee.config.min_level + 1


def _level_names(tee) -> list[str]:
    return [f"p{level}" for level in range(tee.config.min_level, tee.config.max_level + 1)]


def _session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes, opset: int) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset {opset} is not supported; choose from {SUPPORTED_OPSETS[0]}-{SUPPORTED_OPSETS[-1]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter restores the wrapper's own train/eval flag afterwards, recursively: a wrapper left in the
    # default training mode would switch the wrapped model to training mode (batch-norm batch statistics).
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side checks, legacy-exporter deprecation
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset, input_names=list(input_names),
            output_names=list(output_names), dynamic_axes=dynamic_axes, do_constant_folding=True,
        )


def _diff(a, b) -> dict[str, float]:
    a = torch.as_tensor(np.asarray(a)).double()
    b = torch.as_tensor(np.asarray(b)).double()
    if a.shape != b.shape:
        return {"max_abs": float("inf"), "max_rel": float("inf"), "shape_a": list(a.shape), "shape_b": list(b.shape)}
    if a.numel() == 0:
        return {"max_abs": 0.0, "max_rel": 0.0}
    abs_diff = (a - b).abs()
    return {"max_abs": float(abs_diff.max()), "max_rel": float((abs_diff / b.abs().clamp(min=1e-6)).max()),
            "max_ref": float(b.abs().max())}


def _tee_of(model: nn.Module) -> nn.Module | None:
    from ..fast.tee import is_tee

    if is_tee(model):
        return model
    for name in ("tee",):
        if is_tee(getattr(model, name, None) or nn.Module()):
            return getattr(model, name)
    base = getattr(model, "minivlm", model)
    vision = getattr(base, "vision_model", None)
    return vision if vision is not None and is_tee(vision) else None


def _is_vqa(model: nn.Module) -> bool:
    return hasattr(model, "minivlm") and hasattr(model, "classifier") and type(model).__name__.endswith(
        "ForQuestionAnswering"
    )


def _is_captioner(model: nn.Module) -> bool:
    from .onnx_captioning import is_captioner

    return is_captioner(model)


# ------------------------------------------------------------------------------------------------------------ TEE


def tee_example_pixels(tee: nn.Module, batch: int = 1, size: int | None = None, seed: int = 0) -> Tensor:
    size = size or int(getattr(tee.config, "image_size", 128))
    divisor = 2**tee.config.max_level
    size = max(divisor, -(-size // divisor) * divisor)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tee.config.num_channels, size, size, generator=gen)


def export_tee(tee: nn.Module, output_dir: str | Path, opset: int = DEFAULT_OPSET, example: Tensor | None = None
               ) -> dict[str, str]:
    """Export ``tee_dense.onnx`` and ``tee_box_head.onnx`` of ``tee`` (a ``TEEModel``) into ``output_dir``."""
    output_dir = Path(output_dir)
    tee = tee.eval()
    example = example if example is not None else tee_example_pixels(tee)
    names = _level_names(tee)
    dense_out = [*names, "objectness", "anchor_deltas"]
    axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"}, "objectness": {0: "batch", 1: "anchors"},
            "anchor_deltas": {0: "batch", 1: "anchors"}}
    axes.update({n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in names})
    with torch.no_grad():
        _export(TEEDenseGraph(tee), (example,), output_dir / TEE_DENSE, ["pixel_values"], dense_out, axes, opset)
        c = tee.config
        pooled = torch.randn(7, c.bifpn_channels, c.roi_output_size, c.roi_output_size,
                             generator=torch.Generator().manual_seed(1))
        head_out = ["region_features", "class_logits", "attribute_logits", "box_deltas"]
        _export(TEEBoxHeadGraph(tee), (pooled,), output_dir / TEE_BOX_HEAD, ["pooled"], head_out,
                {"pooled": {0: "rois"}, **{n: {0: "rois"} for n in head_out}}, opset)
    return {"tee_dense": str(output_dir / TEE_DENSE), "tee_box_head": str(output_dir / TEE_BOX_HEAD)}


class _SecondStageShim:
    """Stands in for a ``TEEModel`` inside its own ``_detect``: RoIAlign in Python, box head + predictors in ORT."""

    def __init__(self, tee: nn.Module, session):
        self.config = tee.config
        self.roi_pooler = tee.roi_pooler
        self.session = session

    def _second_stage(self, features, boxes, batch_index):
        levels = self.config.roi_max_level - self.config.min_level + 1
        pooled = self.roi_pooler(features[:levels], boxes, batch_index)
        if pooled.shape[0] == 0:
            c = self.config
            empty = pooled.new_zeros
            return (empty((0, c.box_head_dim)), empty((0, c.num_labels + 1)), empty((0, c.num_attributes)),
                    empty((0, 4)))
        outputs = self.session.run(None, {"pooled": _np(pooled)})
        return tuple(torch.from_numpy(o) for o in outputs)


class OnnxTEE:
    """The TEE run with ONNX Runtime for the dense part and the box head, Python for the rest (see module doc).

    ``tee`` supplies the configuration and the Python stages (anchors, proposal selection, RoIAlign, final NMS);
    its weights are not used (build it on the meta device, as :meth:`from_dir` does, to skip allocating them).
    Calling it returns a dict with the ``TEEModel`` region fields (``region_features``, ``region_boxes``, ...).
    """

    def __init__(self, tee: nn.Module, dense_path, box_head_path, threads: int | None = None):
        self.tee = tee
        self.dense = _session(dense_path, threads)
        self.box_head = _session(box_head_path, threads)
        self._shim = _SecondStageShim(tee, self.box_head)
        self._detect = type(tee)._detect  # the TEE's own final stage, run on the shim

    @classmethod
    def from_dir(cls, onnx_dir, threads: int | None = None) -> "OnnxTEE":
        from ..modeling.configuration_minivlm_tee import TEEConfig
        from ..modeling.modeling_minivlm_tee import TEEModel

        onnx_dir = Path(onnx_dir)
        config = TEEConfig.from_pretrained(onnx_dir / "tee_config")
        with torch.device("meta"):
            tee = TEEModel(config)
        return cls(tee, onnx_dir / TEE_DENSE, onnx_dir / TEE_BOX_HEAD, threads)

    @torch.no_grad()
    def __call__(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> dict[str, Tensor]:
        tee = self.tee
        pixel_values, image_sizes = tee._prepare_inputs(pixel_values, pixel_mask)
        outputs = [torch.from_numpy(o) for o in self.dense.run(None, {"pixel_values": _np(pixel_values.float())})]
        levels = _num_levels(tee)
        features, objectness, deltas = outputs[:levels], outputs[levels], outputs[levels + 1]
        anchors, level_sizes = tee.anchor_generator([f.shape[-2:] for f in features], features[0].device)
        proposals, batch_index = tee._select_proposals(objectness, deltas, anchors, level_sizes, image_sizes)
        return self._detect(self._shim, features, proposals, batch_index, image_sizes, pixel_values.shape[0])


# ------------------------------------------------------------------------------------------------------------ fusion


def vqa_example_inputs(model: nn.Module, batch: int = 2, text: int = 8, tags: int = 5, regions: int | None = None,
                       seed: int = 0) -> dict[str, Tensor]:
    """Random VQA-graph inputs for ``model`` (some padding in the last row, valid normalised boxes)."""
    c = model.config
    regions = regions or min(c.max_regions, 10)
    gen = torch.Generator().manual_seed(seed)
    low = min(1000, c.vocab_size // 2)
    input_ids = torch.randint(low, c.vocab_size, (batch, text), generator=gen)
    input_ids[:, 0], input_ids[:, -1] = c.cls_token_id, c.sep_token_id
    attention_mask = torch.ones_like(input_ids)
    tag_ids = torch.randint(low, c.vocab_size, (batch, tags), generator=gen)
    tag_mask = torch.ones_like(tag_ids)
    xy = torch.rand(batch, regions, 2, generator=gen) * 0.5
    wh = torch.rand(batch, regions, 2, generator=gen) * 0.4 + 0.05
    region_mask = torch.ones(batch, regions, dtype=torch.bool)
    if batch > 1:
        attention_mask[-1, -2:] = 0
        tag_mask[-1, -1:] = 0
        region_mask[-1, -2:] = False
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "tag_ids": tag_ids, "tag_attention_mask": tag_mask,
        "region_features": torch.rand(batch, regions, c.region_feature_size, generator=gen),
        "region_boxes": torch.cat([xy, xy + wh], dim=-1), "region_mask": region_mask,
    }


def export_vqa(model: nn.Module, output_dir: str | Path, opset: int = DEFAULT_OPSET,
               example: dict[str, Tensor] | None = None) -> str:
    """Export ``fusion_vqa.onnx`` (fusion encoder + VQA head over regions) of a ``MiniVLMForQuestionAnswering``.

    Exports a copy with eager attention (explicit matmul / softmax; the additive mask is part of the graph)."""
    output_dir = Path(output_dir)
    model = copy.deepcopy(model).eval()
    base = model.minivlm
    base.vision_model = None  # not part of this graph (exported separately); keeps the copy small
    model.config._attn_implementation = "eager"
    base.config._attn_implementation = "eager"
    example = example if example is not None else vqa_example_inputs(model)
    args = tuple(example[name] for name in VQA_INPUTS)
    axes = {
        "input_ids": {0: "batch", 1: "text"}, "attention_mask": {0: "batch", 1: "text"},
        "tag_ids": {0: "batch", 1: "tags"}, "tag_attention_mask": {0: "batch", 1: "tags"},
        "region_features": {0: "batch", 1: "regions"}, "region_boxes": {0: "batch", 1: "regions"},
        "region_mask": {0: "batch", 1: "regions"}, "logits": {0: "batch"},
    }
    with torch.no_grad():
        _export(FusionVQAGraph(model), args, output_dir / FUSION_VQA, list(VQA_INPUTS), ["logits"], axes, opset)
    return str(output_dir / FUSION_VQA)


class OnnxVQA:
    """``fusion_vqa.onnx`` with ONNX Runtime: call with the VQA-graph inputs (tensors), get ``logits`` (tensor)."""

    def __init__(self, path, threads: int | None = None):
        self.session = _session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, **inputs: Tensor) -> Tensor:
        feed = {}
        for name in self.input_names:
            value = inputs[name]
            if name == "region_mask":
                value = value.bool()
            elif name == "region_features" or name == "region_boxes":
                value = value.float()
            else:
                value = value.long()
            feed[name] = _np(value)
        return torch.from_numpy(self.session.run(None, feed)[0])


# ------------------------------------------------------------------------------------------------------------ driver


@dataclass
class ExportResult:
    output_dir: str
    opset: int
    files: dict[str, str] = field(default_factory=dict)
    verification: dict[str, dict[str, float]] = field(default_factory=dict)
    atol: float = 1e-4
    passed: bool = True
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _close(d: dict[str, float], atol: float) -> bool:
    return d["max_abs"] <= atol or d["max_abs"] <= atol * max(1.0, d.get("max_ref", 0.0))


@torch.no_grad()
def verify_tee(tee: nn.Module, output_dir, atol: float = 1e-4, threads: int | None = None) -> dict[str, dict]:
    """ORT vs PyTorch: dense maps and first-stage outputs, box head outputs, and the TEE's final regions."""
    output_dir = Path(output_dir)
    runner = OnnxTEE(tee, output_dir / TEE_DENSE, output_dir / TEE_BOX_HEAD, threads)
    results = {}
    pixels = tee_example_pixels(tee, batch=2, seed=3)
    names = [*_level_names(tee), "objectness", "anchor_deltas"]
    reference = TEEDenseGraph(tee)(pixels)
    ort_outputs = runner.dense.run(None, {"pixel_values": _np(pixels)})
    for name, ref, out in zip(names, reference, ort_outputs):
        results[f"tee_dense.{name}"] = _diff(out, ref)
    c = tee.config
    pooled = torch.randn(5, c.bifpn_channels, c.roi_output_size, c.roi_output_size,
                         generator=torch.Generator().manual_seed(4))
    reference = TEEBoxHeadGraph(tee)(pooled)
    for name, ref, out in zip(["region_features", "class_logits", "attribute_logits", "box_deltas"], reference,
                              runner.box_head.run(None, {"pooled": _np(pooled)})):
        results[f"tee_box_head.{name}"] = _diff(out, ref)
    # A non-square, padded input: exercises the dynamic height / width and the Python stages.
    size = max(2 ** c.max_level, int(getattr(c, "image_size", 128)))
    pixels = torch.randn(1, c.num_channels, size, size + 2 ** c.max_level, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(1, pixels.shape[2], pixels.shape[3], dtype=torch.long)
    mask[:, :, -10:] = 0
    ref = tee(pixel_values=pixels, pixel_mask=mask)
    out = runner(pixels, mask)
    for name in ("region_features", "region_boxes", "region_scores"):
        results[f"tee.{name}"] = _diff(out[name], getattr(ref, name))
    results["tee.region_labels"] = {"max_abs": float((out["region_labels"] != ref.region_labels).sum())
                                    if out["region_labels"].shape == ref.region_labels.shape else float("inf"),
                                    "max_rel": 0.0}
    return results


@torch.no_grad()
def verify_vqa(model: nn.Module, output_dir, threads: int | None = None) -> dict[str, dict]:
    runner = OnnxVQA(Path(output_dir) / FUSION_VQA, threads)
    results = {}
    # Different batch / lengths from the export example: the dynamic axes must hold.
    for i, shape in enumerate([dict(batch=3, text=11, tags=4), dict(batch=1, text=6, tags=7)]):
        inputs = vqa_example_inputs(model, seed=10 + i, **shape)
        reference = model(**inputs).logits
        results[f"fusion_vqa.logits[{i}]"] = _diff(runner(**inputs), reference)
    return results


def export_onnx(model: nn.Module, output_dir, opset: int = DEFAULT_OPSET, verify: bool = True, atol: float = 1e-4,
                threads: int | None = None, processor=None) -> ExportResult:
    """Export what ``model`` holds: the TEE (``TEEModel``, ``TEEForObjectDetection`` or the TEE inside a fusion
    model), for a ``MiniVLMForQuestionAnswering`` the fusion encoder + VQA head, and for a
    ``MiniVLMForImageCaptioning`` the captioning decoder (``decoder_model.onnx`` + ``decoder_with_past_model.onnx``,
    with ``config.json``, ``generation_config.json`` and ``processor``'s files, if given, next to them: the folder
    :meth:`OnnxCaptioner.from_pretrained` reads; verification then also compares greedy tokens). Writes the graphs, the
    TEE config (``tee_config/``, for :meth:`OnnxTEE.from_dir`) and ``onnx_manifest.json`` into ``output_dir``;
    with ``verify``, compares ONNX Runtime with PyTorch (``result.passed``: every max |Δ| ≤ ``atol``, relative to
    the output's magnitude where that exceeds 1).

    The folder is written atomically (staged next to it, then swapped in): a crash leaves the previous export or
    this one, whole. An existing folder is replaced only if it is empty or an earlier export (``onnx_manifest.json``).
    """
    from ..io.atomic import atomic_directory

    output_dir = Path(output_dir)
    check_export_output(output_dir)
    with atomic_directory(output_dir) as staging:
        result = _export_into(model, staging, opset, verify, atol, threads, processor)
    result.output_dir = str(output_dir)
    result.files = {name: str(output_dir / Path(path).name) for name, path in result.files.items()}
    return result


def check_export_output(output_dir: Path) -> None:
    """Refuse an output folder that is not empty and not an earlier export (it would be replaced)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / MANIFEST).is_file():
        names = sorted(p.name for p in output_dir.iterdir())
        raise ValueError(
            f"refusing to replace {output_dir}: it is not an ONNX export of this package (no {MANIFEST}) and holds "
            f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}; choose an empty or new folder"
        )


def _export_into(model: nn.Module, output_dir: Path, opset: int, verify: bool, atol: float,
                 threads: int | None, processor=None) -> ExportResult:
    start = time.perf_counter()
    model = model.eval()
    result = ExportResult(output_dir=str(output_dir), opset=opset, atol=atol)
    tee = _tee_of(model)
    is_vqa = _is_vqa(model)
    is_captioner = _is_captioner(model)
    if tee is None and not is_vqa and not is_captioner:
        raise ValueError(
            f"nothing to export in a {type(model).__name__}: ONNX export covers the TEE (TEEModel / "
            "TEEForObjectDetection / a fusion model with a vision_config), MiniVLMForQuestionAnswering and "
            "MiniVLMForImageCaptioning"
        )
    if tee is not None:
        result.files.update(export_tee(tee, output_dir, opset))
        tee.config.save_pretrained(output_dir / "tee_config")
        if verify:
            result.verification.update(verify_tee(tee, output_dir, atol, threads))
    if is_vqa:
        result.files["fusion_vqa"] = export_vqa(model, output_dir, opset)
        model.config.save_pretrained(output_dir / "fusion_config")
        if verify:
            result.verification.update(verify_vqa(model, output_dir, threads))
    if is_captioner:
        from .onnx_captioning import export_captioner, save_captioner_files, verify_captioner

        result.files.update(export_captioner(model, output_dir, opset))
        save_captioner_files(model, output_dir, processor)
        if verify:
            result.verification.update(verify_captioner(model, output_dir, threads))
    result.passed = all(_close(d, atol) for d in result.verification.values())
    result.seconds = time.perf_counter() - start
    manifest = {
        "opset": opset,
        "exporter": f"torch.onnx.export(dynamo=False), torch {torch.__version__}",
        "exporters": {
            **{name: "torch.onnx.export(dynamo=False)" for name in ("tee_dense", "tee_box_head", "fusion_vqa")
               if name in result.files},
            **{name: "torch.onnx.export(dynamo=True), opset >= 18" for name in
               ("decoder_model", "decoder_with_past_model") if name in result.files},
        },
        "files": {k: Path(v).name for k, v in result.files.items()},
        "inputs": {
            "tee_dense": ["pixel_values (B, 3, H, W), H and W multiples of 2**max_level, normalised, zero padded"],
            "tee_box_head": ["pooled (R, bifpn_channels, roi_output_size, roi_output_size)"],
            "fusion_vqa": list(VQA_INPUTS) if is_vqa else [],
            **(_captioner_manifest(model) if is_captioner else {}),
        },
        "python_side": [
            "TEE: padding + image sizes, anchors, proposal selection (top-k, decode, clip, NMS), multi-level "
            "RoIAlign, final scoring / box refinement / NMS / top-k packing (minivlm_hf.export.OnnxTEE)",
            "fusion: detections -> tag token ids (MiniVLMModel.tags_from_regions), tokenisation, answer lookup",
            *(["captioning: prompt re-padding on the left, position_ids = cumsum(attention_mask) - 1, the greedy "
               "loop over decoder_model / decoder_with_past_model (minivlm_hf.export.OnnxCaptioner)"]
              if is_captioner else []),
        ],
        "verification_atol": atol,
        "verification": result.verification,
        "passed": result.passed,
    }
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float) + "\n")
    return result


def _captioner_manifest(model: nn.Module) -> dict[str, list[str]]:
    from .onnx_captioning import PREFILL_INPUTS, STEP_INPUTS, past_names

    layers = model.config.num_hidden_layers
    return {"decoder_model": list(PREFILL_INPUTS),
            "decoder_with_past_model": [*STEP_INPUTS, *past_names(layers)]}


def load_for_export(model_dir: str, trust_remote_code: bool = False) -> nn.Module:
    """Load a saved TEE detector or MiniVLM VQA model (or any MiniVLM model with a TEE inside) for export."""
    import transformers

    import minivlm_hf  # noqa: F401  (registers the Auto classes)

    from ..io.loading import check_model_folder, from_pretrained_checked

    path = Path(model_dir)
    if not path.exists():
        raise FileNotFoundError(f"model folder not found: {path}")
    check_model_folder(str(model_dir))  # a MiniVLM model with whole safetensors weights, or one clear line
    config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    architecture = (getattr(config, "architectures", None) or [""])[0]
    if config.model_type == "minivlm_tee":
        auto = transformers.AutoModelForObjectDetection
    elif architecture.endswith("ForQuestionAnswering"):
        auto = transformers.AutoModelForVisualQuestionAnswering
    elif architecture.endswith("ForImageCaptioning"):
        auto = transformers.AutoModelForImageTextToText
    elif architecture.endswith("ForPreTraining"):
        auto = transformers.AutoModelForPreTraining
    else:
        auto = transformers.AutoModel
    return from_pretrained_checked(auto, str(model_dir), trust_remote_code=trust_remote_code)

