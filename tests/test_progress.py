"""Progress bars: on a terminal, with an ETA; none under --quiet / MINIVLM_HF_QUIET or when stderr is not a TTY."""

import io
import sys

from minivlm_hf import progress as P


class Terminal(io.StringIO):
    def isatty(self):
        return True


def use_tty(monkeypatch) -> Terminal:
    """stderr as a terminal (set inside the test: pytest's capture swaps sys.stderr back after fixtures)."""
    monkeypatch.setattr(P, "_QUIET", False)
    monkeypatch.delenv("MINIVLM_HF_QUIET", raising=False)
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_bar_on_a_terminal_has_an_eta(monkeypatch):
    tty = use_tty(monkeypatch)
    assert list(P.progress(range(3), desc="Scoring", unit="batch")) == [0, 1, 2]
    text = tty.getvalue()
    assert "Scoring" in text and "3/3" in text and "batch/s]" in text
    assert "<00:00" in text  # elapsed<remaining: the ETA


def test_no_bar_off_a_terminal_or_when_quiet(monkeypatch):
    tty = use_tty(monkeypatch)
    monkeypatch.setenv("MINIVLM_HF_QUIET", "1")
    assert list(P.progress(range(3), desc="Scoring")) == [0, 1, 2]
    assert tty.getvalue() == "" and not P.progress_enabled()
    monkeypatch.delenv("MINIVLM_HF_QUIET")
    assert P.progress_enabled() and not P.progress_enabled(False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, a pipe
    assert not P.progress_enabled()


def test_scene_generation_and_timing_show_progress(monkeypatch):
    tty = use_tty(monkeypatch)
    from minivlm_hf.benchmark.timing import compare
    from minivlm_hf.data.scenes import build_scenes

    scenes = build_scenes(2, 0, 1, seed=3)
    assert scenes["train"].num_rows == 2
    text = tty.getvalue()
    assert "Generating train scenes" in text and "2/2" in text and "Generating test scenes" in text
    stats = compare({"a": lambda: None, "b": lambda: None}, runs=2, warmup=1)
    assert len(stats["a"].runs) == 2 and "timing a, b" in tty.getvalue() and "6/6" in tty.getvalue()


def test_data_command_quiet_draws_no_bar(tmp_path, monkeypatch):
    from minivlm_hf.cli import main

    tty = use_tty(monkeypatch)
    assert main(["data", "scenes", "--out", str(tmp_path / "s"), "--num-train", "2", "--num-validation", "0",
                 "--num-test", "0", "--quiet"]) == 0
    assert "Generating" not in tty.getvalue()
