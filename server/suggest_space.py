"""train.py's searched constants for `suggest` (server/suggest.py): which module-level
numbers are parameters, the search space of each, and the values a run's code sets.

The parameters are read from the baseline train.py, not listed here: every module-level
`UPPER_CASE = <literal>` on one line at the top of the file (before its first function or
class) whose literal is a positive int or a non-negative float (not a bool), also in the forms
`cpu_value if CPU_RECIPE else cuda_value` (the side this server's device runs) and
`literal + <growth>` (only the leading literal is searched: `4 + 2 * (SCALE - 1)` keeps its
growth with the scale level). Not searched: what
the server owns by train.py's contract (seeds, the budget and the clock, the scale level, the
evaluation, the device and the recipe: a name with a part SEED, BUDGET, SECONDS or EVAL, or
named SCALE, DEVICE or RECIPE), booleans, tuples and anything computed.

The search space of each parameter derives from its baseline value v:
- a positive float: log-uniform over [v/4, 4v], capped at 1 for a name ending in _FRAC;
- a float at 0: uniform over [0, 0.1] (a small on-switch; the baseline's 0 is in it);
- a positive int: [max(step, v//4), 4v] in steps of `step`, the largest power of two that
  divides v and is at most max(1, v//4) (the baseline is on the grid, round sizes stay round);
- a divisibility the file states as `A // B` with A and B both parameters: A is rounded to a
  multiple of B (at least B) after sampling, e.g. the width to a multiple of the head dim.

A run counts with the values its code sets only if its train.py is the baseline's but for
parameter lines, each changed line being the baseline's statement with only the searched
literal changed: nothing else on the line, no second statement (`constant_only_values`).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import cast

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from server.seed_checks import parse_python

EDITABLE = "train.py"
# The server owns these by train.py's contract (or they are the budget's clock): never searched.
SERVER_OWNED = re.compile(r"(^|_)(SEED|BUDGET|SECONDS|EVAL)(_|$)|^(SCALE|DEVICE|RECIPE)$")
UPPER_CASE = re.compile(r"^[A-Z][A-Z0-9_]*$")
ZERO_FLOAT_HIGH = 0.1


@dataclass(frozen=True)
class Parameter:
    """One searched constant of train.py: its baseline value, its line and its search space."""

    name: str
    baseline: int | float
    line: int  # 0-based line index in the baseline train.py
    low: float
    high: float
    step: int | None = None  # ints: the grid's step
    log: bool = False
    multiple_of: str | None = None  # `A // B` in the file: A is kept a multiple of B

    def distribution(self) -> BaseDistribution:
        if self.step is not None:
            return IntDistribution(int(self.low), int(self.high), step=self.step)
        return FloatDistribution(self.low, self.high, log=self.log)

    def contains(self, value: float) -> bool:
        if self.step is None:
            return self.low <= value <= self.high
        return self.low <= value <= self.high and (value - self.low) % self.step == 0

    def describe(self) -> str:
        if self.step is not None:
            space = f"ints {int(self.low)}..{int(self.high)} step {self.step}"
        else:
            space = f"{'log-uniform' if self.log else 'uniform'} {self.low:g}..{self.high:g}"
        if self.multiple_of:
            space += f", a multiple of {self.multiple_of}"
        return f"{space} (baseline {self.baseline!r})"


def space_for(name: str, value: int | float, line: int) -> Parameter | None:
    """The search space derived from a baseline value (the module docstring states the rule)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if value <= 0:
            return None
        cap = max(1, value // 4)
        step = 1
        while value % (step * 2) == 0 and step * 2 <= cap:
            step *= 2
        low = max(step, (value // 4) // step * step)
        return Parameter(name, value, line, low, 4 * value, step=step)
    if not math.isfinite(value) or value < 0:
        return None
    if value == 0:
        return Parameter(name, value, line, 0.0, ZERO_FLOAT_HIGH)
    high = min(4 * value, 1.0) if name.endswith("_FRAC") else 4 * value
    return Parameter(name, value, line, value / 4, high, log=True)


def _searched_literal(value: ast.expr, cpu: bool) -> ast.Constant | None:
    """The literal a parameter's value is: itself, one side of `a if CPU_RECIPE else b`, or the
    leading literal of `literal + ...`."""
    if (
        isinstance(value, ast.IfExp)
        and isinstance(value.test, ast.Name)
        and value.test.id == "CPU_RECIPE"
    ):
        value = value.body if cpu else value.orelse
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add):
        value = value.left
    if isinstance(value, ast.Constant) and type(value.value) in (int, float):
        return value
    return None


def top_literals(tree: ast.Module, cpu: bool) -> dict[str, tuple[ast.stmt, ast.Constant]]:
    """One-line `NAME = <searched literal>` assignments at the top of the module (before its
    first function or class), by name (the last wins)."""
    found: dict[str, tuple[ast.stmt, ast.Constant]] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            break  # the top of the file ends at its first definition
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
            continue
        target = stmt.targets[0]
        if not (isinstance(target, ast.Name) and UPPER_CASE.match(target.id)):
            continue
        if SERVER_OWNED.search(target.id) or stmt.lineno != stmt.end_lineno:
            continue
        literal = _searched_literal(stmt.value, cpu)
        if literal is not None:
            found[target.id] = (stmt, literal)
    return found


def _divisibility(tree: ast.Module) -> dict[str, str]:
    """`A // B` between two names anywhere in the file: A -> B."""
    pairs: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.FloorDiv):
            left, right = node.left, node.right
            if isinstance(left, ast.Name) and isinstance(right, ast.Name):
                pairs[left.id] = right.id
    return pairs


def discover_parameters(source: str, cpu: bool) -> dict[str, Parameter]:
    """The searched parameters of a train.py (see the module docstring), in file order."""
    tree = parse_python(source)
    divides = _divisibility(tree)
    params: dict[str, Parameter] = {}
    for name, (stmt, literal) in top_literals(tree, cpu).items():
        param = space_for(name, literal_number(literal), stmt.lineno - 1)
        if param is not None:
            params[name] = param
    return {  # a dividend's grid is every multiple of its divisor: step 1, repaired after sampling
        name: replace(p, multiple_of=divides[name], step=1) if divides.get(name) in params else p
        for name, p in sorted(params.items(), key=lambda item: item[1].line)
    }


def line_value(line: str, name: str, cpu: bool, baseline_line: str) -> int | float | None:
    """The value one changed line of train.py sets `name` to, or None if it is not such a line.

    The line must be one statement that is the baseline's line with only the searched literal
    changed (its comment aside): `NAME = 0.008 + 1000.0` or `NAME = 0.002; import os` are not
    parameter changes, so they cannot label a run with values it did not train with."""
    try:
        tree, base = parse_python(line), parse_python(baseline_line)
    except (SyntaxError, ValueError):
        return None
    literals = top_literals(tree, cpu)
    if len(tree.body) != 1 or list(literals) != [name]:
        return None
    ours, theirs = literals[name][1], top_literals(base, cpu).get(name)
    if theirs is None:
        return None
    value = literal_number(ours)
    # The same statement with the literal put back to the baseline's: nothing else may differ.
    saved = ours.value
    ours.value = theirs[1].value
    same = ast.dump(tree) == ast.dump(base)
    ours.value = saved
    return value if same else None


def constant_only_values(
    code: Mapping[str, str], baseline: Mapping[str, str], params: Mapping[str, Parameter], cpu: bool
) -> dict[str, int | float] | None:
    """The parameter values of a run's code if it differs from the baseline only on parameter
    lines (same files, same line count); None otherwise. Cheap: lines are compared as text and
    only the changed ones are parsed."""
    if set(code) != set(baseline):
        return None
    if any(code[name] != text for name, text in baseline.items() if name != EDITABLE):
        return None
    values: dict[str, int | float] = {name: p.baseline for name, p in params.items()}
    ours, theirs = baseline[EDITABLE].splitlines(), code[EDITABLE].splitlines()
    if len(ours) != len(theirs):
        return None
    by_line = {p.line: name for name, p in params.items()}
    for index, (old, new) in enumerate(zip(ours, theirs, strict=True)):
        if old == new:
            continue
        name = by_line.get(index)
        if name is None or (value := line_value(new, name, cpu, old)) is None:
            return None
        values[name] = value
    return values


def literal_number(literal: ast.Constant) -> int | float:
    """A searched literal's value (an int or a float, never a bool: see _searched_literal)."""
    return cast(int | float, literal.value)


def literal_text(value: int | float) -> str:
    return str(int(value)) if isinstance(value, int) else repr(float(value))
