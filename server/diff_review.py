"""Flags on diffs that touch what the contract owns: the seed, the timer, the contract's
environment, paths outside the run directory, processes and signals; and on diffs that
embed data rather than code (`embedded_data`).

Flags are advice made visible (to the agent and in history), not the enforcement: the jail
and the runner enforce. One flag has teeth: a change whose only effect is the seed is
`seed_only` and can never count as an improvement.

`embedded_data` looks at the added lines for what memorised val or holdout documents would
look like inside train.py: one large string literal, many kilobytes of text in strings and
comments (net of what the diff removes, so a reformatted file is not flagged), a long run of
characters without a space (base64, hex, packed numbers), or a long list of numbers (a token
table). The editable-file size cap bounds how much can be embedded at all; this flag makes
what is embedded visible. Every measure is a linear scan of the diff.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SEED = re.compile(r"\bSEED\b|AR_SEED|manual_seed|\.seed\(|random_state|Generator\(\)")
_CHECKS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("seed", _SEED, "changes seeding; the server owns the seed (AR_SEED) for paired comparisons"),
    (
        "timer",
        re.compile(
            r"\btime\.(time|perf_counter|monotonic|process_time|sleep)\b|PROCESS_START|BUDGET|budget_used|AR_BUDGET"
        ),
        "touches the clock or the budget; the runner's clock is the one that counts",
    ),
    (
        "contract_env",
        re.compile(r"\bAR_[A-Z_]+\b|os\.environ|getenv|putenv"),
        "reads or writes the contract's environment variables",
    ),
    (
        "outside_paths",
        re.compile(r"""["'](/|~|\.\./)|\.\./|expanduser|os\.chdir|shutil\.|\bunlink\(|rmtree"""),
        "uses paths outside the run directory (only the run directory is writable; val data is never visible)",
    ),
    (
        "process_or_signal",
        re.compile(
            r"\b(subprocess|multiprocessing|signal|ctypes|socket|atexit)\b|os\.(fork|kill|system|exec\w*|spawn\w*|setsid|_exit)"
        ),
        "starts processes, handles signals or opens sockets (the jail stops them; the run may fail)",
    ),
)

# embedded_data thresholds. Ordinary code, measured on the trainer's, the server's and the
# tests' own files, each written over the baseline train.py: the largest string literal is
# 5.4 KB (the evaluator's module docstring), a file holds at most ~16 KB more string and comment
# text than the baseline, no run without a space is longer than 146 characters, and no file
# adds more than ~40 numbers. Data worth embedding is tens of kilobytes.
LARGE_LITERAL_CHARS = 8192
TEXT_CHARS = 20480  # net added characters of string literals and comments
SPACELESS_RUN_CHARS = 256
NUMBER_RUN = 256  # numbers in a row, separated only by commas, brackets, spaces or operators
NUMBERS_TOTAL = 1024  # net added numbers


@dataclass(frozen=True)
class EmbeddedLimits:
    """The embedded_data thresholds. The defaults fit a target whose eval data no agent can get;
    a target whose data is public (its val examples can be fitted offline and pasted in) sets
    lower ones in target.toml (`embedded_data = { text_chars = ..., numbers = ... }`)."""

    literal_chars: int = LARGE_LITERAL_CHARS
    text_chars: int = TEXT_CHARS
    spaceless_run: int = SPACELESS_RUN_CHARS
    number_run: int = NUMBER_RUN
    numbers: int = NUMBERS_TOTAL


DEFAULT_LIMITS = EmbeddedLimits()
SHOWN_LINES = 3
SHOWN_LINE_CHARS = 160

# A comment or a string literal (any prefix and quotes; an unterminated one runs to the end of
# its line, or of the block for triple quotes). Possessive quantifiers: no scan backtracks.
_TEXT = re.compile(
    r"""
      (?P<comment>\#[^\n]*+)
    | (?P<string>[rRbBuUfF]{0,2}+
        (?: "{3}(?:[^"\\]|\\.|\\\Z|"(?!""))*+(?:"{3}|\Z)
          | '{3}(?:[^'\\]|\\.|\\\Z|'(?!''))*+(?:'{3}|\Z)
          | "(?:[^"\\\n]|\\.|\\\Z)*+(?:"|$)
          | '(?:[^'\\\n]|\\.|\\\Z)*+(?:'|$)
        ))
    """,
    re.VERBOSE | re.DOTALL | re.MULTILINE,
)
_SEPARATORS = re.compile(r"[\s,()\[\]{}:+\-*/]+")
_NUMBER = re.compile(r"\.?\d[\w.]*")
_SPACELESS = re.compile(r"\S+")


@dataclass(frozen=True)
class Flag:
    name: str
    reason: str
    lines: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        """The flag as stored: its first lines only, each cut short."""
        return {
            "name": self.name,
            "reason": self.reason,
            "lines": [_shown(line) for line in self.lines[:SHOWN_LINES]],
        }


def _shown(line: str) -> str:
    """A line as stored with a flag, cut to SHOWN_LINE_CHARS characters."""
    if len(line) > SHOWN_LINE_CHARS:
        return line[:SHOWN_LINE_CHARS] + f"... ({len(line) - SHOWN_LINE_CHARS} more characters)"
    return line


