"""The MiniVLM web demo: one image → detections, caption, answers and a caption ranking, side by side.

Written as a Hub Space is: :func:`build_app` returns the ``gr.Blocks`` and :func:`launch_options` the settings to
launch it with, so a Space's ``app.py`` is three lines (see ``space/app.py``) and ``minivlm-hf serve`` is the same
app on 127.0.0.1. The page needs no network: system fonts (no Google Fonts), no analytics, no server-side rendering.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

# Before Gradio is imported: it reads these at import time.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from ..assets import EXAMPLE_IMAGE  # noqa: E402
from .models import TASK_TITLES, ServedModels  # noqa: E402

DEFAULT_QUESTION = "what color is the star?"
DEFAULT_CAPTIONS = "\n".join(["a green star and a red heart", "there are two crosses in the picture",
                              "a blue square alone in the image"])
SYSTEM_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
CSS = """
.minivlm-results table { font-size: 0.9em; }
.minivlm-results td, .minivlm-results th { padding: 2px 8px; }
"""


def launch_options() -> dict:
    """``Blocks.launch`` settings of the app (Gradio 5+ takes the theme and CSS at launch)."""
    return {
        "theme": gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS),
        "css": CSS,
        "ssr_mode": False,  # no Node server-side rendering: the page is served by Python alone
        "footer_links": ["api"],
        "max_file_size": "25mb",
    }


# ---------------------------------------------------------------------------------------------------------------------
# formatting (Markdown tables: readable in the page and from the DOM)
# ---------------------------------------------------------------------------------------------------------------------
def _cell(text) -> str:
    return html.escape(str(text)).replace("|", "&#124;")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def detection_rows(detections: list[dict]) -> list[list]:
    return [[i + 1, d["label"], ", ".join(d.get("attributes", [])) or "-", f"{d['score']:.3f}",
             ", ".join(f"{v:.0f}" for v in d["box"])] for i, d in enumerate(detections)]


def format_detections(detections: list[dict]) -> str:
    if not detections:
        return "No object above the score threshold."
    return _table(["#", "object", "attributes", "score", "box (x1, y1, x2, y2)"], detection_rows(detections))


def format_answers(answers: list[dict]) -> str:
    return _table(["answer", "score"], [[a["answer"], f"{a['score']:.3f}"] for a in answers])


def format_ranking(ranking: list[dict]) -> str:
    return _table(["rank", "caption", "score"], [[i + 1, r["caption"], f"{r['score']:.3f}"]
                                                 for i, r in enumerate(ranking)])


def format_latency(latency: dict[str, float]) -> str:
    if not latency:
        return ""
    return _table(["task", "latency (ms)"], [[task, f"{ms:.0f}"] for task, ms in latency.items()])


def draw_detections(image, detections: list[dict]):
    """The image with each detected box drawn and named by its attributes, class and score."""
    from ..training.report import draw_boxes

    return draw_boxes(image, [d["box"] for d in detections],
                      [" ".join([*d.get("attributes", []), d["label"]]) for d in detections],
                      [d["score"] for d in detections])


# ---------------------------------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------------------------------
def _image_path(payload) -> str:
    """The uploaded file behind an unpreprocessed ``gr.Image`` value (the events take ``preprocess=False``, so that
    a file PIL cannot read reaches :func:`minivlm_hf.inference.open_image` and its message, not a traceback)."""
    if isinstance(payload, dict):
        payload = payload.get("path")
    if not payload:
        raise gr.Error("Upload an image first (or pick the example).", print_exception=False)
    return str(payload)


def _open(payload):
    from ..inference import open_image

    path = _image_path(payload)
    try:
        return open_image(path).convert("RGB")
    except (ValueError, FileNotFoundError) as err:
        # open_image names the file by its temporary upload path; the user knows it by the name they uploaded.
        name = (payload.get("orig_name") if isinstance(payload, dict) else None) or Path(path).name
        raise gr.Error(str(err).replace(path, name), title="Not an image", print_exception=False) from None


def build_app(models, *, revision: str | None = None, trust_remote_code: bool = False,
              detection_threshold: float = 0.5) -> gr.Blocks:
    """The Gradio app for ``models``: a :class:`ServedModels`, or what :meth:`ServedModels.load` takes (folders,
    the demo's output folder, Hub ids). ``detection_threshold``: the score threshold the page starts with."""
    served = models if isinstance(models, ServedModels) else ServedModels.load(
        models, revision=revision, trust_remote_code=trust_remote_code)
    tasks = served.tasks
    decode = served.caption_defaults() if "caption" in tasks else {}

    def analyse(image, question, captions, threshold, num_beams, length_penalty, max_new_tokens, top_k):
        picture = _open(image)
        latency: dict[str, float] = {}
        shown, detections, caption, answers, ranking = picture, "", "", "", ""
        if "detector" in tasks:
            found = served.detect(picture, threshold=float(threshold))
            latency["detector"] = found.milliseconds
            shown, detections = draw_detections(picture, found.value), format_detections(found.value)
        if "caption" in tasks:
            result = served.caption(picture, num_beams=int(num_beams), length_penalty=float(length_penalty),
                                    max_new_tokens=int(max_new_tokens))
            latency["caption"], caption = result.milliseconds, result.value
        if "vqa" in tasks:
            if question and question.strip():
                result = served.answer(picture, question.strip(), top_k=int(top_k))
                latency["vqa"], answers = result.milliseconds, format_answers(result.value)
            else:
                answers = "Type a question to get answers."
        if "retrieval" in tasks:
            lines = [line.strip() for line in (captions or "").splitlines() if line.strip()]
            if lines:
                result = served.rank(picture, lines)
                latency["retrieval"], ranking = result.milliseconds, format_ranking(result.value)
            else:
                ranking = "Type captions to rank, one per line."
        return shown, detections, caption, answers, ranking, format_latency(latency)

    def on_image(image, *settings):
        """A new image (uploaded, pasted or the example clicked) runs every task; a cleared one clears the results."""
        if not image:
            return None, "", "", "", "", ""
        return analyse(image, *settings)

    def reason(left, right, statement):
        if not (statement and statement.strip()):
            raise gr.Error("Type a statement about the two images.", print_exception=False)
        result = served.judge(statement.strip(), _open(left), _open(right if right else left))
        verdict = "true" if result.value["label"] else "false"
        return (f"**{verdict}** (P(true) = {result.value['score']:.3f})\n\n"
                + format_latency({"nlvr": result.milliseconds}))

    with gr.Blocks(title="MiniVLM", analytics_enabled=False) as demo:
        gr.Markdown("# MiniVLM\nA small, fast vision-language model (TEE region detector + MiniLM fusion "
                    "transformer). Upload an image or pick the example; every task runs on it at once.\n\n"
                    "Serving: " + ", ".join(f"{TASK_TITLES[t]} (`{served.sources[t]}`)" for t in tasks))
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="image",
                                 height=320)
                gr.Examples([[str(EXAMPLE_IMAGE)]], inputs=[image], label="Example", elem_id="examples")
                question = gr.Textbox(DEFAULT_QUESTION, label="Question", elem_id="question",
                                      visible="vqa" in tasks)
                captions = gr.Textbox(DEFAULT_CAPTIONS, label="Captions to rank (one per line)", lines=3,
                                      elem_id="captions", visible="retrieval" in tasks)
                with gr.Accordion("Settings", open=False):
                    threshold = gr.Slider(0.0, 1.0, value=detection_threshold, step=0.05,
                                          label="Detection score threshold", visible="detector" in tasks)
                    num_beams = gr.Slider(1, 8, value=decode.get("num_beams", 1), step=1, label="Caption beams",
                                          visible="caption" in tasks)
                    length_penalty = gr.Slider(0.0, 3.0, value=decode.get("length_penalty", 1.0), step=0.1,
                                               label="Caption length penalty (beam score = log p / length^penalty)",
                                               visible="caption" in tasks)
                    max_new_tokens = gr.Slider(1, decode.get("max_new_tokens_limit", 20),
                                               value=decode.get("max_new_tokens", 20), step=1,
                                               label="Caption: at most this many tokens", visible="caption" in tasks)
                    top_k = gr.Slider(1, 10, value=5, step=1, label="Answers shown", visible="vqa" in tasks)
                run = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column(scale=1, elem_classes="minivlm-results"):
                shown = gr.Image(label="Detections", interactive=False, elem_id="detections-image", height=320,
                                 format="png")
                detections = gr.Markdown(elem_id="detections", visible="detector" in tasks)
                caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption",
                                     visible="caption" in tasks)
                answers = gr.Markdown(elem_id="answers", visible="vqa" in tasks)
                ranking = gr.Markdown(elem_id="ranking", visible="retrieval" in tasks)
                latency = gr.Markdown(elem_id="latency")
        inputs = [image, question, captions, threshold, num_beams, length_penalty, max_new_tokens, top_k]
        outputs = [shown, detections, caption, answers, ranking, latency]
        # preprocess=False: the handlers open the upload themselves and explain a file that is not an image.
        image.change(on_image, inputs, outputs, preprocess=False)
        gr.on([run.click, question.submit], analyse, inputs, outputs, preprocess=False)
        if "nlvr" in tasks:
            with gr.Accordion("Is a statement true of two images? (NLVR)", open=False, elem_id="nlvr"):
                gr.Markdown("The left image is the one above; the right one defaults to it.")
                with gr.Row():
                    right = gr.Image(type="filepath", label="Right image", sources=["upload"], elem_id="right-image",
                                     height=200)
                    with gr.Column():
                        statement = gr.Textbox("there is a green star", label="Statement", elem_id="statement")
                        judge = gr.Button("Judge", elem_id="judge")
                        verdict = gr.Markdown(elem_id="verdict")
            gr.on([judge.click, statement.submit], reason, [image, right, statement], verdict, preprocess=False)
    return demo


def serve(models, *, host: str = "127.0.0.1", port: int = 7860, revision: str | None = None,
          trust_remote_code: bool = False, detection_threshold: float = 0.5, block: bool = True,
          quiet: bool = False) -> gr.Blocks:
    """Build the app and launch it on ``host:port`` (``block=False``: return at once, the server runs in a thread)."""
    demo = build_app(models, revision=revision, trust_remote_code=trust_remote_code,
                     detection_threshold=detection_threshold)
    demo.queue(default_concurrency_limit=1)  # one model call at a time: the CPU threads are shared anyway
    demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=quiet,
                inbrowser=False, **launch_options())
    return demo


def model_from_environment() -> list[str]:
    """The MODEL of a Space: ``MINIVLM_MODELS`` (Hub ids or folders separated by spaces / commas)."""
    value = os.environ.get("MINIVLM_MODELS", "").replace(",", " ").split()
    if not value:
        raise ValueError("set MINIVLM_MODELS to the checkpoints to serve (Hub ids or folders, space-separated)")
    return value


__all__ = ["build_app", "launch_options", "model_from_environment", "serve"]
