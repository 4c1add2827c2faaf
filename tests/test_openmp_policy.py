"""The passive OpenMP wait policy of the long-running commands is opt-in (it slows an idle machine down)."""

import os

import pytest

from minivlm_hf.commands import _threads


@pytest.fixture
def fake_console(monkeypatch, tmp_path):
    script = tmp_path / "minivlm-hf"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(_threads.sys, "argv", [str(script), "demo"])
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    calls = []
    monkeypatch.setattr(_threads.os, "execv", lambda path, argv: calls.append((path, list(argv))))
    return script, calls


def test_no_reexec_by_default(fake_console, monkeypatch):
    _, calls = fake_console
    monkeypatch.delenv("MINIVLM_HF_PASSIVE_OPENMP", raising=False)
    _threads.ensure_passive_openmp()
    assert calls == [] and "OMP_WAIT_POLICY" not in os.environ


def test_opt_in_reexecs_once_with_passive_policy(fake_console, monkeypatch):
    script, calls = fake_console
    monkeypatch.setenv("MINIVLM_HF_PASSIVE_OPENMP", "1")
    _threads.ensure_passive_openmp()
    assert calls == [(str(script), [str(script), "demo"])] and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    _threads.ensure_passive_openmp()  # the re-executed process sees the policy set: no second exec
    assert len(calls) == 1
