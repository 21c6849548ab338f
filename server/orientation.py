"""Which way the research target's metric improves, as arithmetic: gains and sort keys.

The target says `direction = "minimize"` (a loss, an error) or `"maximize"` (an accuracy).
Everything that ranks results or measures a gain goes through these, so that no code assumes a
direction. A gain is always positive when the candidate is better.
"""

from __future__ import annotations

MINIMIZE, MAXIMIZE = "minimize", "maximize"


def gain(candidate: float, reference: float, direction: str) -> float:
    """How much better `candidate` is than `reference` (positive = better), in metric units."""
    return reference - candidate if direction == MINIMIZE else candidate - reference


def loss(value: float, direction: str) -> float:
    """The value oriented as a loss (smaller = better): a sort key, best first."""
    return value if direction == MINIMIZE else -value


def is_better(candidate: float, incumbent: float, direction: str) -> bool:
    """True when `candidate` strictly beats `incumbent`."""
    return gain(candidate, incumbent, direction) > 0


def better_word(direction: str) -> str:
    """'lower' or 'higher', for text a reader sees."""
    return "lower" if direction == MINIMIZE else "higher"