def changed_code_lines(diff: str) -> list[str]:
    """Added and removed lines of a unified diff, without the +/- and without pure comments or blanks."""
    lines = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")) or not line.startswith(("+", "-")):
            continue
        code = line[1:].split("#", 1)[0].strip()
        if code:
            lines.append(code)
    return lines


def review_diff(diff: str, limits: EmbeddedLimits = DEFAULT_LIMITS) -> list[Flag]:
    """Contract-touching findings in a diff, and embedded data (empty for an ordinary change)."""
    lines = changed_code_lines(diff)
    flags = []
    for name, pattern, reason in _CHECKS:
        hits = tuple(line for line in lines if pattern.search(line))
        if hits:
            flags.append(Flag(name, reason, hits))
    embedded = embedded_data(diff, limits)
    if embedded is not None:
        flags.append(embedded)
    return flags


def is_seed_only(diff_vs_parent: str) -> bool:
    """True when every changed code line is about the seed: such a change measures luck, not an idea."""
    lines = changed_code_lines(diff_vs_parent)
    return bool(lines) and all(_SEED.search(line) for line in lines)


# -- embedded data ---------------------------------------------------------------------------


@dataclass
class _Content:
    """What one side of a diff (its '+' or its '-' lines) holds besides code."""

    largest_literal: int = 0
    text_chars: int = 0  # in string literals and comments
    longest_spaceless_run: int = 0
    longest_number_run: int = 0
    numbers: int = 0
    samples: list[str] = field(default_factory=list)  # where data was found


def embedded_data(diff: str, limits: EmbeddedLimits = DEFAULT_LIMITS) -> Flag | None:
    """An `embedded_data` flag when the added lines carry data or text rather than code."""
    added, removed = _scan(diff, "+"), _scan(diff, "-")
    findings = []
    if added.largest_literal >= limits.literal_chars:
        findings.append(f"a string literal of {added.largest_literal:,} characters")
    net_text = added.text_chars - removed.text_chars
    if net_text >= limits.text_chars:
        findings.append(f"{net_text:,} more characters of string literals and comments")
    if added.longest_spaceless_run >= limits.spaceless_run:
        findings.append(
            f"a run of {added.longest_spaceless_run:,} characters without a space "
            "(base64, hex or packed data looks like this)"
        )
    if added.longest_number_run >= limits.number_run:
        findings.append(f"a list of {added.longest_number_run:,} numbers in a row")
    net_numbers = added.numbers - removed.numbers
    if net_numbers >= limits.numbers:
        findings.append(f"{net_numbers:,} more numbers")
    if not findings:
        return None
    reason = (
        "embeds data or text rather than code: "
        + "; ".join(findings)
        + ". train.py must learn from the training data within its budget: text, data or "
        "numbers carried in the code (memorised val or holdout documents above all) score "
        "what was memorised, not what was learned"
    )
    return Flag("embedded_data", reason, tuple(added.samples))


def _blocks(diff: str, sign: str) -> list[str]:
    """The runs of consecutive lines starting with sign ('+' or '-'), each as one text."""
    header = sign * 3 + " "
    blocks: list[str] = []
    current: list[str] = []
    for line in diff.split("\n"):
        if line.startswith(sign) and not line.startswith(header):
            current.append(line[1:])
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


def _scan(diff: str, sign: str) -> _Content:
    """Measure the strings, comments, spaceless runs and numbers on one side of a diff.

    Each block of consecutive lines is scanned on its own (a block that starts inside an
    unchanged multi-line string is read as code: a heuristic, not a parser).
    """
    content = _Content()
    for text in _blocks(diff, sign):
        run = 0  # a run of numbers does not continue past unchanged lines
        code_start = 0
        for match in _TEXT.finditer(text):
            run = _count_numbers(text[code_start : match.start()], content, run)
            if match.lastgroup == "string":
                run = 0  # nor past a string (comments between numbers do not break a run)
            code_start = match.end()
            size = match.end() - match.start()
            content.text_chars += size
            if match.lastgroup == "string" and size > content.largest_literal:
                content.largest_literal = size
                if size >= LARGE_LITERAL_CHARS:
                    content.samples.append(text[match.start() : match.start() + SHOWN_LINE_CHARS])
        _count_numbers(text[code_start:], content, run)
        for spaceless in _SPACELESS.finditer(text):
            length = spaceless.end() - spaceless.start()
            if length > content.longest_spaceless_run and length >= SPACELESS_RUN_CHARS:
                content.longest_spaceless_run = length
                content.samples.append(spaceless.group()[:SHOWN_LINE_CHARS])
    return content


def _count_numbers(code: str, content: _Content, run: int) -> int:
    """Count the numbers in a piece of code; returns the length of the run open at its end."""
    for item in _SEPARATORS.split(code):
        if not item:
            continue
        if _NUMBER.fullmatch(item):
            content.numbers += 1
            run += 1
            if run > content.longest_number_run:
                content.longest_number_run = run
                if run == NUMBER_RUN:
                    content.samples.append(code[:SHOWN_LINE_CHARS])
        else:
            run = 0
    return run
