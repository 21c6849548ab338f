"""Flags on diffs that touch what the contract owns: the seed, the timer, the contract's
environment, paths outside the run directory, processes and signals.

Flags are advice made visible (to the agent and in history), not the enforcement: the jail
and the runner enforce. One flag has teeth: a change whose only effect is the seed is
`seed_only` and can never count as an improvement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Flag:
    name: str
    reason: str
    lines: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "reason": self.reason, "lines": list(self.lines[:3])}


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


def review_diff(diff: str) -> list[Flag]:
    """Contract-touching findings in a diff (empty for an ordinary change)."""
    lines = changed_code_lines(diff)
    flags = []
    for name, pattern, reason in _CHECKS:
        hits = tuple(line for line in lines if pattern.search(line))
        if hits:
            flags.append(Flag(name, reason, hits))
    return flags


def is_seed_only(diff_vs_parent: str) -> bool:
    """True when every changed code line is about the seed: such a change measures luck, not an idea."""
    lines = changed_code_lines(diff_vs_parent)
    return bool(lines) and all(_SEED.search(line) for line in lines)
