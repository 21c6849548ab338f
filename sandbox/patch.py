"""Validate and apply an agent's changes (unified diffs, string edits, whole files) atomically.

Everything is checked before anything is written: file names against the workspace's policy,
and the diff's shape (no creates, deletes, renames, copies, mode changes or binary entries).
Hunks are applied to a private copy of the affected files, first with `git apply --recount`,
then, if git refuses, with an exact-context applier that finds each hunk's old lines anywhere
in the file. Only when every hunk applied are the results installed with
`Workspace.replace_files`; on any refusal every workspace file stays byte-identical.

Every step is bounded, whatever an agent sends: a request's size is checked before any work
(a diff at most four times the editable-file cap, old/new strings at most the cap, at most
`MAX_HUNKS` hunks), every result against the workspace's cap on editable files, `git apply`
runs under a timeout, occurrences are counted only as far as a message lists them, and the
"closest line" hints use linear similarity measures with capped candidates (no difflib:
its cost grows with the cube of adversarial inputs). Lines quoted back in messages are cut
short.
"""

from __future__ import annotations

import bisect
import itertools
import os
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import unidiff
from unidiff.constants import LINE_TYPE_NO_NEWLINE

from sandbox.workspace import MAX_EDITABLE_FILE_BYTES, PathRefused, Workspace

# The default cap on an editable file (each workspace's policy holds the one that applies).
MAX_FILE_BYTES = MAX_EDITABLE_FILE_BYTES
# A diff may be this many times the file cap: enough to rewrite every line of a full file
# (each line is sent twice, '-' and '+', with a one-character prefix).
DIFF_TO_FILE_RATIO = 4
MAX_DIFF_BYTES = DIFF_TO_FILE_RATIO * MAX_FILE_BYTES
MAX_HUNKS = 1000
# git apply takes milliseconds on any diff within the caps; past this it is killed and the
# exact-context applier (bounded) decides.
GIT_TIMEOUT_SECONDS = 10
_SHOWN_LINES = 12
_SHOWN_LINE_CHARS = 200  # a line quoted in a message is cut to this many characters
_LISTED_OCCURRENCES = 20  # occurrences named in a message; counting stops just past this
_HINT_CHARS = 200  # characters of a line compared by the "closest line" similarity
_HINT_CUTOFF = 0.3  # below this similarity no line is offered as the closest
_REGION_ANCHOR_LINES = 50  # hunk lines used to propose where a mismatching hunk was meant
_REGION_ANCHOR_POSITIONS = 20  # positions per anchor line
_REGION_COMPARED_LINES = 100  # lines of a candidate window compared with the hunk

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")
_DIFF_FORMAT_HINT = (
    "Send a unified diff: '--- a/train.py' and '+++ b/train.py' headers, then @@ hunks "
    "whose lines start with ' ' (context), '-' (removed) or '+' (added)."
)
# Extended git headers we refuse, with what to do instead.
_REFUSED_HEADERS = (
    ("GIT binary patch", "binary patches are not supported; only text edits are"),
    ("Binary files ", "binary files are not supported; only text edits are"),
    ("rename from", "renaming files is not supported; edit the file in place"),
    ("rename to", "renaming files is not supported; edit the file in place"),
    ("copy from", "copying files is not supported; edit the existing file"),
    ("copy to", "copying files is not supported; edit the existing file"),
    ("old mode", "changing file modes is not supported; send only content changes"),
    ("new mode", "changing file modes is not supported; send only content changes"),
    ("new file mode", "creating files is not supported; edit an existing file"),
    ("deleted file mode", "deleting files is not supported; edit the file instead"),
)


class PatchRejected(ValueError):
    """A change an agent sent was refused; the message starts with what to do about it.
    `quoted`: the part of the message that quotes the workspace's files (the server labels it
    when the workspace holds another agent's code)."""

    def __init__(self, message: str, quoted: str = "") -> None:
        super().__init__(message)
        self.quoted = quoted


@dataclass(frozen=True)
class PatchResult:
    """What a successful change did: files touched, hunks and lines, and how it applied."""

    files: tuple[str, ...]
    hunks: int
    lines_added: int
    lines_removed: int
    method: str  # "git-apply" | "exact-context" | "replace-string" | "whole-file"


