"""The workspace's files, confined to it: paths, links, special files and the models (fast tier:
a plain directory stands in for the mounted filesystem)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.errors import InvalidInput, NotFound
from skills.sandbox.models import CreateInput as SandboxCreateInput
from skills.workspace import files
from skills.workspace import models as m


@pytest.fixture
def root(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return workspace


@pytest.mark.parametrize(
    ("path", "parts"),
    [("a/b.txt", ("a", "b.txt")), ("/a/b.txt", ("a", "b.txt")), ("./a//b.txt", ("a", "b.txt")), ("/", ())],
)
def test_a_path_is_read_from_the_workspaces_root(path: str, parts: tuple[str, ...]) -> None:
    assert files.parts_of(path) == parts


@pytest.mark.parametrize("path", ["../etc/passwd", "a/../../x", "/..", "a/..", "a\0b", "/".join(["d"] * 65)])
def test_a_path_that_could_leave_the_workspace_is_refused(path: str) -> None:
    with pytest.raises(InvalidInput):
        files.parts_of(path)


def test_written_files_read_back_and_list_by_name(root: Path) -> None:
    assert files.write_file(root, "results/b.txt", b"two") == "/results/b.txt"
    files.write_file(root, "/results/a.bin", b"\0\1")
    assert files.read_file(root, "results/b.txt", 10) == (b"two", 3)
    assert files.read_file(root, "results/b.txt", 2) == (b"tw", 3)
    entries, truncated = files.list_dir(root, "/results", 10)
    assert [(e.name, e.path, e.type, e.size) for e in entries] == [
        ("a.bin", "/results/a.bin", "file", 2),
        ("b.txt", "/results/b.txt", "file", 3),
    ]
    assert not truncated
    assert files.list_dir(root, "/results", 1) == (entries[:1], True)
    assert (root / "results" / "b.txt").stat().st_uid == files.SANDBOX_UID, "the sandbox user may change it"
    assert not [p for p in (root / "results").iterdir() if p.name.endswith(".part")], "no temporary file is left"


def test_no_symbolic_link_is_followed_out_of_the_workspace(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host's")
    (root / "out").symlink_to(secret)
    (root / "dir").symlink_to(tmp_path)
    for path in ("out", "dir/secret"):
        with pytest.raises(InvalidInput, match="symbolic link"):
            files.read_file(root, path, 100)
    with pytest.raises(InvalidInput, match="symbolic link"):
        files.write_file(root, "dir/planted", b"x")
    assert not (tmp_path / "planted").exists()
    # Writing over a link replaces the link itself, never what it points to.
    files.write_file(root, "out", b"mine")
    assert secret.read_text() == "host's" and not (root / "out").is_symlink()
    entries, _ = files.list_dir(root, "/", 10)
    assert {e.name: e.type for e in entries} == {"dir": "link", "out": "file"}


def test_special_files_and_missing_ones_have_clear_errors(root: Path) -> None:
    os.mkfifo(root / "pipe")
    with pytest.raises(InvalidInput, match="not a regular file"):
        files.read_file(root, "pipe", 10)  # and it did not block
    with pytest.raises(NotFound, match="workspace_list_files"):
        files.read_file(root, "missing.txt", 10)
    (root / "d").mkdir()
    with pytest.raises(InvalidInput, match="is a directory"):
        files.read_file(root, "d", 10)
    with pytest.raises(InvalidInput, match="name a file"):
        files.write_file(root, "/", b"x")


def test_the_models_bound_what_crosses_the_wire() -> None:
    with pytest.raises(ValidationError):
        m.CreateInput(name="bad name", size_mib=64)
    with pytest.raises(ValidationError):
        m.CreateInput(name="ok", size_mib=16)
    with pytest.raises(ValidationError):
        m.ReadFileInput(workspace_id="ws_1", path="a", max_bytes=11 << 20)
    assert m.CreateInput(name="shared").size_mib == 1024


@pytest.mark.parametrize("path", ["/work/x", "/mnt", "/mnt/../etc", "/mnt/a/./b", "mnt/x", "/mnt/a b"])
def test_a_workspace_mounts_only_under_mnt(path: str) -> None:
    with pytest.raises(ValidationError):
        SandboxCreateInput(workspaces=[{"workspace_id": "ws_1", "path": path}])


def test_two_workspaces_cannot_share_a_mount_path() -> None:
    with pytest.raises(ValidationError, match="a path of its own"):
        SandboxCreateInput(
            workspaces=[{"workspace_id": "ws_1", "path": "/mnt/a"}, {"workspace_id": "ws_2", "path": "/mnt/a/"}]
        )
    made = SandboxCreateInput(workspaces=[{"workspace_id": "ws_1", "path": "/mnt/a/b", "read_only": True}])
    assert made.workspaces[0].read_only
