"""The in-sandbox agent's parts for issue 16, in this process (fast tier): the python
kernel's notebook display and figure capture (on stand-in pandas and matplotlib modules:
the real ones run in the python-data template's Docker test), the streamer's
coalescing, a background process's output ring, and what /work/outputs gives back."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

AGENT = str(Path(__file__).resolve().parents[2] / "sandbox" / "agent")


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The agent's modules import each other by their bare names, as inside the sandbox."""
    monkeypatch.syspath_prepend(AGENT)
    yield


class DataFrame:
    __module__ = "pandas.core.frame"

    def to_string(self) -> str:
        return "   a\n0  1"

    def __repr__(self) -> str:
        return self.to_string()


class Figure:
    def __init__(self, number: int, fail: bool = False) -> None:
        self.number, self.fail = number, fail

    def savefig(self, path: str, format: str) -> None:
        if self.fail:
            raise ValueError("cannot draw this")
        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([self.number]))


def fake_pyplot(figures: dict[int, Figure]) -> Any:
    pyplot: Any = types.ModuleType("matplotlib.pyplot")
    pyplot.get_fignums = lambda: sorted(figures)
    pyplot.figure = lambda number: figures[number]
    pyplot.close = lambda which: figures.clear()
    pyplot.show = lambda *args, **kwargs: None
    return pyplot


def test_a_pandas_object_as_the_last_expression_is_shown_as_a_table(
    agent: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import kernel

    namespace: dict[str, Any] = {"DataFrame": DataFrame}
    assert kernel.run("x = 1\ndf = DataFrame()\ndf", namespace) == 0
    assert kernel.run("df.to_string()\nx + 1", namespace) == 0  # plain values show nothing, as a script
    assert capsys.readouterr().out == "   a\n0  1\n"
    assert kernel.run("y = (\n  2)\nraise ValueError('boom')", namespace) == 1
    err = capsys.readouterr().err
    assert 'File "<code>", line 3' in err and "ValueError: boom" in err and "kernel.py" not in err


def test_open_and_shown_figures_are_saved_as_pngs(
    agent: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kernel

    figures = {1: Figure(1), 2: Figure(2)}
    pyplot = fake_pyplot(figures)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    outputs = tmp_path / "outputs"
    assert kernel.capture_figures(str(outputs)) == [str(outputs / "figure-1.png"), str(outputs / "figure-2.png")]
    assert not figures, "captured figures are closed"
    assert (outputs / "figure-2.png").read_bytes().startswith(b"\x89PNG")
    figures[3] = Figure(3)
    pyplot.show()  # from now on show() saves at once, after what is already there
    assert sorted(os.listdir(outputs)) == ["figure-1.png", "figure-2.png", "figure-3.png"]
    figures[4] = Figure(4, fail=True)
    assert kernel.capture_figures(str(outputs)) == []
    assert "could not save a figure (ValueError: cannot draw this)" in capsys.readouterr().err


def test_without_matplotlib_nothing_is_captured(agent: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kernel

    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
    assert kernel.capture_figures(str(tmp_path / "outputs")) == []
    assert not (tmp_path / "outputs").exists()


def test_the_streamer_sends_whole_lines_at_most_every_interval(agent: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import streaming

    clock = [100.0]
    monkeypatch.setattr(streaming.time, "monotonic", lambda: clock[0])
    frames: list[list[tuple[str, bytes]]] = []
    streamer = streaming.Streamer(frames.append, limit=30)
    streamer.feed("stdout", b"one\ntw")
    streamer.feed("stderr", b"err\n")
    streamer.tick()
    assert frames == [[("stdout", b"one\n"), ("stderr", b"err\n")]]
    streamer.feed("stdout", b"o\nthree\n")
    clock[0] += 0.05
    streamer.tick()
    assert len(frames) == 1, "not within INTERVAL_S of the last frame"
    clock[0] += 0.06
    streamer.tick()
    assert frames[-1] == [("stdout", b"two\nthree\n")]
    streamer.feed("stdout", b"x" * 100)  # past the limit: only what the answer keeps is taken
    assert streamer.taken["stdout"] == 30 and bytes(streamer.pending["stdout"]) == b"x" * 16


def test_a_broken_host_stops_the_stream_not_the_command(agent: None) -> None:
    import streaming

    def gone(parts: list[tuple[str, bytes]]) -> None:
        raise BrokenPipeError

    streamer = streaming.Streamer(gone, limit=100)
    streamer.feed("stdout", b"a\n")
    streamer.tick()
    assert streamer.broken
    streamer.feed("stdout", b"b\n")
    assert streamer.taken["stdout"] == 2


def test_the_ring_keeps_the_newest_bytes_by_offset(agent: None) -> None:
    import processes

    ring = processes.Ring(limit=10)
    ring.append(b"0123456789")
    ring.append(b"abcde")
    assert (ring.start, ring.end) == (5, 15)
    assert ring.read(0, 100) == (5, b"56789abcde"), "what was dropped is skipped"
    assert ring.read(12, 2) == (12, b"cd")
    assert ring.read(99, 5) == (15, b"")


def test_outputs_are_what_changed_within_the_caps(agent: None, tmp_path: Path) -> None:
    import files

    root = tmp_path / "outputs"
    (root / "sub").mkdir(parents=True)
    (root / "old.txt").write_text("old")
    before = files.snapshot(str(root))
    (root / "sub" / "new.txt").write_text("new")
    (root / "big.bin").write_bytes(b"x" * 50)
    (root / "a.txt").write_text("a")
    (root / "b.txt").write_text("b")
    os.symlink("/etc/passwd", root / "link")
    spec = {"path": str(root), "max_files": 2, "max_file_bytes": 10, "max_total_bytes": 100}
    answer, contents = files.collect(before, spec)
    assert [f["path"] for f in answer["files"]] == [str(root / "a.txt"), str(root / "b.txt")]
    assert contents == [b"a", b"b"]
    assert [(f["path"].rsplit("/", 1)[1], f["reason"]) for f in answer["left_out"]] == [
        ("big.bin", "larger than the 10 bytes a file may be"),
        ("new.txt", "past the first 2 files"),
    ]
