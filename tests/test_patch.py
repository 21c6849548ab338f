"""Applying an agent's diffs, string edits and whole-file writes: what applies, what is refused.

Every refusal test pins the important phrase of the message and checks that every file in
the workspace (and the reference file outside it) is byte-identical afterwards.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from sandbox.patch import (
    DIFF_TO_FILE_RATIO,
    MAX_FILE_BYTES,
    MAX_HUNKS,
    PatchRejected,
    apply_patch,
    edit_file,
    write_file,
)
from sandbox.workspace import PathPolicy, Workspace

TRAIN_PY = '''\
"""Train a small GPT for a fixed time budget and save it for the evaluator."""

import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# Hyperparameters: the research surface.
DEPTH = 4
WIDTH = 256
HEADS = 4
LEARNING_RATE = 3e-4
WEIGHT_DECAY = 0.1
BATCH_SIZE = 16
BUDGET_SECONDS = float(os.environ.get("AR_BUDGET_SECONDS", "60"))


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        x = x + self.attn(self.norm1(x), self.norm1(x), self.norm1(x), need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return x


class GPT(nn.Module):
    def __init__(self, vocab, depth, width, heads):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
        self.head = nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def train(model, batches):
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    start = time.time()
    step = 0
    while time.time() - start < BUDGET_SECONDS:
        x, y = next(batches)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
    return step


if __name__ == "__main__":
    print("training for", BUDGET_SECONDS, "seconds")
'''
LINES = TRAIN_PY.splitlines()
assert 60 <= len(LINES) <= 70


def line_number(text: str) -> int:
    """1-based number of the fixture line equal to text."""
    return LINES.index(text) + 1


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    reference_dir = tmp_path / "trainer"
    reference_dir.mkdir()
    (reference_dir / "evaluate.py").write_text("print('trusted evaluator')\n")
    policy = PathPolicy(
        editable=("train.py",), reference={"evaluate.py": reference_dir / "evaluate.py"}
    )
    return Workspace.create(tmp_path / "ws", policy, {"train.py": TRAIN_PY.encode()})


def everything(workspace: Workspace) -> dict[str, bytes]:
    """Every file in and around the workspace, by path: to prove nothing changed."""
    base = workspace.root.parent
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def refused(workspace: Workspace, diff: str, phrase: str) -> str:
    """Assert apply_patch refuses diff with phrase in the message and changes no file."""
    before = everything(workspace)
    with pytest.raises(PatchRejected) as refusal:
        apply_patch(workspace, diff)
    assert phrase in str(refusal.value)
    assert everything(workspace) == before
    return str(refusal.value)


LR_DIFF = """\
--- a/train.py
+++ b/train.py
@@ -12,5 +12,5 @@
 WIDTH = 256
 HEADS = 4
-LEARNING_RATE = 3e-4
+LEARNING_RATE = 6e-4
 WEIGHT_DECAY = 0.1
 BATCH_SIZE = 16
