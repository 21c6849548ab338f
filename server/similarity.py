"""Whether two changes to the editable files do the same thing, even when written differently.

Pure functions, no SQL and no lab: `describe_change(files, baseline)` turns a set of editable
files into a `Change` (a fingerprint of the normalised code, and the "effective edits" vs the
baseline), and `classify(a, b)` says whether two changes are a duplicate, near or different,
with a short reason an agent can read.

Normalising a Python file: parse it (ast drops comments and formatting), drop docstrings and
other bare string statements, fold constant arithmetic (`2**9` is `512`, `0.02*2` is `0.04`,
floats compared to 12 significant digits), rename the arguments and local variables of every
top-level function or method canonically (v0, v1, ... in order of first appearance), and
sort runs of adjacent top-level constant assignments by name (their order does not matter).
A file that does not parse, or whose syntax tree is too large or too deep, is compared as text
with whitespace collapsed. Duplicate means the normalised code is identical: a rule with no
false positives beyond what the normalisation itself asserts (bench/dedupe.py measures it).
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from server.seed_checks import parse_python

# Guards: the inputs are capped at 64 KiB per file already; a tree beyond these is compared as text.
MAX_NODES = 60_000
MAX_DEPTH = 120
# Folding never builds a number bigger than this (2**10**9 would hang the server).
MAX_FOLDED_MAGNITUDE = 1e300
MAX_POW_EXPONENT = 256
# At most this many edits, places and assignments are recorded per experiment (the rest are
# summarised by the fingerprint, which covers the whole code).
MAX_RECORDED = 400
# Jaccard over effective edits (or over the places they touch) at or above which a change is near.
NEAR_THRESHOLD = 0.5

MatchKind = Literal["duplicate", "near", "different"]


@dataclass(frozen=True)
class Change:
    """A change to the editable files, normalised: `fingerprint` is equal for the same normalised
    code; `edits` are the effective edits vs the baseline ('assign:LR=0.04', 'def:Model.forward:<hash>',
    'stmt+:<hash>'...); `touched` the places they touch ('LR', 'Model.forward'); `assignments`
    maps each changed top-level name to (old source, new source) for the reason text."""

    fingerprint: str
    edits: frozenset[str] = field(default_factory=frozenset)
    touched: frozenset[str] = field(default_factory=frozenset)
    assignments: tuple[tuple[str, str, str], ...] = ()
    text_fallback: bool = False


@dataclass(frozen=True)
class Match:
    """How two changes compare: `kind`, a one-line `reason`, and the Jaccard `score` of their edits."""

    kind: MatchKind
    reason: str
    score: float


# ------------------------------------------------------------------ normalising one file


class _TooComplex(ValueError):
    """The syntax tree is beyond MAX_NODES or MAX_DEPTH: compare as text."""


def _check_bounds(tree: ast.AST) -> None:
    nodes = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            raise _TooComplex
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _canonical_number(value: int | float) -> int | float:
    """Floats to 12 significant digits, so that 0.1*3 and 0.3 are the same value."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.12g}")
    return value


class _FoldConstants(ast.NodeTransformer):
    """Fold arithmetic on numeric constants, bounded: `2**9` -> 512, `-(0.5)` -> -0.5."""

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value: Any = node.value
        if _number(value):
            return ast.copy_location(ast.Constant(_canonical_number(value)), node)
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.operand, ast.Constant) and _number(node.operand.value):
            value: Any = node.operand.value
            if isinstance(node.op, ast.USub):
                return ast.copy_location(ast.Constant(_canonical_number(-value)), node)
            if isinstance(node.op, ast.UAdd):
                return ast.copy_location(ast.Constant(value), node)
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        left, right = node.left, node.right
        if not (
            isinstance(left, ast.Constant)
            and isinstance(right, ast.Constant)
            and _number(left.value)
            and _number(right.value)
        ):
            return node
        a: Any = left.value
        b: Any = right.value
        result: Any
        try:
            if isinstance(node.op, ast.Add):
                result = a + b
            elif isinstance(node.op, ast.Sub):
                result = a - b
            elif isinstance(node.op, ast.Mult):
                if abs(a) > MAX_FOLDED_MAGNITUDE or abs(b) > MAX_FOLDED_MAGNITUDE:
                    return node
                result = a * b
            elif isinstance(node.op, ast.Div):
                result = a / b
            elif isinstance(node.op, ast.FloorDiv):
                result = a // b
            elif isinstance(node.op, ast.Pow):
                if abs(b) > MAX_POW_EXPONENT or abs(a) > 2**64:
                    return node
                result = a**b
            else:
                return node
        except (ArithmeticError, ValueError):
            return node
        if isinstance(result, complex) or abs(result) > MAX_FOLDED_MAGNITUDE:
            return node
        return ast.copy_location(ast.Constant(_canonical_number(result)), node)


