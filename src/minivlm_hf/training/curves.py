"""Training curves: what the Trainer logs per step (losses, evaluation metrics, learning rate), kept and plotted.

:class:`TrainingCurvesCallback` writes ``log_history.json`` (``trainer.state.log_history``) into the stage's output
folder at every log, so a stopped run keeps its curves, and ``training_curves.png`` when training ends;
:func:`plot_training_curves` draws the three panels with matplotlib: loss (training and, when evaluated, validation),
evaluation metrics (validation during training; held-out test metrics after it as markers at the last step) and
learning rate. The parts of a loss (the TEE's, pre-training's) are logged by the recipes' Trainers and drawn with
the total.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

LOG_FILE = "log_history.json"
CURVES_FILE = "training_curves.png"
#: the held-out metrics shown on each stage's curves (the report's headline ones)
HEADLINE_METRICS = {
    "detector": ("test_map_50", "test_map"),
    "caption": ("test_cider", "test_bleu_4"),
    "vqa": ("test_accuracy",),
    "retrieval": ("test_i2t_r1", "test_t2i_r1"),
    "nlvr": ("test_accuracy",),
}
#: logged keys that are bookkeeping, not curves
_NOT_CURVES = {"epoch", "step", "total_flos", "grad_norm", "learning_rate", "loss", "eval_loss", "eval_runtime",
               "eval_samples_per_second", "eval_steps_per_second", "train_runtime", "train_samples_per_second",
               "train_steps_per_second", "train_loss"}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``key`` in a Trainer log history (entries without it, or with NaN, are skipped)."""
    points = [(int(entry.get("step", 0)), float(entry[key])) for entry in log_history
              if key in entry and _finite(entry[key])]
    return [s for s, _ in points], [v for _, v in points]


def evaluation_keys(log_history: list[dict]) -> list[str]:
    """The ``eval_*`` metrics logged during training (validation), in first-seen order."""
    keys: list[str] = []
    for entry in log_history:
        keys += [k for k, v in entry.items()
                 if k.startswith("eval_") and k not in _NOT_CURVES and k not in keys and _finite(v)]
    return keys


def loss_part_keys(log_history: list[dict]) -> list[str]:
    """The logged parts of the training loss (``loss_*`` / ``*_loss`` other than the total and validation ones)."""
    keys: list[str] = []
    for entry in log_history:
        keys += [k for k, v in entry.items() if (k.startswith("loss_") or k.endswith("_loss")) and k not in _NOT_CURVES
                 and not k.startswith("eval_") and k not in keys and _finite(v)]
    return keys


def headline_metrics(stage: str, metrics: dict) -> dict:
    """The held-out metrics of ``stage`` that its curves show (see :data:`HEADLINE_METRICS`)."""
    return {k: metrics[k] for k in HEADLINE_METRICS.get(stage, ()) if _finite(metrics.get(k))}


def plot_training_curves(log_history: list[dict], path: str | Path, *, title: str = "",
                         final_metrics: dict | None = None) -> dict[str, tuple[list, list]]:
    """Write a PNG with the loss, evaluation-metric and learning-rate curves of ``log_history``; ``final_metrics``
    (e.g. ``{"test_accuracy": 0.8}``) are drawn as markers at the last logged step. Returns what was drawn,
    read back from the figure: ``{"panel: label": (steps, values)}``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    path = Path(path)
    last_step = max([int(e.get("step", 0)) for e in log_history] or [0])
    fig, (loss_ax, metric_ax, lr_ax) = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    for key, label in (("loss", "training loss"), ("eval_loss", "validation loss")):
        steps, values = series(log_history, key)
        if steps:
            loss_ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
    for key in loss_part_keys(log_history):  # the parts of the training loss, thinner and dashed
        steps, values = series(log_history, key)
        loss_ax.plot(steps, values, linestyle="--", linewidth=1, label=key)
    loss_ax.set(title="loss", xlabel="step")
    for key in evaluation_keys(log_history):
        steps, values = series(log_history, key)
        metric_ax.plot(steps, values, marker="o", markersize=3, label=f"validation {key[len('eval_'):]}")
    for key, value in (final_metrics or {}).items():
        if _finite(value):
            metric_ax.scatter([last_step], [value], marker="*", s=90, zorder=3,
                              label=f"test {key.removeprefix('test_')} = {value:.3g}")
    metric_ax.set(title="evaluation", xlabel="step")
    if not metric_ax.has_data():
        metric_ax.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=metric_ax.transAxes)
    steps, values = series(log_history, "learning_rate")
    if steps:
        lr_ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label="learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    lr_ax.set(title="learning rate", xlabel="step")
    for ax in (loss_ax, metric_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in (loss_ax, metric_ax, lr_ax):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    drawn = {}
    for ax in (loss_ax, metric_ax, lr_ax):
        for line in ax.get_lines():
            drawn[f"{ax.get_title()}: {line.get_label()}"] = ([float(x) for x in line.get_xdata()],
                                                               [float(y) for y in line.get_ydata()])
        for points in ax.collections:
            offsets = points.get_offsets()
            drawn[f"{ax.get_title()}: {points.get_label()}"] = ([float(x) for x in offsets[:, 0]],
                                                                 [float(y) for y in offsets[:, 1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)  # never a half-written PNG
    return drawn


def save_log_history(log_history: list[dict], output_dir: str | Path) -> Path:
    path = Path(output_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(log_history, indent=1, default=float))
    tmp.replace(path)
    return path


def load_log_history(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / LOG_FILE
    return json.loads(path.read_text()) if path.is_file() else []


class TrainingCurvesCallback(TrainerCallback):
    """Keeps ``state.log_history`` in ``output_dir/log_history.json`` at every log and plots
    ``output_dir/training_curves.png`` at the end of training (main process only)."""

    def __init__(self, output_dir: str | Path, title: str = ""):
        self.output_dir = Path(output_dir)
        self.title = title

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            save_log_history(state.log_history, self.output_dir)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            save_log_history(state.log_history, self.output_dir)
            plot_training_curves(state.log_history, self.output_dir / CURVES_FILE, title=self.title)


__all__ = ["CURVES_FILE", "HEADLINE_METRICS", "LOG_FILE", "TrainingCurvesCallback", "headline_metrics",
           "load_log_history", "plot_training_curves", "save_log_history", "series"]
