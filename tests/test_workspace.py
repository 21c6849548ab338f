"""The workspace's path policy and file access: every bad name refused before any effect."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from sandbox.target import load_target
from sandbox.workspace import (
    MAX_EDITABLE_FILE_BYTES,
    FileEntry,
    FileTooLarge,
    PathPolicy,
    PathRefused,
    Workspace,
)

TRAIN_PY = b'"""Baseline trainer."""\n\nLEARNING_RATE = 3e-4\nprint(LEARNING_RATE)\n'
EVALUATE_PY = b"print('trusted evaluator')\n"
PROGRAM_MD = b"# Program\n\nMake metric_value go down.\n"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    reference_dir = tmp_path / "trainer"
    reference_dir.mkdir()
    (reference_dir / "evaluate.py").write_bytes(EVALUATE_PY)
    (reference_dir / "program.md").write_bytes(PROGRAM_MD)
    policy = PathPolicy(
        editable=("train.py",),
        reference={
            "program.md": reference_dir / "program.md",
            "evaluate.py": reference_dir / "evaluate.py",
        },
    )
    return Workspace.create(tmp_path / "ws", policy, {"train.py": TRAIN_PY})


def everything(workspace: Workspace) -> dict[str, bytes]:
    """Every regular file in and around the workspace, by path: to prove nothing changed."""
    base = workspace.root.parent
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def assert_refused(workspace: Workspace, name: str, phrase: str) -> str:
    """Every way of touching name is refused with phrase, and no file changes."""
    before = everything(workspace)
    messages = []
    for attempt in (
        lambda: workspace.resolve_editable(name),
        lambda: workspace.resolve_readable(name),
        lambda: workspace.read_text(name),
        lambda: workspace.replace_files({name: b"print('bent')\n"}),
    ):
        with pytest.raises(PathRefused) as refusal:
            attempt()
        messages.append(str(refusal.value))
        assert phrase in str(refusal.value)
    assert everything(workspace) == before
    return messages[0]


# -- creating and reading ------------------------------------------------------------------


def test_create_writes_files_once_and_is_idempotent(workspace: Workspace) -> None:
    assert workspace.read_bytes("train.py") == TRAIN_PY
    workspace.replace_files({"train.py": b"edited = True\n"})
    again = Workspace.create(workspace.root, workspace.policy, {"train.py": TRAIN_PY})
    assert again.read_bytes("train.py") == b"edited = True\n"
    assert sorted(os.listdir(workspace.root)) == ["train.py"]
    assert [p.name for p in workspace.root.parent.iterdir() if p.name.startswith(".")] == []


def test_create_refuses_a_non_editable_file(tmp_path: Path) -> None:
    policy = PathPolicy(editable=("train.py",), reference={})
    with pytest.raises(
        PathRefused, match=re.escape("'evaluate.py' is not a file of this workspace")
    ):
        Workspace.create(tmp_path / "ws", policy, {"evaluate.py": b""})
    assert not (tmp_path / "ws").exists()


def test_list_files_shows_editable_then_readable(workspace: Workspace) -> None:
    assert workspace.list_files() == [
        FileEntry("train.py", "editable", len(TRAIN_PY), 4),
        FileEntry("program.md", "readable", len(PROGRAM_MD), 3),
        FileEntry("evaluate.py", "readable", len(EVALUATE_PY), 1),
    ]


def test_reference_files_are_read_from_where_they_live(workspace: Workspace) -> None:
    assert workspace.read_text("evaluate.py") == EVALUATE_PY.decode()
    assert workspace.resolve_readable("evaluate.py") == workspace.policy.reference["evaluate.py"]
    assert not (workspace.root / "evaluate.py").exists()


def test_dot_slash_name_is_accepted(workspace: Workspace) -> None:
    assert workspace.resolve_editable("./train.py") == workspace.root / "train.py"
    assert workspace.read_bytes("./train.py") == TRAIN_PY


def test_snapshot_and_code_hash(workspace: Workspace) -> None:
    assert workspace.snapshot() == {"train.py": TRAIN_PY}
    first = workspace.code_hash()
    assert first == workspace.code_hash() and len(first) == 64
    workspace.replace_files({"train.py": TRAIN_PY + b"# changed\n"})
    assert workspace.code_hash() != first
    workspace.replace_files({"train.py": TRAIN_PY})
    assert workspace.code_hash() == first


def test_policy_from_the_shipped_target() -> None:
    target = load_target()
    policy = PathPolicy.from_target(target)
    assert policy.editable == ("train.py",)
    assert set(policy.reference) == {"program.md", "prepare.py", "evaluate.py"}


# -- refused names -------------------------------------------------------------------------


def test_empty_name_is_refused(workspace: Workspace) -> None:
    message = assert_refused(workspace, "", "An empty file name is refused")
    assert "list_files()" in message


def test_nul_byte_is_refused(workspace: Workspace) -> None:
    assert_refused(workspace, "train.py\x00.txt", "contains a NUL byte")


def test_absolute_path_is_refused(workspace: Workspace) -> None:
    assert_refused(workspace, "/etc/passwd", "absolute paths are not allowed")


def test_parent_directory_is_refused(workspace: Workspace) -> None:
    message = assert_refused(workspace, "../trainer/evaluate.py", "paths may not contain '..'")
    assert message == (
        "'../trainer/evaluate.py' is refused: paths may not contain '..'. "
        "Use a name from list_files(), e.g. 'train.py'."
    )


def test_backslash_is_refused(workspace: Workspace) -> None:
    assert_refused(workspace, "..\\trainer\\evaluate.py", "backslashes are not allowed")


def test_long_names_are_refused(workspace: Workspace) -> None:
    assert_refused(workspace, "a" * 256, "a path component is too long")
    assert_refused(workspace, "/".join(["a" * 200] * 6), "the name is too long")


def test_subfolders_are_refused(workspace: Workspace) -> None:
    assert_refused(workspace, "a/train.py", "only plain file names are allowed")


def test_unknown_name_lists_the_allowed_names(workspace: Workspace) -> None:
    message = assert_refused(workspace, "model.py", "'model.py' is not a file of this workspace")
    assert "Editable: train.py. Read-only: program.md, evaluate.py." in message


def test_reference_file_is_not_editable(workspace: Workspace) -> None:
    before = everything(workspace)
    with pytest.raises(PathRefused, match=re.escape("'evaluate.py' is read-only")):
        workspace.replace_files({"evaluate.py": b"print('bent')\n"})
    with pytest.raises(PathRefused, match=re.escape("Only these files can be edited: train.py")):
        workspace.resolve_editable("evaluate.py")
    assert everything(workspace) == before


def test_symlink_in_workspace_is_refused(workspace: Workspace) -> None:
    train = workspace.root / "train.py"
    train.unlink()
    train.symlink_to(workspace.root.parent / "trainer" / "evaluate.py")
    assert_refused(workspace, "train.py", "it is a symbolic link")
    with pytest.raises(PathRefused, match=re.escape("symbolic link")):
        workspace.snapshot()
    assert (workspace.root.parent / "trainer" / "evaluate.py").read_bytes() == EVALUATE_PY


def test_dangling_symlink_in_workspace_is_refused(workspace: Workspace) -> None:
    train = workspace.root / "train.py"
    train.unlink()
    train.symlink_to("/nonexistent/train.py")
    assert_refused(workspace, "train.py", "it is a symbolic link")
    assert not Path("/nonexistent/train.py").exists()


def test_hardlinked_file_is_refused(workspace: Workspace) -> None:
    os.link(workspace.root / "train.py", workspace.root.parent / "secret-copy.py")
    assert_refused(workspace, "train.py", "hard links")


def test_non_regular_file_is_refused(workspace: Workspace) -> None:
    train = workspace.root / "train.py"
    train.unlink()
    os.mkfifo(train)
    assert_refused(workspace, "train.py", "not a regular file")


# -- replace_files is all-or-nothing -------------------------------------------------------


@pytest.fixture
def two_file_workspace(tmp_path: Path) -> Workspace:
    policy = PathPolicy(editable=("train.py", "model.py"), reference={})
    return Workspace.create(
        tmp_path / "ws", policy, {"train.py": b"train = 1\n", "model.py": b"model = 1\n"}
    )


def test_replace_files_writes_every_file(two_file_workspace: Workspace) -> None:
    two_file_workspace.replace_files({"train.py": b"train = 2\n", "model.py": b"model = 2\n"})
    assert two_file_workspace.snapshot() == {"train.py": b"train = 2\n", "model.py": b"model = 2\n"}
    assert sorted(os.listdir(two_file_workspace.root)) == ["model.py", "train.py"]


def test_replace_files_refuses_a_directory_target_before_writing(
    two_file_workspace: Workspace,
) -> None:
    root = two_file_workspace.root
    (root / "model.py").unlink()
    (root / "model.py").mkdir()
    with pytest.raises(PathRefused, match=r"'model.py' is refused: .* not a regular file"):
        two_file_workspace.replace_files({"train.py": b"train = 2\n", "model.py": b"m = 2\n"})
    assert (root / "train.py").read_bytes() == b"train = 1\n"
    assert sorted(os.listdir(root)) == ["model.py", "train.py"]


class _DirectoryAppearsMidway(Workspace):
    """A workspace where model.py turns into a directory after train.py was replaced.

    This is the race the up-front checks cannot see: os.replace onto a directory fails
    for real, and replace_files must put train.py back.
    """

    def _install(self, temp: Path, target: Path) -> None:
        if target.name == "model.py":
            target.unlink()
            target.mkdir()
        super()._install(temp, target)


def test_replace_files_restores_originals_when_a_rename_fails(
    two_file_workspace: Workspace,
) -> None:
    racing = _DirectoryAppearsMidway(two_file_workspace.root, two_file_workspace.policy)
    with pytest.raises(OSError):
        racing.replace_files({"train.py": b"train = 2\n", "model.py": b"model = 2\n"})
    root = two_file_workspace.root
    assert (root / "train.py").read_bytes() == b"train = 1\n"
    assert sorted(os.listdir(root)) == ["model.py", "train.py"]  # no temporary files left


def test_replace_files_refuses_a_file_over_the_size_cap(two_file_workspace: Workspace) -> None:
    limit = two_file_workspace.policy.max_file_bytes
    assert limit == MAX_EDITABLE_FILE_BYTES
    before = two_file_workspace.snapshot()
    with pytest.raises(FileTooLarge, match=rf"at most {limit} bytes .* Nothing was changed"):
        two_file_workspace.replace_files(
            {"train.py": b"train = 2\n", "model.py": b"#" * (limit + 1)}
        )
    assert two_file_workspace.snapshot() == before
    two_file_workspace.replace_files({"model.py": b"#" * limit})  # exactly the cap is fine
    assert len(two_file_workspace.read_bytes("model.py")) == limit


def test_size_cap_is_a_policy_setting(tmp_path: Path) -> None:
    policy = PathPolicy(editable=("train.py",), reference={}, max_file_bytes=10)
    workspace = Workspace.create(tmp_path / "ws", policy, {"train.py": b"x = 1\n"})
    with pytest.raises(FileTooLarge, match="at most 10 bytes"):
        workspace.replace_files({"train.py": b"x = 100000\n"})
    assert workspace.read_bytes("train.py") == b"x = 1\n"