def _drop_bare_strings(body: list[ast.stmt]) -> list[ast.stmt]:
    """Docstrings and other bare string statements do nothing: drop them (keep a body non-empty)."""
    kept = [
        s
        for s in body
        if not (
            isinstance(s, ast.Expr)
            and isinstance(s.value, ast.Constant)
            and isinstance(s.value.value, str)
        )
    ]
    return kept or [ast.Pass()]


class _DropDocstrings(ast.NodeTransformer):
    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                setattr(node, name, _drop_bare_strings(body))
        return node


# Scopes inside a function whose bindings are not the function's own.
NESTED_SCOPES = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _local_names(
    function: ast.FunctionDef | ast.AsyncFunctionDef, keywords: frozenset[str]
) -> list[str]:
    """Arguments and names assigned in the function's own scope, in order of first appearance.
    Names bound only inside a nested scope (a def, lambda, class or comprehension) are not
    its locals: the function may read a global of that name, and renaming it there would make
    different code look the same. Names declared global or nonlocal are not local, and an
    argument whose name some call in the module passes as a keyword keeps it (renaming it
    would hide a keyword call that no longer matches)."""
    declared: set[str] = set(keywords)
    for node in ast.walk(function):
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
    order: list[str] = []
    seen: set[str] = set()

    def add(name: str) -> None:
        if name not in seen and name not in declared:
            seen.add(name)
            order.append(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(node.name)  # the name is bound here; its body is a scope of its own
            return
        if isinstance(node, NESTED_SCOPES):
            return
        if isinstance(node, ast.arg):
            add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            add(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(function.args)
    for statement in function.body:
        visit(statement)
    return order


class _RenameLocals(ast.NodeTransformer):
    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in self.mapping:
            node.id = self.mapping[node.id]
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        if node.arg in self.mapping:
            node.arg = self.mapping[node.arg]
        self.generic_visit(node)
        return node


def _rename_function_locals(
    function: ast.FunctionDef | ast.AsyncFunctionDef, keywords: frozenset[str]
) -> None:
    mapping = {name: f"v{i}" for i, name in enumerate(_local_names(function, keywords))}
    renamer = _RenameLocals(mapping)
    renamer.visit(function.args)
    function.body = [renamer.visit(statement) for statement in function.body]


def _functions_to_rename(module: ast.Module) -> Iterable[ast.FunctionDef | ast.AsyncFunctionDef]:
    for statement in module.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield statement
        elif isinstance(statement, ast.ClassDef):
            for member in statement.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield member


def _constant_assignment(statement: ast.stmt) -> str | None:
    """The name a top-level `NAME = <constant>` assigns (after folding), else None."""
    if (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
        and isinstance(statement.value, ast.Constant)
    ):
        return statement.targets[0].id
    return None


def _sort_constant_runs(body: list[ast.stmt]) -> list[ast.stmt]:
    """Adjacent top-level constant assignments to distinct names commute: sort each run by name."""
    result: list[ast.stmt] = []
    run: list[ast.stmt] = []

    def flush() -> None:
        names = [_constant_assignment(s) for s in run]
        if len(set(names)) == len(names):
            run.sort(key=lambda s: _constant_assignment(s) or "")
        result.extend(run)
        run.clear()

    for statement in body:
        if _constant_assignment(statement) is not None:
            run.append(statement)
        else:
            flush()
            result.append(statement)
    flush()
    return result


def normalise_python(text: str) -> ast.Module:
    """The normalised syntax tree of a Python file; SyntaxError/ValueError/_TooComplex if it cannot be."""
    tree = parse_python(text)
    _check_bounds(tree)
    tree = _DropDocstrings().visit(tree)
    tree = _FoldConstants().visit(tree)
    keywords = frozenset(
        node.arg for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg
    )
    for function in _functions_to_rename(tree):
        _rename_function_locals(function, keywords)
    tree.body = _sort_constant_runs(tree.body)
    return tree


def normalise_text(text: str) -> str:
    """A file compared as text: whitespace runs inside lines collapsed, blank lines and trailing
    spaces dropped; indentation kept (in Python it is meaning: a statement moved out of a loop
    is another program)."""
    lines = []
    for line in text.expandtabs(8).splitlines():
        body = re.sub(r"\s+", " ", line).strip()
        if body:
            lines.append(" " * (len(line) - len(line.lstrip())) + body)
    return "\n".join(lines)


def _digest(text: str, size: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


# ------------------------------------------------------------------ describing a change


def _statement_key(statement: ast.stmt) -> str:
    """Where a top-level statement lives: a def/class name, an assigned name, or its own dump."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return f"def:{statement.name}"
    if (
        isinstance(statement, (ast.Assign, ast.AnnAssign))
        and len(getattr(statement, "targets", [getattr(statement, "target", None)])) == 1
    ):
        target = statement.targets[0] if isinstance(statement, ast.Assign) else statement.target
        if isinstance(target, ast.Name):
            return f"assign:{target.id}"
    return f"stmt:{_digest(ast.dump(statement))}"


def _module_parts(tree: ast.Module) -> dict[str, list[ast.stmt]]:
    """Top-level statements by place; a class is split into its members (`def:Model.forward`)."""
    parts: dict[str, list[ast.stmt]] = {}
    for statement in tree.body:
        if isinstance(statement, ast.ClassDef):
            header = copy.copy(statement)  # the class line, bases and decorators
            header.body = [ast.Pass()]
            parts.setdefault(f"def:{statement.name}", []).append(header)
            for member in statement.body:
                key = _statement_key(member)
                parts.setdefault(f"{key}@{statement.name}", []).append(member)
        else:
            parts.setdefault(_statement_key(statement), []).append(statement)
    return parts


def _place_name(key: str) -> str:
    """'def:forward@Model' -> 'Model.forward'; 'assign:LR' -> 'LR'; 'stmt:ab12' -> 'a statement'."""
    kind, _, rest = key.partition(":")
    name, _, owner = rest.partition("@")
    if kind == "stmt":
        return f"a statement in {owner}" if owner else "a top-level statement"
    return f"{owner}.{name}" if owner else name


@functools.lru_cache(maxsize=16)
def _parts_of(text: str) -> tuple[dict[str, tuple[str, ...]], dict[str, str]] | None:
    """A file's normalised parts (place -> statement dumps) and its single assignments' values
    (place -> source), cached: the baseline is the same for every change compared."""
    try:
        tree = normalise_python(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return _dumped_parts(tree)


def _dumped_parts(tree: ast.Module) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    dumps: dict[str, tuple[str, ...]] = {}
    values: dict[str, str] = {}
    for key, statements in _module_parts(tree).items():
        dumps[key] = tuple(ast.dump(s) for s in statements)
        value = getattr(statements[0], "value", None)
        if key.startswith("assign:") and len(statements) == 1 and isinstance(value, ast.expr):
            values[key] = ast.unparse(value)
    return dumps, values


def _python_edits(
    name: str, old_text: str | None, after: ast.Module
) -> tuple[set[str], set[str], list[tuple[str, str, str]]]:
    edits: set[str] = set()
    touched: set[str] = set()
    assignments: list[tuple[str, str, str]] = []
    before = _parts_of(old_text) if old_text is not None else None
    old_parts, old_values = before if before is not None else ({}, {})
    new_parts, new_values = _dumped_parts(after)
    for key in sorted(set(old_parts) | set(new_parts)):
        old = old_parts.get(key, ())
        new = new_parts.get(key, ())
        if old == new:
            continue
        place = _place_name(key)
        touched.add(f"{name}:{place}")
        if key in new_values and len(old) <= 1:
            value = new_values[key]
            edits.add(f"{name}:assign:{place}={value}")
            assignments.append((place, old_values.get(key, "(none)"), value))
        elif not new:
            edits.add(f"{name}:removed:{place}:{_digest(''.join(old))}")
        else:
            edits.add(f"{name}:changed:{place}:{_digest(''.join(new))}")
    return edits, touched, assignments


def describe_change(files: Mapping[str, str], baseline: Mapping[str, str]) -> Change:
    """Normalise `files` (editable file name -> text) and describe them against `baseline`."""
    fingerprint_parts: list[str] = []
    edits: set[str] = set()
    touched: set[str] = set()
    assignments: list[tuple[str, str, str]] = []
    fallback = False
    for name in sorted(set(files) | set(baseline)):
        text = files.get(name)
        old_text = baseline.get(name)
        if text is None:
            fingerprint_parts.append(f"{name}\0(deleted)")
            edits.add(f"{name}:deleted")
            touched.add(f"{name}:the file")
            continue
        new_tree: ast.Module | None = None
        if name.endswith(".py"):
            try:
                new_tree = normalise_python(text)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                new_tree = None
        if new_tree is None:
            fallback = fallback or name.endswith(".py")
            normal = normalise_text(text)
            fingerprint_parts.append(f"{name}\0text\0{normal}")
            if old_text is None or normalise_text(old_text) != normal:
                edits.add(f"{name}:text:{_digest(normal)}")
                touched.add(f"{name}:the file")
            continue
        fingerprint_parts.append(f"{name}\0ast\0{ast.dump(new_tree)}")
        e, t, a = _python_edits(name, old_text, new_tree)
        edits |= e
        touched |= t
        assignments.extend(a)
    return Change(
        fingerprint=_digest("\0\0".join(fingerprint_parts), 32),
        # Bounded like a recorded change (MAX_RECORDED): comparing two changes stays cheap, and
        # a change is compared in the same form it is recorded in.
        edits=frozenset(sorted(edits)[:MAX_RECORDED]),
        touched=frozenset(sorted(touched)[:MAX_RECORDED]),
        assignments=tuple(sorted(assignments)),
        text_fallback=fallback,
    )


# ------------------------------------------------------------------ comparing two changes


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def similarity(a: Change, b: Change) -> float:
    """1.0 for the same normalised code, else the Jaccard index of the effective edits."""
    return 1.0 if a.fingerprint == b.fingerprint else jaccard(a.edits, b.edits)


def _short(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."


def _assignment_words(assignments: Iterable[tuple[str, str, str]]) -> str:
    shown = list(assignments)
    words = "; ".join(f"{n} {_short(old)} -> {_short(new)}" for n, old, new in shown[:3])
    return words + (f"; and {len(shown) - 3} more" if len(shown) > 3 else "")


def _place_words(touched: Iterable[str]) -> str:
    places = sorted(t.split(":", 1)[1] for t in touched)
    shown = ", ".join(places[:4])
    return shown + (f" and {len(places) - 4} more" if len(places) > 4 else "")


# The reasons that quote nothing of the code (every other reason names its constants, values
# or places: text from the code, its authors' words when it reaches another agent).
EXACT_REASON = "byte for byte"
NORMALISED_REASON = "the same code after normalising names, comments and formatting"
BASELINE_REASON = "both leave the code as the baseline"
FIXED_REASONS = frozenset({EXACT_REASON, NORMALISED_REASON, BASELINE_REASON})


def classify(a: Change, b: Change) -> Match:
    """Duplicate (the same normalised code), near (most edits shared, or the same places changed
    differently) or different, with a one-line reason."""
    if a.fingerprint == b.fingerprint:
        if not a.edits:
            return Match("duplicate", BASELINE_REASON, 1.0)
        only_assignments = all(":assign:" in e for e in a.edits)
        if only_assignments and a.assignments:
            word = "change" if len(a.assignments) == 1 else "changes"
            return Match(
                "duplicate",
                f"the same constant {word}: {_assignment_words(a.assignments)}",
                1.0,
            )
        return Match(
            "duplicate", "the same code after normalising names, comments and formatting", 1.0
        )
    score = jaccard(a.edits, b.edits)
    if a.edits and b.edits and score >= NEAR_THRESHOLD:
        theirs = set(b.assignments)
        shared = [x for x in a.assignments if x in theirs]
        detail = f" ({_assignment_words(shared)})" if shared else ""
        return Match(
            "near",
            f"{len(a.edits & b.edits)} of {len(a.edits | b.edits)} edits are the same{detail}",
            score,
        )
    places = jaccard(a.touched, b.touched)
    if a.touched and b.touched and places >= NEAR_THRESHOLD:
        return Match(
            "near",
            f"changes the same places differently: {_place_words(a.touched & b.touched)}",
            score,
        )
    return Match("different", "different edits", score)


def words_overlap(a: str, b: str) -> float:
    """Jaccard over the lower-cased words of two texts (for descriptions and claim texts)."""
    wa = set(re.findall(r"[a-z0-9_.]+", a.lower()))
    wb = set(re.findall(r"[a-z0-9_.]+", b.lower()))
    return jaccard(frozenset(wa), frozenset(wb)) if wa and wb else 0.0


def change_to_record(change: Change) -> dict[str, list[Any]]:
    """A Change's edits as a JSON-able dict (the `change_edits` column); see change_from_record."""
    return {
        "edits": sorted(change.edits)[:MAX_RECORDED],
        "touched": sorted(change.touched)[:MAX_RECORDED],
        "assignments": [[_short(x, 200) for x in a] for a in change.assignments[:MAX_RECORDED]],
    }


def change_from_record(fingerprint: str | None, record: object) -> Change | None:
    """The Change stored by change_to_record (None for a row recorded before fingerprints)."""
    if not fingerprint or not isinstance(record, dict):
        return None
    try:
        return Change(
            fingerprint=fingerprint,
            edits=frozenset(str(e) for e in record.get("edits", [])),
            touched=frozenset(str(t) for t in record.get("touched", [])),
            assignments=tuple(
                (str(a[0]), str(a[1]), str(a[2])) for a in record.get("assignments", [])
            ),
        )
    except (TypeError, IndexError, AttributeError):
        return None