"""


# -- diffs that apply ------------------------------------------------------------------------


def test_correct_diff_applies_with_git(workspace: Workspace) -> None:
    assert LR_DIFF.splitlines()[2] == f"@@ -{line_number('WIDTH = 256')},5 +12,5 @@"
    result = apply_patch(workspace, LR_DIFF)
    assert result.method == "git-apply"
    assert result.files == ("train.py",)
    assert (result.hunks, result.lines_added, result.lines_removed) == (1, 1, 1)
    assert workspace.read_text("train.py") == TRAIN_PY.replace("3e-4", "6e-4", 1)


def test_diff_with_git_headers_and_no_prefixes_applies(workspace: Workspace) -> None:
    diff = "diff --git a/train.py b/train.py\nindex 83db48f..bf269f4 100644\n" + LR_DIFF
    apply_patch(workspace, diff)
    assert "LEARNING_RATE = 6e-4" in workspace.read_text("train.py")
    no_prefix = LR_DIFF.replace("a/train.py", "train.py").replace("b/train.py", "train.py")
    apply_patch(workspace, no_prefix.replace("6e-4", "1e-3").replace("3e-4", "6e-4"))
    assert "LEARNING_RATE = 1e-3" in workspace.read_text("train.py")


def test_wrong_hunk_counts_apply(workspace: Workspace) -> None:
    diff = LR_DIFF.replace("@@ -12,5 +12,5 @@", "@@ -12,9 +12,2 @@")
    result = apply_patch(workspace, diff)
    assert "LEARNING_RATE = 6e-4" in workspace.read_text("train.py")
    assert result.lines_added == 1


def test_blank_context_line_without_its_space_applies(workspace: Workspace) -> None:
    start = line_number('BUDGET_SECONDS = float(os.environ.get("AR_BUDGET_SECONDS", "60"))')
    diff = (
        f"--- a/train.py\n+++ b/train.py\n@@ -{start},4 +{start},4 @@\n"
        ' BUDGET_SECONDS = float(os.environ.get("AR_BUDGET_SECONDS", "60"))\n'
        "\n"  # the blank lines lost their leading space, as chat clients do
        "\n"
        "-class Block(nn.Module):\n"
        "+class TransformerBlock(nn.Module):\n"
    )
    apply_patch(workspace, diff)
    assert "class TransformerBlock(nn.Module):" in workspace.read_text("train.py")


def test_hunk_shifted_by_ten_lines_applies(workspace: Workspace) -> None:
    result = apply_patch(workspace, LR_DIFF.replace("@@ -12,5 +12,5 @@", "@@ -22,5 +22,5 @@"))
    assert "LEARNING_RATE = 6e-4" in workspace.read_text("train.py")
    assert result.files == ("train.py",)


def test_hunk_anchored_at_line_one_after_insertions_applies_by_exact_context(
    workspace: Workspace,
) -> None:
    # The agent wrote this against the original file, but two lines now sit above it:
    # git cannot move a hunk anchored at @@ -1, the exact-context applier can.
    write_file(workspace, "train.py", "# experiment 7\n# lr sweep\n" + TRAIN_PY)
    diff = (
        "--- a/train.py\n+++ b/train.py\n@@ -1,3 +1,3 @@\n"
        f" {LINES[0]}\n \n-import os\n+import os  # environment\n"
    )
    result = apply_patch(workspace, diff)
    assert result.method == "exact-context"
    text = workspace.read_text("train.py")
    assert text.startswith("# experiment 7\n# lr sweep\n")
    assert "import os  # environment\n" in text


def test_multi_hunk_diff_applies(workspace: Workspace) -> None:
    step = line_number("        step += 1")
    diff = LR_DIFF + (
        f"@@ -{step - 1},3 +{step - 1},3 @@\n"
        "         optimizer.step()\n"
        "-        step += 1\n"
        "+        step += 2\n"
        "     return step\n"
    )
    result = apply_patch(workspace, diff)
    assert result.hunks == 2
    text = workspace.read_text("train.py")
    assert "LEARNING_RATE = 6e-4" in text and "step += 2" in text


def test_no_newline_at_end_of_file_marker_applies(workspace: Workspace) -> None:
    write_file(workspace, "train.py", "a = 1\nb = 2")
    diff = (
        "--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n"
        "\\ No newline at end of file\n+b = 3\n\\ No newline at end of file\n"
    )
    apply_patch(workspace, diff)
    assert workspace.read_bytes("train.py") == b"a = 1\nb = 3"


# -- diffs that are refused ------------------------------------------------------------------


def test_missing_context_is_refused_naming_the_hunk_and_showing_lines(
    workspace: Workspace,
) -> None:
    diff = LR_DIFF.replace(" HEADS = 4\n", " HEADS = 8\n")
    message = refused(workspace, diff, "hunk 1 of 1 (@@ -12,5 +12,5 @@) for 'train.py'")
    assert "does not match the file" in message
    assert "Expected" in message and "HEADS = 8" in message
    heads_line = line_number("HEADS = 4")
    assert f"{heads_line:>6} | HEADS = 4" in message  # the closest actual lines, numbered


def test_multi_hunk_where_hunk_three_fails_applies_nothing(workspace: Workspace) -> None:
    step = line_number("        step += 1")
    depth = line_number("DEPTH = 4")
    diff = (
        "--- a/train.py\n+++ b/train.py\n"
        f"@@ -{depth},2 +{depth},2 @@\n-DEPTH = 4\n+DEPTH = 6\n WIDTH = 256\n"
        f"@@ -{depth + 3},2 +{depth + 3},2 @@\n-LEARNING_RATE = 3e-4\n+LEARNING_RATE = 6e-4\n"
        " WEIGHT_DECAY = 0.1\n"
        f"@@ -{step},2 +{step},2 @@\n-        step += 3\n+        step += 2\n     return step\n"
    )
    message = refused(workspace, diff, f"hunk 3 of 3 (@@ -{step},2 +{step},2 @@)")
    assert "step += 3" in message
    assert f"{step:>6} |         step += 1" in message


def test_ambiguous_context_is_refused_with_line_numbers(workspace: Workspace) -> None:
    diff = "--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-        super().__init__()\n+        super().__init__()  # base\n"
    message = refused(workspace, diff, "matches 2 places")
    first, second = (i + 1 for i, line in enumerate(LINES) if "super().__init__()" in line)
    assert f"lines {first}, {second}" in message


def test_diff_touching_a_reference_file_is_refused(workspace: Workspace) -> None:
    diff = LR_DIFF.replace("train.py", "evaluate.py")
    message = refused(workspace, diff, "'evaluate.py' is read-only")
    assert "train.py" in message


def test_diff_touching_an_unknown_file_is_refused(workspace: Workspace) -> None:
    refused(workspace, LR_DIFF.replace("train.py", "model.py"), "'model.py' is not a file of")


def test_path_traversal_is_refused(workspace: Workspace) -> None:
    diff = LR_DIFF.replace("a/train.py", "a/../trainer/evaluate.py").replace(
        "b/train.py", "b/../trainer/evaluate.py"
    )
    refused(workspace, diff, "paths may not contain '..'")


def test_absolute_path_is_refused(workspace: Workspace) -> None:
    diff = LR_DIFF.replace("a/train.py", "/etc/passwd").replace("b/train.py", "/etc/passwd")
    refused(workspace, diff, "absolute paths are not allowed")


def test_symlink_in_workspace_is_refused(workspace: Workspace) -> None:
    outside = workspace.root.parent / "trainer" / "evaluate.py"
    train = workspace.root / "train.py"
    train.unlink()
    train.symlink_to(outside)
    refused(workspace, LR_DIFF, "symbolic link")
    assert outside.read_text() == "print('trusted evaluator')\n"


def test_hardlinked_workspace_file_is_refused(workspace: Workspace) -> None:
    os.link(workspace.root / "train.py", workspace.root.parent / "outside-link.py")
    refused(workspace, LR_DIFF, "hard links")


def test_git_binary_patch_is_refused(workspace: Workspace) -> None:
    diff = (
        "diff --git a/train.py b/train.py\nindex 1..2 100644\nGIT binary patch\n"
        "literal 5\nMcmZ?wbaWM)000F50ssI2\n\nliteral 0\nHcmV?d00001\n"
    )
    refused(workspace, diff, "binary patches are not supported")


def test_binary_files_differ_is_refused(workspace: Workspace) -> None:
    diff = "diff --git a/train.py b/train.py\nBinary files a/train.py and b/train.py differ\n"
    refused(workspace, diff, "binary files are not supported")


def test_creating_a_file_from_dev_null_is_refused(workspace: Workspace) -> None:
    diff = "--- /dev/null\n+++ b/train.py\n@@ -0,0 +1 @@\n+print('new')\n"
    refused(workspace, diff, "creating files ('--- /dev/null') is not supported")


def test_deleting_a_file_to_dev_null_is_refused(workspace: Workspace) -> None:
    diff = "--- a/train.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-" + LINES[0] + "\n-\n"
    refused(workspace, diff, "deleting files ('+++ /dev/null') is not supported")


def test_git_style_delete_is_refused(workspace: Workspace) -> None:
    diff = "diff --git a/train.py b/train.py\ndeleted file mode 100644\n" + LR_DIFF
    refused(workspace, diff, "deleting files is not supported")


def test_rename_is_refused(workspace: Workspace) -> None:
    diff = (
        "diff --git a/train.py b/model.py\nsimilarity index 100%\n"
        "rename from train.py\nrename to model.py\n"
    )
    refused(workspace, diff, "renaming files is not supported")


def test_different_old_and_new_paths_are_refused(workspace: Workspace) -> None:
    refused(workspace, LR_DIFF.replace("b/train.py", "b/model.py"), "renames are not supported")


def test_mode_change_is_refused(workspace: Workspace) -> None:
    diff = "diff --git a/train.py b/train.py\nold mode 100644\nnew mode 100755\n"
    refused(workspace, diff, "changing file modes is not supported")


@pytest.mark.parametrize("diff", ["", "   \n\t\n"])
def test_empty_diff_is_refused(workspace: Workspace, diff: str) -> None:
    message = refused(workspace, diff, "The diff is empty")
    assert "@@" in message and "---" in message


def test_prose_without_hunks_is_refused(workspace: Workspace) -> None:
    refused(workspace, "I changed the learning rate to 6e-4.\n", "no '---'/'+++' file headers")


def test_oversized_diff_is_refused(workspace: Workspace) -> None:
    limit = DIFF_TO_FILE_RATIO * MAX_FILE_BYTES
    message = refused(workspace, LR_DIFF + "+x\n" * (limit // 3), f"the limit is {limit}")
    assert "use write_file" in message


def test_too_many_hunks_are_refused(workspace: Workspace) -> None:
    depth = line_number("DEPTH = 4")
    hunk = f"@@ -{depth},1 +{depth},1 @@\n-DEPTH = 4\n+DEPTH = 6\n"
    diff = "--- a/train.py\n+++ b/train.py\n" + hunk * (MAX_HUNKS + 1)
    refused(workspace, diff, f"at most {MAX_HUNKS} are accepted")


def test_diff_growing_the_file_past_the_cap_is_refused(workspace: Workspace) -> None:
    padding = "".join(f"+PAD_{i} = {i}\n" for i in range(MAX_FILE_BYTES // 12))
    diff = LR_DIFF.replace("+LEARNING_RATE = 6e-4\n", "+LEARNING_RATE = 6e-4\n" + padding)
    message = refused(workspace, diff, f"at most {MAX_FILE_BYTES} bytes")
    assert "Nothing was changed" in message


def test_context_repeated_everywhere_is_refused_quickly(workspace: Workspace) -> None:
    """A hunk whose lines occur at thousands of places (git refuses it: a hunk at line 1
    without leading context must match the file's start): the message lists a few, fast."""
    write_file(workspace, "train.py", "start = 0\n" + "x = 1\n" * 8000)
    diff = "--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n-x = 1\n+x = 2\n x = 1\n"
    started = time.process_time()
    message = refused(workspace, diff, "matches more than 20 places")
    assert time.process_time() - started < 2.0
    assert "lines 2, 3, 4" in message


def test_mismatching_hunk_report_quotes_long_lines_cut_short(workspace: Workspace) -> None:
    long_line = "LONG = '" + "y" * 5000 + "'"
    write_file(workspace, "train.py", TRAIN_PY.replace("HEADS = 4", long_line))
    diff = LR_DIFF.replace(" HEADS = 4\n", " " + long_line[:-1] + "z'\n")
    message = refused(workspace, diff, "does not match the file")
    assert "more characters)" in message and len(message) < 4000


def test_diff_that_changes_nothing_is_refused(workspace: Workspace) -> None:
    diff = LR_DIFF.replace("+LEARNING_RATE = 6e-4", "+LEARNING_RATE = 3e-4")
    refused(workspace, diff, "changes nothing")


def test_malformed_hunk_header_is_refused(workspace: Workspace) -> None:
    refused(workspace, LR_DIFF.replace("@@ -12,5 +12,5 @@", "@@ line 12 @@"), "Malformed hunk")


# -- edit_file and write_file ----------------------------------------------------------------


def test_edit_file_replaces_the_one_occurrence(workspace: Workspace) -> None:
    result = edit_file(workspace, "train.py", "DEPTH = 4", "DEPTH = 6")
    assert result.method == "replace-string"
    assert (result.lines_added, result.lines_removed) == (1, 1)
    assert workspace.read_text("train.py") == TRAIN_PY.replace("DEPTH = 4", "DEPTH = 6")


def edit_refused(
    workspace: Workspace, old: str, new: str, phrase: str, name: str = "train.py"
) -> str:
    before = everything(workspace)
    with pytest.raises(PatchRejected) as refusal:
        edit_file(workspace, name, old, new)
    assert phrase in str(refusal.value)
    assert everything(workspace) == before
    return str(refusal.value)


def test_edit_file_with_no_occurrence_shows_the_closest_line(workspace: Workspace) -> None:
    message = edit_refused(workspace, "LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-3", "not found")
    assert f"Closest line {line_number('LEARNING_RATE = 3e-4')}: 'LEARNING_RATE = 3e-4'" in message


def test_edit_file_with_no_occurrence_and_nothing_similar_says_so(workspace: Workspace) -> None:
    message = edit_refused(workspace, "§§§§§§§§", "x", "not found")
    assert "No line of the file resembles it" in message


def test_edit_file_refuses_old_or_new_larger_than_a_file_may_be(workspace: Workspace) -> None:
    huge = "z" * (MAX_FILE_BYTES + 1)
    edit_refused(workspace, huge, "x", "cannot occur in 'train.py'")
    edit_refused(workspace, "DEPTH = 4", huge, f"at most {MAX_FILE_BYTES} bytes")


def test_edit_file_growing_the_file_past_the_cap_is_refused(workspace: Workspace) -> None:
    grown = "DEPTH = 4\n" + "# pad\n" * (MAX_FILE_BYTES // 6)
    message = edit_refused(workspace, "DEPTH = 4\n", grown, f"at most {MAX_FILE_BYTES} bytes")
    assert "Nothing was changed" in message


def test_edit_file_with_many_occurrences_counts_only_what_it_lists(workspace: Workspace) -> None:
    write_file(workspace, "train.py", "a = 1\n" * 5000)
    message = edit_refused(workspace, "a = 1\n", "a = 2\n", "more than 20 times")
    assert "at lines 1, 2, 3" in message


def test_edit_file_counts_the_changed_region(workspace: Workspace) -> None:
    result = edit_file(
        workspace, "train.py", "DEPTH = 4\nWIDTH = 256\n", "DEPTH = 4\nWIDTH = 512\n"
    )
    assert (result.hunks, result.lines_added, result.lines_removed) == (1, 1, 1)


def test_edit_file_with_two_occurrences_lists_their_lines(workspace: Workspace) -> None:
    first, second = (i + 1 for i, line in enumerate(LINES) if "super().__init__()" in line)
    message = edit_refused(workspace, "super().__init__()", "super().__init__()  # base", "2 times")
    assert f"at lines {first}, {second}" in message
    assert "more surrounding lines" in message


def test_edit_file_refuses_empty_old_and_identical_new(workspace: Workspace) -> None:
    edit_refused(workspace, "", "x", "old is empty")
    edit_refused(workspace, "DEPTH = 4", "DEPTH = 4", "identical")


def test_edit_file_refuses_a_reference_file(workspace: Workspace) -> None:
    edit_refused(workspace, "trusted", "bent", "is read-only", name="evaluate.py")


def test_write_file_replaces_the_whole_file(workspace: Workspace) -> None:
    result = write_file(workspace, "train.py", TRAIN_PY + "# done\n")
    assert result.method == "whole-file"
    assert (result.lines_added, result.lines_removed) == (1, 0)
    assert workspace.read_text("train.py").endswith("# done\n")


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ("x = 1\x00\n", "NUL byte"),
        ("x = '\udc80'\n", "not valid UTF-8"),
        ("x" * (MAX_FILE_BYTES + 1), f"at most {MAX_FILE_BYTES} bytes"),
        ("é" * (MAX_FILE_BYTES // 2 + 1), f"at most {MAX_FILE_BYTES} bytes"),
        (TRAIN_PY, "identical"),
    ],
)
def test_write_file_refusals(workspace: Workspace, content: str, phrase: str) -> None:
    before = everything(workspace)
    with pytest.raises(PatchRejected, match=re.escape(phrase)):
        write_file(workspace, "train.py", content)
    assert everything(workspace) == before


def test_write_file_refuses_traversal(workspace: Workspace) -> None:
    before = everything(workspace)
    with pytest.raises(PatchRejected, match=re.escape("paths may not contain '..'")):
        write_file(workspace, "../trainer/evaluate.py", "print('bent')\n")
    assert everything(workspace) == before
