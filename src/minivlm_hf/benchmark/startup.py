"""``minivlm-hf benchmark --part startup``: what the command line costs before and around the model, each row in a
fresh interpreter, the rows interleaved round by round (a burst of someone else's work hits every row alike).

Rows: the interpreter alone; ``import torch``; ``from transformers import AutoModel, PreTrainedModel``;
``import minivlm_hf`` (registers its Auto classes once transformers is imported: timed alone and with that import);
``minivlm-hf --help`` and every ``minivlm-hf COMMAND --help``; a rejected argument; and a one-image ``caption``,
``answer`` and ``detect`` on tiny checkpoints made with ``minivlm-hf init`` in a temporary folder. Each one-image
command is timed twice per round: as the console script (its wall clock), and through a driver that runs the same
``main(argv)`` with the time split into import (the modules the command runs on, transformers' Auto classes and
the registration), load (``inference.load``), inference (the ``inference`` call) and the rest (interpreter start,
argument parsing, image reading, JSON output, interpreter exit) = the driver's wall clock minus the three.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

__all__ = ["run_startup_benchmark", "startup_markdown"]

ONE_IMAGE_COMMANDS = ("caption", "answer", "detect")
SPLIT_PARTS = ("import", "load", "inference", "rest", "exit")  # exit: the part of rest after main()

# Runs one command through `minivlm_hf.cli.main` and writes the split to the JSON file named by argv[1].
_DRIVER = r"""
import contextlib, io, json, sys, time
start, start_cpu = time.perf_counter(), time.process_time()
import minivlm_hf.inference as inference
from transformers import AutoModel, PreTrainedModel  # the Auto classes, with minivlm_hf's registration
spent = {"import": time.perf_counter() - start, "load": 0.0, "inference": 0.0,
         "cpu_import": time.process_time() - start_cpu, "cpu_load": 0.0, "cpu_inference": 0.0}

def timed(part, function):
    def wrapper(*args, **kwargs):
        begin, begin_cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[part] += time.perf_counter() - begin
            spent["cpu_" + part] += time.process_time() - begin_cpu
    return wrapper

inference.load = timed("load", inference.load)
for name in ("caption", "answer", "detect"):
    setattr(inference, name, timed("inference", getattr(inference, name)))
from minivlm_hf.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(json.loads(sys.argv[2]))
spent["code"] = code
spent["end"], spent["cpu_end"] = time.time(), time.process_time()
with open(sys.argv[1], "w") as f:
    json.dump(spent, f)
