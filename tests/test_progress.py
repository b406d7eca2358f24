"""fan_edge.progress: one rule for every progress bar (evaluation's faces, training's batches)."""

from __future__ import annotations

import io
import sys

import pytest

from fan_edge.progress import NullBar, on_terminal, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _terminal(monkeypatch) -> Terminal:
    """stderr a terminal (set in the test itself: pytest's capture replaces sys.stderr after fixtures run)."""
    monkeypatch.delenv("FAN_EDGE_NO_PROGRESS", raising=False)
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_a_bar_is_drawn_on_a_terminal_from_where_it_resumes(monkeypatch):
    pytest.importorskip("tqdm")
    terminal = _terminal(monkeypatch)
    assert on_terminal()
    bar = progress_bar(10, "epoch 2/3", "batch", initial=4)
    bar.set_postfix(loss="0.1")
    bar.update(1)
    bar.close()
    assert "epoch 2/3" in terminal.getvalue() and "4/10" in terminal.getvalue()  # resumed at batch 4


def test_no_bar_in_a_pipe_with_the_variable_off_rank_0_or_without_tqdm(monkeypatch):
    terminal = _terminal(monkeypatch)
    assert isinstance(progress_bar(5, "eval", "face", enabled=False), NullBar)  # off rank 0, or a library call
    monkeypatch.setitem(sys.modules, "tqdm", None)  # a runtime-only install
    assert isinstance(progress_bar(5, "eval", "face"), NullBar)
    monkeypatch.delitem(sys.modules, "tqdm")
    monkeypatch.setenv("FAN_EDGE_NO_PROGRESS", "1")
    assert not on_terminal() and isinstance(progress_bar(5, "eval", "face"), NullBar)
    monkeypatch.delenv("FAN_EDGE_NO_PROGRESS")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a log file
    assert not on_terminal() and isinstance(progress_bar(5, "eval", "face"), NullBar)
    bar = NullBar()  # every call a no-op
    bar.update(3)
    bar.set_postfix(loss="x")
    bar.close()
    assert terminal.getvalue() == ""