@dataclass(frozen=True)
class _Hunk:
    """One hunk, reduced to what applying it needs."""

    header: str  # as the agent wrote it, e.g. "@@ -40,6 +40,7 @@"
    old_start: int
    old_lines: tuple[str, ...]  # context + removed lines, without line endings
    new_lines: tuple[str, ...]  # context + added lines, without line endings
    old_ends_without_newline: bool
    new_ends_without_newline: bool
    added: int
    removed: int


@dataclass(frozen=True)
class _FileChange:
    name: str
    hunks: tuple[_Hunk, ...]


# -- the public API -----------------------------------------------------------------------


def apply_patch(workspace: Workspace, diff: str) -> PatchResult:
    """Apply a unified diff to editable files, all-or-nothing; raise PatchRejected if not."""
    changes, canonical_diff = _parse_diff(workspace, diff)
    originals = {change.name: _read(workspace, change.name) for change in changes}

    method = "git-apply"
    results = _apply_with_git(canonical_diff, originals)
    if results is None:
        results = {
            change.name: _apply_exact_context(change, originals[change.name]) for change in changes
        }
        method = "exact-context"

    changed = {name: data for name, data in results.items() if data != originals[name]}
    if not changed:
        raise PatchRejected(
            "The diff applies but changes nothing: every '+' line equals the '-' line it "
            "replaces. Send a diff whose '+' lines differ from its '-' lines."
        )
    for name, data in changed.items():
        _check_result_size(workspace, name, data)
    _install(workspace, changed)
    hunks = [hunk for change in changes for hunk in change.hunks]
    return PatchResult(
        files=tuple(changed),
        hunks=len(hunks),
        lines_added=sum(hunk.added for hunk in hunks),
        lines_removed=sum(hunk.removed for hunk in hunks),
        method=method,
    )


def edit_file(workspace: Workspace, name: str, old: str, new: str) -> PatchResult:
    """Replace the one occurrence of old with new in an editable file."""
    name = _editable_name(workspace, name)
    if not isinstance(old, str) or not isinstance(new, str):
        raise PatchRejected("old and new must both be strings.")
    limit = workspace.policy.max_file_bytes
    if len(old) > limit:  # characters <= UTF-8 bytes: old cannot fit in any editable file
        raise PatchRejected(
            f"old is {len(old)} characters, longer than an editable file may be ({limit} "
            f"bytes), so it cannot occur in {name!r}. Copy only the few whole lines you want "
            "to replace into old. Nothing was changed."
        )
    if len(new) > limit:
        raise PatchRejected(
            f"new is {len(new)} characters; an editable file may hold at most {limit} bytes. "
            f"Nothing was changed. Send a smaller change, and keep {name!r} to code (no "
            "embedded data or text)."
        )
    if old == "":
        raise PatchRejected(
            "old is empty: copy the exact text to replace from the file (a few whole lines), "
            "or use write_file to replace the whole file."
        )
    if old == new:
        raise PatchRejected(
            "old and new are identical, so nothing would change. Send the new text in new."
        )
    text = _decode(name, _read(workspace, name))
    positions = _occurrences(text, old, at_most=_LISTED_OCCURRENCES + 1)
    if not positions:
        closest = _closest_line(text, old)
        raise PatchRejected(
            f"old was not found in {name!r}. Copy it exactly from the file (indentation and "
            f"whitespace count). {closest}",
            quoted=closest,
        )
    if len(positions) > 1:
        shown = positions[:_LISTED_OCCURRENCES]
        line_numbers = ", ".join(str(text.count("\n", 0, p) + 1) for p in shown)
        times = (
            f"more than {_LISTED_OCCURRENCES}"
            if len(positions) > _LISTED_OCCURRENCES
            else str(len(positions))
        )
        raise PatchRejected(
            f"old occurs {times} times in {name!r} (at lines {line_numbers}); it must "
            "occur exactly once. Include more surrounding lines in old so it matches one place."
        )
    start = positions[0]
    updated = text[:start] + new + text[start + len(old) :]
    data = _encode(workspace, name, updated)
    _install(workspace, {name: data})
    added, removed, _ = _line_changes(text, updated)
    return PatchResult((name,), 1, added, removed, "replace-string")