"""


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("minivlm-hf")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "minivlm_hf.cli"]


def _make_checkpoints(folder: Path, env: dict[str, str]) -> dict[str, Path]:
    """Tiny random checkpoints for the three one-image commands, made with `minivlm-hf init`."""
    made = {}
    for command, variant, task in (("caption", "minivlm-tiny", "caption"), ("answer", "minivlm-tiny", "vqa"),
                                   ("detect", "minivlm-tee-tiny", "detector")):
        out = folder / command
        subprocess.run([*_console_script(), "init", variant, "--task", task, "--output", str(out)], check=True,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        made[command] = out
    return made


def _one_image_argv(command: str, model: Path, image: str) -> list[str]:
    argv = [command, image, "--model", str(model)]
    return argv + ["--question", "what colour is the box?"] if command == "answer" else argv


def _timed_run(argv: list[str], env: dict[str, str], expected_code: int = 0) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one run. On a shared machine the CPU time moves much less
    than the wall clock."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != expected_code:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}, expected {expected_code}: "
                           f"{result.stderr[-2000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _rows(checkpoints: dict[str, Path], image: str, split_file: Path) -> list[tuple[str, list[str], str | None]]:
    """(label, argv, one-image command whose split this run records or None)."""
    from ..cli import COMMAND_MODULES

    py, cli = [sys.executable], _console_script()
    rows: list[tuple[str, list[str], str | None]] = [
        ("python -c pass", [*py, "-c", "pass"], None),
        ("import torch", [*py, "-c", "import torch"], None),
        ("from transformers import AutoModel, PreTrainedModel",
         [*py, "-c", "from transformers import AutoModel, PreTrainedModel"], None),
        ("import minivlm_hf", [*py, "-c", "import minivlm_hf"], None),
        ("import minivlm_hf; from transformers import AutoModel, PreTrainedModel",
         [*py, "-c", "import minivlm_hf; from transformers import AutoModel, PreTrainedModel"], None),
        ("minivlm-hf --help", [*cli, "--help"], None),
    ]
    rows += [(f"minivlm-hf {name} --help", [*cli, name, "--help"], None) for name in COMMAND_MODULES]
    rows.append(("minivlm-hf caption IMAGE --num-beams 0 (rejected)",
                 [*cli, "caption", image, "--model", str(checkpoints["caption"]), "--num-beams", "0"], None))
    for command in ONE_IMAGE_COMMANDS:
        argv = _one_image_argv(command, checkpoints[command], image)
        rows.append((f"minivlm-hf {command} (one image)", [*cli, *argv], None))
        rows.append((f"minivlm-hf {command} (one image, split)",
                     [*py, "-c", _DRIVER, str(split_file), json.dumps(argv)], command))
    return rows


def _lscpu() -> dict[str, str]:
    wanted = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)", "CPU max MHz")
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs if key.strip() in wanted}


def run_startup_benchmark(runs: int = 10, warmup: int = 1, threads: int | None = 2, json_path: str | None = None,
                          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every row `runs` times (after `warmup` untimed rounds), interleaved; returns the JSON-friendly result
    (also written to `json_path`), with `result["markdown"]` holding the printed table."""
    from ..assets import EXAMPLE_IMAGE

    if runs < 1 or warmup < 0:
        raise ValueError("--runs must be >= 1 and --warmup >= 0")
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: nothing may reach the network
    start = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="minivlm-startup-"))
    try:
        log("  making tiny checkpoints with `minivlm-hf init` ...")
        checkpoints = _make_checkpoints(folder, env)
        split_file = folder / "split.json"
        rows = _rows(checkpoints, str(EXAMPLE_IMAGE), split_file)
        times: dict[str, list[float]] = {label: [] for label, _, _ in rows}
        cpu_times: dict[str, list[float]] = {label: [] for label, _, _ in rows}
        splits: dict[str, dict[str, list[float]]] = {c: {p: [] for p in SPLIT_PARTS} for c in ONE_IMAGE_COMMANDS}
        cpu_splits: dict[str, dict[str, list[float]]] = {c: {p: [] for p in SPLIT_PARTS} for c in ONE_IMAGE_COMMANDS}
        for round_index in range(warmup + runs):
            timed = round_index >= warmup
            log(f"  round {round_index + 1}/{warmup + runs}{'' if timed else ' (warm-up)'}")
            shift = round_index % len(rows)  # rotate the order: no row always runs first
            for label, argv, command in rows[shift:] + rows[:shift]:
                seconds, cpu_seconds = _timed_run(argv, env, expected_code=2 if label.endswith("(rejected)") else 0)
                if not timed:
                    continue
                times[label].append(seconds)
                cpu_times[label].append(cpu_seconds)
                if command is not None:
                    spent = json.loads(split_file.read_text())
                    for part in ("import", "load", "inference"):
                        splits[command][part].append(spent[part])
                    splits[command]["rest"].append(seconds - spent["import"] - spent["load"] - spent["inference"])
                    splits[command]["exit"].append(time.time() - spent["end"])
                    cpu = {part: spent[f"cpu_{part}"] for part in ("import", "load", "inference")}
                    cpu["rest"] = cpu_seconds - sum(cpu.values())
                    cpu["exit"] = cpu_seconds - spent["cpu_end"]
                    for part, value in cpu.items():
                        cpu_splits[command][part].append(value)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "command": "minivlm-hf benchmark --part startup " + f"--runs {runs} --warmup {warmup} --threads {threads}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "lscpu": _lscpu(),
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "runs": runs,
        "rows": [{"label": label, "median_s": statistics.median(v), "min_s": min(v), "runs_s": v,
                  "cpu_median_s": statistics.median(cpu_times[label])} for label, v in times.items()],
        "split": {c: {p: statistics.median(v) for p, v in parts.items()} for c, parts in splits.items()},
        "cpu_split": {c: {p: statistics.median(v) for p, v in parts.items()} for c, parts in cpu_splits.items()},
        "runtime_s": time.perf_counter() - start,
    }
    result["markdown"] = startup_markdown(result)
    log(result["markdown"])
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {json_path}")
    return result


def startup_markdown(result: dict[str, Any]) -> str:
    rows = {r["label"]: r for r in result["rows"]}
    base = rows.get("from transformers import AutoModel, PreTrainedModel")
    lines = [
        f"`{result['command']}`, {result['date']}, {result['lscpu'].get('Model name', '?')} "
        f"({result['lscpu'].get('CPU(s)', '?')} CPUs), load average at the end {result['load_average_end']}; "
        f"median (min) of {result['runs']} fresh processes per row, interleaved.",
        "",
        "| row | median | min | vs `from transformers import AutoModel, PreTrainedModel` | CPU median | CPU vs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows.items():
        delta = f"{r['median_s'] - base['median_s']:+.2f} s" if base and "import" in label else ""
        cpu_delta = f"{r['cpu_median_s'] - base['cpu_median_s']:+.2f} s" if base and "import" in label else ""
        lines.append(f"| `{label}` | {r['median_s']:.2f} s | {r['min_s']:.2f} s | {delta} | {r['cpu_median_s']:.2f} s "
                     f"| {cpu_delta} |")
    lines += ["", "One-image commands, median seconds per part (rest = wall clock - import - load - inference; exit: "
              "its part after `main()` returned):", "",
              "| command | import | load | inference | rest | (exit) | wall (console script) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for command, parts in result["split"].items():
        wall = rows[f"minivlm-hf {command} (one image)"]["median_s"]
        lines.append(f"| `{command}` | " + " | ".join(f"{parts[p]:.2f}" for p in SPLIT_PARTS) + f" | {wall:.2f} |")
    if result.get("cpu_split"):
        lines += ["", "The same split in CPU seconds (user + system, all threads; less sensitive to other load):", "",
                  "| command | import | load | inference | rest | (exit) | total (console script) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for command, parts in result["cpu_split"].items():
            total = rows[f"minivlm-hf {command} (one image)"]["cpu_median_s"]
            lines.append(f"| `{command}` | " + " | ".join(f"{parts[p]:.2f}" for p in SPLIT_PARTS) + f" | {total:.2f} |")
    return "\n".join(lines)
