"""Unified diffs between two sets of files, bounded in time and in size, whatever the files hold.

difflib's matcher is fast on ordinary edits but an agent controls both sides of a diff (its
parent experiment's code and its new code), and on crafted inputs difflib's cost grows with the
cube of the number of lines: a 24 KB file held the server for 50 s. Here every call of the
matcher's inner search is charged, before it runs, an upper bound on the steps it will take
(one per line of the first file in range, plus every position of that line in the second
file); when a diff has spent `max_work` steps, or `max_seconds` have passed, the rest of that
file's diff is replaced by one coarse hunk: the common leading and trailing lines are found
in linear time and everything between them is shown as removed and added, under a note that
says so. The coarse hunk still holds every changed line, so a review of the added lines sees
all of them. For ordinary inputs the output is exactly difflib's unified diff, as the server
always stored it (`a/` and `b/` prefixes, three lines of context, a newline after every line).

A diff longer than `max_chars` is cut at a line boundary, with a last line saying how much
was left out.
"""

from __future__ import annotations

import difflib
import itertools
import time
from collections.abc import Iterable, Sequence

# Steps of difflib's inner search (a dict lookup or two each): ordinary diffs of the trainer's
# files (400 random edits, whole-file rewrites) took at most ~8,000; the worst input within the
# editable-file cap would take billions. At ~7 million steps a second (measured on the 2-core
# CPU) the budget costs ~0.15 s at most.
DEFAULT_MAX_WORK = 1_000_000
# A wall-clock backstop on top of the work budget (a loaded machine runs slower).
DEFAULT_MAX_SECONDS = 0.5
# Two full rewrites of a 64 KiB file fit with room to spare; stored and shown to agents.
DEFAULT_MAX_CHARS = 1_000_000
CONTEXT_LINES = 3

COARSE_NOTE = (
    "# {name}: this diff was too costly to compute line by line (more than {work} steps "
    "or {seconds:g} s); the lines between the first and the last that differ are shown as "
    "removed and added\n"
)
CUT_NOTE = "# diff cut at {max_chars} characters: {left_out} more characters not shown\n"


class _OverBudget(Exception):
    """The diff spent its work budget or its time."""


class _Budget:
    """Steps left and a deadline, shared by every file of one diff."""

    def __init__(self, max_work: int, max_seconds: float) -> None:
        self.steps_left = max_work
        self.deadline = time.monotonic() + max_seconds

    def charge(self, steps: int) -> None:
        """Spend steps, or raise _OverBudget when they are not there or time is up."""
        self.steps_left -= steps
        if self.steps_left < 0 or time.monotonic() > self.deadline:
            raise _OverBudget


class _BoundedMatcher(difflib.SequenceMatcher[str]):
    """difflib's matcher (autojunk on, as difflib.unified_diff uses it) under a _Budget.

    find_longest_match loops over a[alo:ahi] and, for each line, over that line's positions
    in b (b2j) up to bhi: at most sum(1 + len(b2j[a[i]])) steps, charged before it runs from
    prefix sums computed once.
    """

    a: Sequence[str]  # set by difflib (typeshed does not declare them)
    b2j: dict[str, list[int]]  # line -> its positions in b, junk and popular lines left out

    def __init__(self, a: Sequence[str], b: Sequence[str], budget: _Budget) -> None:
        self._budget = budget
        self._cost_upto: list[int] | None = None
        super().__init__(None, a, b)

    def find_longest_match(
        self, alo: int = 0, ahi: int | None = None, blo: int = 0, bhi: int | None = None
    ) -> difflib.Match:
        if self._cost_upto is None:
            positions = self.b2j
            self._cost_upto = list(
                itertools.accumulate(
                    (1 + len(positions.get(line, ())) for line in self.a), initial=0
                )
            )
        end = len(self.a) if ahi is None else ahi
        self._budget.charge(self._cost_upto[end] - self._cost_upto[alo])
        return super().find_longest_match(alo, ahi, blo, bhi)


def unified_diff(
    old: dict[str, str],
    new: dict[str, str],
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_chars: int = DEFAULT_MAX_CHARS,
    max_work: int = DEFAULT_MAX_WORK,
) -> str:
    """A unified diff between two sets of files (a/ and b/ prefixes, like git), bounded.

    Files are diffed in name order; a file missing on one side counts as empty there. Once
    the shared budget (max_work steps, max_seconds) is spent, each remaining changed file
    gets one coarse hunk with a note; a result over max_chars is cut with a note.
    """
    budget = _Budget(max_work, max_seconds)
    chunks: list[str] = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, ""), new.get(name, "")
        if a == b:
            continue
        a_lines, b_lines = a.splitlines(keepends=True), b.splitlines(keepends=True)
        try:
            groups = _BoundedMatcher(a_lines, b_lines, budget).get_grouped_opcodes(CONTEXT_LINES)
            body = _format(name, a_lines, b_lines, groups)
        except _OverBudget:
            note = COARSE_NOTE.format(name=name, work=max_work, seconds=max_seconds)
            body = [note, *_format(name, a_lines, b_lines, [_coarse_group(a_lines, b_lines)])]
        chunks.extend(line if line.endswith("\n") else line + "\n" for line in body)
    return _cut("".join(chunks), max_chars)


Opcode = tuple[str, int, int, int, int]


def _coarse_group(a: Sequence[str], b: Sequence[str]) -> list[Opcode]:
    """One hunk's opcodes in linear time: context, the differing middle replaced, context."""
    shortest = min(len(a), len(b))
    prefix = 0
    while prefix < shortest and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    a_end, b_end = len(a) - suffix, len(b) - suffix
    before = min(prefix, CONTEXT_LINES)
    after = min(suffix, CONTEXT_LINES)
    group: list[Opcode] = []
    if before:
        group.append(("equal", prefix - before, prefix, prefix - before, prefix))
    tag = (
        "replace" if prefix < a_end and prefix < b_end else "delete" if prefix < a_end else "insert"
    )
    group.append((tag, prefix, a_end, prefix, b_end))
    if after:
        group.append(("equal", a_end, a_end + after, b_end, b_end + after))
    return group


def _format(
    name: str, a: Sequence[str], b: Sequence[str], groups: Iterable[list[Opcode]]
) -> list[str]:
    """difflib.unified_diff's lines for grouped opcodes (the same headers and ranges)."""
    lines: list[str] = []
    for group in groups:
        if not lines:
            lines += [f"--- a/{name}\n", f"+++ b/{name}\n"]
        first, last = group[0], group[-1]
        lines.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                lines.extend(" " + line for line in a[i1:i2])
                continue
            if tag in ("replace", "delete"):
                lines.extend("-" + line for line in a[i1:i2])
            if tag in ("replace", "insert"):
                lines.extend("+" + line for line in b[j1:j2])
    return lines


def _range(start: int, stop: int) -> str:
    """A hunk range as difflib writes it: 'start,length', 1-based ('start' alone for one line)."""
    beginning, length = start + 1, stop - start
    if length == 1:
        return f"{beginning}"
    if not length:
        beginning -= 1  # an empty range starts on the line before
    return f"{beginning},{length}"


def _cut(text: str, max_chars: int) -> str:
    """text, or its first whole lines within max_chars and a note saying how much is left out."""
    if len(text) <= max_chars:
        return text
    end = text.rfind("\n", 0, max_chars) + 1
    return text[:end] + CUT_NOTE.format(max_chars=max_chars, left_out=len(text) - end)