def write_file(workspace: Workspace, name: str, content: str) -> PatchResult:
    """Replace the whole of an editable file with content (UTF-8 text, within the size cap)."""
    name = _editable_name(workspace, name)
    if not isinstance(content, str):
        raise PatchRejected("content must be a string holding the whole new file.")
    data = _encode(workspace, name, content)
    before = _read(workspace, name)
    if data == before:
        raise PatchRejected(
            f"content is identical to the current {name!r}, so nothing would change."
        )
    _install(workspace, {name: data})
    added, removed, hunks = _line_changes(before.decode("utf-8", errors="replace"), content)
    return PatchResult((name,), hunks, added, removed, "whole-file")


# -- checks shared by the three ways of changing a file ----------------------------------


def _editable_name(workspace: Workspace, name: str) -> str:
    """The checked editable name, with the workspace's refusal as a PatchRejected."""
    try:
        return workspace.resolve_editable(name).name
    except PathRefused as refusal:
        raise PatchRejected(str(refusal)) from refusal


def _read(workspace: Workspace, name: str) -> bytes:
    """The current bytes of an editable file, with the workspace's refusal as PatchRejected."""
    try:
        return workspace.read_bytes(name)
    except PathRefused as refusal:
        raise PatchRejected(str(refusal)) from refusal


def _install(workspace: Workspace, files: dict[str, bytes]) -> None:
    """Replace files all-or-nothing, with the workspace's refusal as PatchRejected."""
    try:
        workspace.replace_files(files)
    except PathRefused as refusal:
        raise PatchRejected(str(refusal)) from refusal


def _encode(workspace: Workspace, name: str, text: str) -> bytes:
    """UTF-8 bytes for a new file content, refused when not plain text or too large."""
    if "\x00" in text:
        raise PatchRejected(
            f"The new content of {name!r} contains a NUL byte: only text files can be written."
        )
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise PatchRejected(
            f"The new content of {name!r} is not valid UTF-8 text ({error.reason} at "
            f"character {error.start}). Send plain UTF-8 text."
        ) from error
    _check_result_size(workspace, name, data)
    return data


def _check_result_size(workspace: Workspace, name: str, data: bytes) -> None:
    """Refuse a new content over the workspace's cap on editable files (the cap's message)."""
    try:
        workspace.check_file_size(name, len(data))
    except PathRefused as refusal:
        raise PatchRejected(str(refusal)) from refusal


def _decode(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PatchRejected(
            f"{name!r} is not valid UTF-8 text, so it cannot be edited piecewise. "
            "Use write_file to replace it whole."
        ) from error


def _occurrences(text: str, needle: str, *, at_most: int) -> list[int]:
    """Start offsets of the first at_most (possibly overlapping) occurrences of needle.

    Counting stops there: a message names at most a few, and each search is linear.
    """
    positions: list[int] = []
    start = text.find(needle)
    while start != -1 and len(positions) < at_most:
        positions.append(start)
        start = text.find(needle, start + 1)
    return positions


def _shown_line(line: str) -> str:
    """A line as quoted in a message, cut to _SHOWN_LINE_CHARS characters."""
    if len(line) > _SHOWN_LINE_CHARS:
        return line[:_SHOWN_LINE_CHARS] + f"... ({len(line) - _SHOWN_LINE_CHARS} more characters)"
    return line


def _trigrams(text: str) -> Counter[str]:
    """The character trigrams of a line's first _HINT_CHARS non-blank characters (a multiset)."""
    text = text.strip()[:_HINT_CHARS]
    if len(text) < 3:
        return Counter([text]) if text else Counter()
    return Counter(text[i : i + 3] for i in range(len(text) - 2))


def _closest_line_index(lines: Sequence[str], wanted: str) -> int | None:
    """The 0-based index of the line most like wanted (earliest on ties), or None if none is.

    Similarity is the Dice coefficient of character trigrams over the first _HINT_CHARS
    characters: linear in the file's size, unlike difflib's ratio, whose cost an agent can
    make grow with the cube of the line length. Each distinct line is scored once.
    """
    target = _trigrams(wanted)
    target_size = sum(target.values())
    if not target_size:
        return None
    best_index, best_score = None, _HINT_CUTOFF
    seen: set[str] = set()
    for index, line in enumerate(lines):
        if line in seen:
            continue
        seen.add(line)
        grams = _trigrams(line)
        size = sum(grams.values())
        if not size or 2 * min(size, target_size) / (size + target_size) < best_score:
            continue  # even a perfect overlap could not beat the best so far
        score = 2 * sum((grams & target).values()) / (size + target_size)
        if score > best_score or (best_index is None and score >= best_score):
            best_index, best_score = index, score
    return best_index


def _closest_line(text: str, old: str) -> str:
    """'Closest line N: ...' for the first non-blank line of old, or a hint when none is close."""
    wanted = next((line for line in old.split("\n", 100) if line.strip()), old)
    lines = text.split("\n")
    index = _closest_line_index(lines, wanted)
    if index is None:
        return "No line of the file resembles it; read the file again."
    return f"Closest line {index + 1}: {_shown_line(lines[index])!r}"


def _line_changes(before: str, after: str) -> tuple[int, int, int]:
    """(lines added, lines removed, hunks) of a whole-text change, over its changed region.

    The region runs from the first to the last line that differs (common leading and
    trailing lines are not counted): one hunk, found in linear time whatever the texts.
    """
    old, new = before.splitlines(), after.splitlines()
    if old == new:
        return 0, 0, 0
    shortest = min(len(old), len(new))
    prefix = 0
    while prefix < shortest and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    return len(new) - prefix - suffix, len(old) - prefix - suffix, 1


# -- parsing a diff -----------------------------------------------------------------------


def _parse_diff(workspace: Workspace, diff: str) -> tuple[list[_FileChange], str]:
    """Check a diff and return its changes plus a canonical diff text for `git apply`."""
    if not isinstance(diff, str) or not diff.strip():
        raise PatchRejected(f"The diff is empty. {_DIFF_FORMAT_HINT}")
    file_limit = workspace.policy.max_file_bytes
    diff_limit = DIFF_TO_FILE_RATIO * file_limit
    size = len(diff.encode("utf-8", errors="surrogatepass"))
    if size > diff_limit:
        raise PatchRejected(
            f"The diff is {size} bytes; the limit is {diff_limit} ({DIFF_TO_FILE_RATIO} times "
            f"the {file_limit}-byte limit on an editable file). Send smaller diffs, or use "
            "write_file to replace a file whole."
        )
    if "\x00" in diff:
        raise PatchRejected("The diff contains a NUL byte: binary patches are not supported.")

    recounted, headers, hunk_headers_as_sent = _recount_hunks(diff)
    if len(hunk_headers_as_sent) > MAX_HUNKS:
        raise PatchRejected(
            f"The diff has {len(hunk_headers_as_sent)} hunks; at most {MAX_HUNKS} are accepted. "
            "Merge nearby hunks into one, or use write_file to replace a file whole."
        )
    for line in headers:
        for prefix, reason in _REFUSED_HEADERS:
            if line.startswith(prefix):
                raise PatchRejected(f"The diff is refused: {reason} (found {line[:80]!r}).")
    try:
        patch_set = unidiff.PatchSet(recounted)
    except unidiff.UnidiffParseError as error:
        raise PatchRejected(
            f"The diff could not be parsed ({error}). {_DIFF_FORMAT_HINT}"
        ) from error
    if len(patch_set) == 0:
        raise PatchRejected(f"The diff has no '---'/'+++' file headers. {_DIFF_FORMAT_HINT}")

    headers_as_sent = iter(hunk_headers_as_sent)
    changes = [_file_change(workspace, f, headers_as_sent) for f in patch_set]
    names = [change.name for change in changes]
    for name in names:
        if names.count(name) > 1:
            raise PatchRejected(
                f"{name!r} appears in the diff more than once. Send one '---'/'+++' section "
                "per file, with all its hunks."
            )
    canonical = "".join(
        f"--- a/{change.name}\n+++ b/{change.name}\n" + "".join(str(h) for h in patched_file)
        for change, patched_file in zip(changes, patch_set, strict=True)
    )
    return changes, canonical


def _file_change(
    workspace: Workspace, patched_file: unidiff.PatchedFile, headers_as_sent: Iterator[str]
) -> _FileChange:
    """Check one file section of a diff and reduce its hunks to _Hunk."""
    source, target = patched_file.source_file or "", patched_file.target_file or ""
    if patched_file.is_binary_file:
        raise PatchRejected("The diff is refused: binary files are not supported.")
    if source == "/dev/null":
        raise PatchRejected(
            f"The diff is refused: creating files ('--- /dev/null') is not supported. "
            f"Edit an existing file: {', '.join(workspace.policy.editable)}."
        )
    if target == "/dev/null":
        raise PatchRejected(
            "The diff is refused: deleting files ('+++ /dev/null') is not supported. "
            "Edit the file instead."
        )
    source, target = source.rstrip(), target.rstrip()  # stray trailing spaces or '\r'
    old_name = source[2:] if source.startswith("a/") else source
    new_name = target[2:] if target.startswith("b/") else target
    if old_name != new_name:
        raise PatchRejected(
            f"The diff is refused: its old path {old_name!r} and new path {new_name!r} differ "
            "(renames are not supported). Use the same name in '---' and '+++'."
        )
    name = _editable_name(workspace, old_name)
    if len(patched_file) == 0:
        raise PatchRejected(f"The section for {name!r} has no @@ hunks. {_DIFF_FORMAT_HINT}")
    return _FileChange(
        name, tuple(_reduce_hunk(hunk, next(headers_as_sent, "@@")) for hunk in patched_file)
    )


def _reduce_hunk(hunk: unidiff.Hunk, header_as_sent: str) -> _Hunk:
    """The old and new lines of a parsed hunk, and whether each side ends without newline."""
    old_lines: list[str] = []
    new_lines: list[str] = []
    old_no_newline = new_no_newline = False
    previous = ""
    for line in hunk:
        value = line.value[:-1] if line.value.endswith("\n") else line.value
        if line.line_type == LINE_TYPE_NO_NEWLINE:
            old_no_newline |= previous in (unidiff.LINE_TYPE_CONTEXT, unidiff.LINE_TYPE_REMOVED)
            new_no_newline |= previous in (unidiff.LINE_TYPE_CONTEXT, unidiff.LINE_TYPE_ADDED)
        elif line.line_type == unidiff.LINE_TYPE_CONTEXT:
            old_lines.append(value)
            new_lines.append(value)
        elif line.line_type == unidiff.LINE_TYPE_REMOVED:
            old_lines.append(value)
        elif line.line_type == unidiff.LINE_TYPE_ADDED:
            new_lines.append(value)
        previous = line.line_type
    return _Hunk(
        header=header_as_sent,
        old_start=hunk.source_start,
        old_lines=tuple(old_lines),
        new_lines=tuple(new_lines),
        old_ends_without_newline=old_no_newline,
        new_ends_without_newline=new_no_newline,
        added=hunk.added,
        removed=hunk.removed,
    )


def _is_body_line(line: str) -> bool:
    return line == "" or line[0] in " +-\\"


def _recount_hunks(diff: str) -> tuple[str, list[str], list[str]]:
    """Rewrite every @@ header with counts taken from its body.

    Returns the recounted diff, the lines outside hunks (file and extended headers), and
    each hunk's header as the agent wrote it (for messages), in order.

    LLM-written diffs often carry wrong @@ counts, which unidiff rejects. A hunk's body
    runs until a line that cannot be a body line (or a '---'/'+++' pair starting the next
    file). Bare empty lines inside a body are blank context lines whose leading space was
    lost; trailing ones are kept only as far as the declared counts ask for them.
    """
    lines = diff.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    output: list[str] = []
    headers: list[str] = []
    as_sent: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("@@"):
            headers.append(line)
            output.append(line)
            index += 1
            continue
        match = _HUNK_HEADER.match(line.rstrip("\r"))
        if match is None:
            raise PatchRejected(
                f"Malformed hunk header {line[:80]!r}: write it as '@@ -OLD_START,OLD_COUNT "
                f"+NEW_START,NEW_COUNT @@'."
            )
        old_start, declared_old, new_start, declared_new, section = match.groups()
        body: list[str] = []
        index += 1
        while index < len(lines) and _is_body_line(lines[index]):
            starts_next_file = (
                lines[index].startswith("--- ")
                and index + 1 < len(lines)
                and lines[index + 1].startswith("+++ ")
            )
            if starts_next_file:
                break
            body.append(lines[index])
            index += 1
        trailing_blanks = 0
        while body and body[-1] == "":
            body.pop()
            trailing_blanks += 1
        old_count = sum(1 for b in body if b[:1] in ("", " ", "-"))
        new_count = sum(1 for b in body if b[:1] in ("", " ", "+"))
        wanted_old = int(declared_old) if declared_old is not None else 1
        wanted_new = int(declared_new) if declared_new is not None else 1
        while trailing_blanks and old_count < wanted_old and new_count < wanted_new:
            body.append("")
            old_count += 1
            new_count += 1
            trailing_blanks -= 1
        if not body:
            raise PatchRejected(f"The hunk {line[:80]!r} has no lines. {_DIFF_FORMAT_HINT}")
        output.append(f"@@ -{old_start},{old_count} +{new_start},{new_count} @@{section}")
        output.extend(" " if b == "" else b for b in body)
        as_sent.append(line.rstrip("\r")[: line.index("@@", 2) + 2])
    return "\n".join(output) + "\n", headers, as_sent


# -- applying -----------------------------------------------------------------------------


def _apply_with_git(canonical_diff: str, originals: dict[str, bytes]) -> dict[str, bytes] | None:
    """Apply with `git apply --recount` in a private temporary copy.

    Returns the new contents, or None when git refuses the diff (or is not installed).
    """
    with tempfile.TemporaryDirectory(prefix="autoresearch-patch-") as scratch:
        folder = Path(scratch) / "files"
        folder.mkdir()
        for name, data in originals.items():
            (folder / name).write_bytes(data)
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("GIT_")
        }
        # Never let git find a repository above the scratch folder, nor read user config.
        environment.update(
            GIT_CEILING_DIRECTORIES=scratch,
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            HOME=scratch,
        )
        # One run, no `--check` first: without --reject, git apply is all-or-nothing, and this
        # is a private copy read back only on success (a second git process doubled the cost).
        command = ["git", "apply", "--recount", "--whitespace=nowarn", "-"]
        try:
            completed = subprocess.run(
                command,
                cwd=folder,
                input=canonical_diff.encode("utf-8", errors="surrogatepass"),
                capture_output=True,
                env=environment,
                timeout=GIT_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if completed.returncode != 0:
            return None
        return {name: (folder / name).read_bytes() for name in originals}


def _split_lines(text: str) -> tuple[list[str], bool]:
    """The lines of text without their '\\n', and whether the text ends with one."""
    if text == "":
        return [], True
    ends_with_newline = text.endswith("\n")
    lines = text.split("\n")
    if ends_with_newline:
        lines.pop()
    return lines, ends_with_newline


class _LineSearch:
    """The lines of a file as one text, so that finding a block of lines is a string search.

    str.find is linear in the worst case for long needles (two-way search); comparing a
    block at every line would cost lines x block length.
    """

    def __init__(self, lines: Sequence[str]) -> None:
        self.text = "\n" + "\n".join(lines) + "\n"
        self.line_starts = list(itertools.accumulate((len(line) + 1 for line in lines), initial=1))

    def find(self, block: Sequence[str], *, at_most: int) -> list[int]:
        """The 0-based line numbers of the first at_most places where block occurs."""
        needle = "\n" + "\n".join(block) + "\n"
        found: list[int] = []
        offset = self.text.find(needle)
        while offset != -1 and len(found) < at_most:
            found.append(bisect.bisect_left(self.line_starts, offset + 1))
            offset = self.text.find(needle, offset + 1)
        return found


def _apply_exact_context(change: _FileChange, original: bytes) -> bytes:
    """Apply every hunk of one file where its old lines occur exactly once, bottom-up."""
    text = _decode(change.name, original)
    lines, ends_with_newline = _split_lines(text)
    total = len(change.hunks)
    search = _LineSearch(lines)
    placements: list[tuple[int, int, _Hunk]] = []  # (start, old length, hunk)
    for number, hunk in enumerate(change.hunks, start=1):
        where = f"hunk {number} of {total} ({hunk.header}) for {change.name!r}"
        if not hunk.old_lines:  # pure insertion: only the line number can place it
            start = max(hunk.old_start, 0)
            if start > len(lines):
                raise PatchRejected(
                    f"{where} adds lines after line {start}, but the file has only "
                    f"{len(lines)} lines. Add context lines so the hunk can be placed."
                )
            placements.append((start, 0, hunk))
            continue
        size = len(hunk.old_lines)
        starts = search.find(hunk.old_lines, at_most=_LISTED_OCCURRENCES + 1)
        hinted = hunk.old_start - 1
        if (
            len(starts) > 1
            and hinted >= 0
            and tuple(lines[hinted : hinted + size]) == hunk.old_lines
        ):
            starts = [hinted]  # ambiguous context, but the line number agrees
        if not starts:
            report = _mismatch_report(change.name, lines, hunk)
            raise PatchRejected(
                f"{where} does not match the file: its context and '-' lines were not found. "
                f"Re-read {change.name!r} and send the hunk again with those lines copied "
                "exactly (indentation and whitespace count). Nothing was changed.\n" + report,
                quoted=report,
            )
        if len(starts) > 1:
            at = ", ".join(str(s + 1) for s in starts[:_LISTED_OCCURRENCES])
            places = (
                f"more than {_LISTED_OCCURRENCES}"
                if len(starts) > _LISTED_OCCURRENCES
                else str(len(starts))
            )
            raise PatchRejected(
                f"{where} matches {places} places in the file (lines {at}); it must "
                "match exactly one. Add more context lines to the hunk. Nothing was changed."
            )
        placements.append((starts[0], size, hunk))

    placements.sort(key=lambda placement: placement[0])
    for (start, length, _), (next_start, _, _) in itertools.pairwise(placements):
        if start + length > next_start:
            raise PatchRejected(
                f"Two hunks for {change.name!r} change overlapping lines (near line "
                f"{next_start + 1}). Merge them into one hunk. Nothing was changed."
            )
    for start, length, hunk in reversed(placements):
        reaches_end = start + length == len(lines)
        lines[start : start + length] = hunk.new_lines
        if reaches_end:
            if hunk.new_ends_without_newline:
                ends_with_newline = False
            elif hunk.old_ends_without_newline or not lines:
                ends_with_newline = True
    result = "\n".join(lines) + ("\n" if ends_with_newline and lines else "")
    return result.encode("utf-8")


def _numbered(lines: Sequence[str], first_number: int | None) -> str:
    shown = list(lines[:_SHOWN_LINES])
    rendered = [
        f"{'' if first_number is None else first_number + offset:>6} | {_shown_line(line)}"
        for offset, line in enumerate(shown)
    ]
    if len(lines) > _SHOWN_LINES:
        rendered.append(f"{'':>6} | ... ({len(lines) - _SHOWN_LINES} more lines)")
    return "\n".join(rendered)


def _closest_region(lines: Sequence[str], hunk: _Hunk) -> int | None:
    """The 0-based start of the window of the file most like the hunk's old lines.

    Candidates are the places the hunk's first non-blank lines occur (capped), the hunk's
    own line number, and, when no line occurs exactly, the line most similar to its first
    non-blank line. Each candidate scores its first lines against the hunk's: 1 for an equal
    line, 0.5 for one equal but for whitespace; ties go to the one nearest the line number.
    """
    expected = hunk.old_lines
    if not lines:
        return None
    last_start = max(len(lines) - len(expected), 0)

    def clamp(start: int) -> int:
        return min(max(start, 0), last_start)

    positions: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        found = positions.setdefault(line, [])
        if len(found) < _REGION_ANCHOR_POSITIONS:
            found.append(index)
    anchors = [(offset, line) for offset, line in enumerate(expected) if line.strip()]
    anchors = anchors[:_REGION_ANCHOR_LINES]
    candidates = {clamp(hunk.old_start - 1)}
    for offset, line in anchors:
        candidates.update(clamp(p - offset) for p in positions.get(line, ()))
    if len(candidates) == 1 and anchors:  # no line matches exactly: the most similar line
        offset, anchor = anchors[0]
        closest = _closest_line_index(lines, anchor)
        if closest is not None:
            candidates.add(clamp(closest - offset))
    compared = expected[:_REGION_COMPARED_LINES]

    def score(start: int) -> tuple[float, int]:
        window = lines[start : start + len(compared)]
        same = sum(
            1.0 if want == have else 0.5 if want.strip() == have.strip() else 0.0
            for want, have in zip(compared, window, strict=False)
        )
        return same, -abs(start - (hunk.old_start - 1))

    return max(sorted(candidates), key=score)


def _mismatch_report(name: str, lines: Sequence[str], hunk: _Hunk) -> str:
    """The hunk's expected old lines next to the closest lines of the file."""
    report = [
        "Expected (the hunk's context and '-' lines):",
        _numbered(hunk.old_lines, hunk.old_start),
    ]
    start = _closest_region(lines, hunk)
    if start is None:
        report.append(f"{name!r} is empty.")
    else:
        window = lines[start : start + max(len(hunk.old_lines), 1)]
        report.append(f"Closest lines in {name!r} (lines {start + 1}-{start + len(window)}):")
        report.append(_numbered(window, start + 1))
    return "\n".join(report)
