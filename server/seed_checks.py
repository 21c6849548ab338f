"""Code whose results do not move with the server's seed: found in the code, and in the results.

The server owns the seed: every run gets AR_SEED (the same one for paired comparisons, fresh
ones for confirmation), and the baseline reads it once, in the contract line
`SEED = int(os.environ.get("AR_SEED", "0"))`, then seeds torch and its data generator with
SEED. A program that picks its own random stream turns the fixed server seed into a lottery
ticket: try many streams, keep the lucky draw. Three flags, each of which rules out `improved`:

- `seed_source` (static): a seeding call whose seed is not SEED itself (a constant, SEED + 1,
  the clock, the pid, os.urandom, a file), a set RNG state, an RNG built without a seed (it
  starts from a constant or from the OS), a global RNG the program draws from but never seeds
  with SEED, the baseline's seeding removed or moved after the first draw, or the contract line
  changed, rebound or bypassed (AR_SEED read or written anywhere else).
- `rng_shift` (static): random numbers drawn and thrown away (`torch.randn(7)` before the model
  is built, `_ = torch.rand(3)`, `random.random()`): a seed change without the word seed.
  Draws whose value is used (an init, dropout, data sampling) are research and not flagged;
  nor is anything the baseline itself does.
- `seed_ignored` (dynamic, `seed_insensitive`): runs of the same code at different seeds gave
  bitwise-identical results: whatever the code says, its results ignore the seed.

The static review reads the whole new code of each editable Python file (AST, scope-aware,
not flow-sensitive): it catches the disguises an agent would plausibly write, not every
possible one (a draw stored in a name that is read elsewhere in its scope, or code built at
run time, passes it). What holds against the rest is dynamic: confirmation at fresh seeds and
`seed_ignored`. Code that does not parse is flagged (the review cannot vouch for it).
"""

from __future__ import annotations

import ast
import functools
import math
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from server.diff_review import Flag
from server.random_flow import SEEDED_CONSTRUCTORS, CodeIndex, bound_names

SEED_SOURCE = "seed_source"
RNG_SHIFT = "rng_shift"
SEED_IGNORED = "seed_ignored"
# Every seed flag rules out `improved` on its own (server/recording.py DISQUALIFYING_FLAGS).
SEED_FLAGS = (SEED_SOURCE, RNG_SHIFT, SEED_IGNORED)
CONTRACT_VARIABLE = "AR_SEED"
SHOWN_FINDINGS = 3

_SEED_SOURCE_ADVICE = (
    "The server sets AR_SEED (one seed for paired comparisons, fresh seeds for confirmation); "
    "a random stream of the program's own choosing measures luck, not an idea, and can never "
    "count as an improvement. Keep the contract line as shipped and seed every RNG with SEED "
    "itself: torch.manual_seed(SEED), torch.Generator().manual_seed(SEED), np.random.seed(SEED), "
    "random.seed(SEED)."
)
_RNG_SHIFT_ADVICE = (
    "Drawing random numbers only to throw them away moves the random stream: it is a seed "
    "change in disguise, measures luck, not an idea, and can never count as an improvement. "
    "Remove the draw; randomness that matters (init, dropout, data order) is fine when its "
    "value is used."
)

# Calls that seed a global RNG -> the keyword of their seed (else their first argument).
_GLOBAL_SEEDERS = {
    **dict.fromkeys(
        ("torch." + n for n in ["manual_seed", "random.manual_seed", "cuda.manual_seed", "cuda.manual_seed_all", "mps.manual_seed", "xpu.manual_seed", "xpu.manual_seed_all"]),
        "seed",
    ),
    **dict.fromkeys(("torch." + n for n in ["seed", "random.seed", "cuda.seed", "cuda.seed_all"]), ""),
    "random.seed": "a",
    "numpy.random.seed": "seed",
}  # fmt: skip
_STATE_SETTERS = {"set_rng_state", "set_rng_state_all", "set_state", "setstate"}
_ENV_MUTATORS = {"clear", "pop", "popitem", "update", "setdefault", "__setitem__", "__delitem__"}
# Where a seed that is not SEED came from, by the name of what it calls or reads.
_ENTROPY_HINTS = {
    **dict.fromkeys(("time", "perf_counter", "monotonic", "time_ns"), "the clock"),
    **dict.fromkeys(("urandom", "randbits", "token_bytes", "uuid4"), "OS entropy"),
    **dict.fromkeys(("open", "read", "read_text"), "a file"),
    "getpid": "the process id",
    "hash": "a hash",
}


@dataclass(frozen=True)
class _Finding:
    flag: str
    line: int
    what: str  # what was found, in words
    source: str  # the code, one line
    file: str = ""


def review_seed_code(files: Mapping[str, str], baseline_files: Mapping[str, str]) -> list[Flag]:
    """`seed_source` and `rng_shift` flags on the new code of the editable Python files, judged
    against the baseline's (what the baseline itself does is never flagged). Empty when clean."""
    findings: list[_Finding] = []
    for name in sorted(files):
        if not name.endswith(".py"):
            continue
        baseline = baseline_files.get(name)
        findings += [
            _Finding(f.flag, f.line, f.what, f.source, name)
            for f in _review_file(files[name], baseline)
        ]
    flags = []
    for flag, advice, lead in (
        (SEED_SOURCE, _SEED_SOURCE_ADVICE, "takes its randomness from somewhere other than SEED"),
        (RNG_SHIFT, _RNG_SHIFT_ADVICE, "draws random numbers and throws them away"),
    ):
        mine = [f for f in findings if f.flag == flag]
        if not mine:
            continue
        shown = "; ".join(f"{f.file} line {f.line}: {f.what}" for f in mine[:SHOWN_FINDINGS])
        more = f" (and {len(mine) - SHOWN_FINDINGS} more)" if len(mine) > SHOWN_FINDINGS else ""
        reason = f"{lead}: {shown}{more}. {advice}"
        flags.append(Flag(flag, reason, tuple(f"{f.line}: {f.source}" for f in mine)))
    return flags


def _review_file(text: str, baseline: str | None) -> list[_Finding]:
    """The findings in one file that the baseline's version of it does not have."""
    try:
        tree = parse_python(text)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None) or 0
        what = f"the file does not parse ({exc.__class__.__name__}: {getattr(exc, 'msg', exc)}), so the seed review cannot vouch for it"
        return [_Finding(SEED_SOURCE, line, what, "")]
    contract, baseline_findings = _baseline_review(baseline)
    found = _Analysis(tree, text, dict(contract)).findings()
    if baseline_findings is None:
        return found
    # What the baseline does itself is not the agent's doing (matched by flag and code).
    already = dict(baseline_findings)
    new = []
    for f in found:
        if already.get((f.flag, f.source), 0) > 0:
            already[(f.flag, f.source)] -= 1
        else:
            new.append(f)
    return new


@functools.lru_cache(maxsize=16)
def _baseline_review(
    baseline: str | None,
) -> tuple[dict[str, str], dict[tuple[str, str], int] | None]:
    """The baseline's contract lines and its own findings, counted by (flag, code): the same
    baseline text is reviewed once per process, not on every submit."""
    base_tree = _parse_or_none(baseline)
    if base_tree is None or baseline is None:
        return {}, None
    contract = _contract_lines(base_tree)
    counts: dict[tuple[str, str], int] = {}
    for f in _Analysis(base_tree, baseline, dict(contract)).findings():
        counts[(f.flag, f.source)] = counts.get((f.flag, f.source), 0) + 1
    return contract, counts


# CPython 3.11's AST constructor keeps its recursion depth in shared state: two threads parsing
# at once (two agents' run_experiment calls planning their runs) can fail with "SystemError: AST
# constructor recursion depth mismatch". One parse at a time.
_PARSE_LOCK = threading.Lock()


def parse_python(text: str) -> ast.Module:
    """ast.parse, one thread at a time (see _PARSE_LOCK)."""
    with _PARSE_LOCK:
        return ast.parse(text)


def _parse_or_none(text: str | None) -> ast.Module | None:
    if text is None:
        return None
    try:
        return parse_python(text)
    except (SyntaxError, ValueError):
        return None


def _contract_lines(tree: ast.Module) -> dict[str, str]:
    """The baseline's contract seed names -> the dump of the module-level line that reads AR_SEED."""
    lines = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and _mentions_contract(stmt.value):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    lines[target.id] = ast.dump(stmt)
    return lines


def _mentions_contract(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Constant) and isinstance(n.value, str) and CONTRACT_VARIABLE in n.value
        for n in ast.walk(node)
    ) or any(isinstance(n, ast.keyword) and n.arg == CONTRACT_VARIABLE for n in ast.walk(node))


class _Analysis(CodeIndex):
    """One file's AST: imports resolved, parents and scopes known, then the checks."""

    def __init__(self, tree: ast.Module, text: str, contract: Mapping[str, str]) -> None:
        super().__init__(tree)
        self.lines = text.splitlines()
        self.contract = contract
        self.seed_names = self._seed_aliases()

    # -- names ---------------------------------------------------------------------------
    def _seed_aliases(self) -> set[str]:
        """The contract's seed names, and names only ever assigned one of them (`s = SEED`)."""
        aliases = set(self.contract)
        bindings: dict[str, list[ast.AST | None]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        bindings.setdefault(target.id, []).append(node.value)
            parent = self.parent.get(node)
            if isinstance(parent, ast.Assign) and node in parent.targets:
                continue  # counted above, with its value
            for name in bound_names(node):
                bindings.setdefault(name, []).append(None)  # bound otherwise: not an alias
        changed = True
        while changed:
            changed = False
            for name, values in bindings.items():
                if name in aliases or not values:
                    continue
                if all(isinstance(v, ast.Name) and v.id in aliases for v in values):
                    aliases.add(name)
                    changed = True
        return aliases

    # -- the checks ----------------------------------------------------------------------
    def findings(self) -> list[_Finding]:
        found = self._contract_findings() + self._seeding_findings() + self._shift_findings()
        return sorted(found, key=lambda f: (f.line, f.flag, f.what))

    def _finding(self, flag: str, node: ast.AST, what: str) -> _Finding:
        line = getattr(node, "lineno", 0)
        source = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        return _Finding(flag, line, what, source)

    def _contract_findings(self) -> list[_Finding]:
        found = []
        contract_statements = []
        for name, dump in self.contract.items():
            same = [
                s
                for s in self.tree.body
                if isinstance(s, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name for t in s.targets)
            ]
            exact = [s for s in same if ast.dump(s) == dump]
            if exact:
                contract_statements.append(exact[0])
            elif same:
                found.append(
                    self._finding(
                        SEED_SOURCE,
                        same[0],
                        f"the contract line that sets {name} from {CONTRACT_VARIABLE} was changed",
                    )
                )
            else:
                found.append(
                    _Finding(
                        SEED_SOURCE,
                        0,
                        f"the contract line that sets {name} from {CONTRACT_VARIABLE} is missing",
                        "",
                    )
                )
        reported = contract_statements + [s for s in self.tree.body if _is_changed(s, found)]
        inside = {id(n) for s in reported for n in ast.walk(s)}
        for node in ast.walk(self.tree):
            if id(node) in inside:
                continue
            for name in bound_names(node):
                if name in self.contract:
                    what = f"{name} is bound again outside the contract line"
                    found.append(self._finding(SEED_SOURCE, node, what))
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and not self._is_bare_string(node)
            ):
                if CONTRACT_VARIABLE in node.value:
                    found.append(
                        self._finding(
                            SEED_SOURCE,
                            node,
                            f"{CONTRACT_VARIABLE} is read or written outside the contract line",
                        )
                    )
                elif node.value in self.contract:
                    found.append(
                        self._finding(
                            SEED_SOURCE,
                            node,
                            f"the name {node.value!r} is used as a string (globals(), setattr): the seed must not be rewritten",
                        )
                    )
            if isinstance(node, ast.keyword) and node.arg == CONTRACT_VARIABLE:
                found.append(
                    self._finding(
                        SEED_SOURCE,
                        self.parent.get(node, node),
                        f"{CONTRACT_VARIABLE} is set outside the contract line",
                    )
                )
            found += self._env_write(node)
        return found

    def _is_bare_string(self, node: ast.Constant) -> bool:
        """A docstring or a string statement: it does nothing."""
        return isinstance(self.parent.get(node), ast.Expr)

    def _env_write(self, node: ast.AST) -> list[_Finding]:
        """os.environ changed in a way that can reach AR_SEED (its key, an unknown key, or all)."""

        def is_environ(n: ast.AST) -> bool:
            return self.qualified(n) == "os.environ"

        def risky_key(key: ast.AST | None) -> bool:
            return not (isinstance(key, ast.Constant) and isinstance(key.value, str)) or (
                CONTRACT_VARIABLE in key.value
            )

        what = "changes the environment the contract's seed is read from"
        written = isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del))
        if written and is_environ(node.value) and risky_key(node.slice):  # type: ignore[attr-defined]
            return [self._finding(SEED_SOURCE, node, what)]
        if isinstance(node, ast.Call):
            qual = self.qualified(node.func) or ""
            if qual in ("os.putenv", "os.unsetenv") and risky_key(
                node.args[0] if node.args else None
            ):
                return [self._finding(SEED_SOURCE, node, what)]
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and is_environ(func.value)
                and func.attr in _ENV_MUTATORS
            ):
                key = node.args[0] if node.args else None
                if func.attr in ("clear", "popitem", "update") or risky_key(key):
                    return [self._finding(SEED_SOURCE, node, what)]
        return []

    def _seed_argument(self, call: ast.Call, keyword: str) -> ast.AST | None:
        if call.args:
            return call.args[0]
        return next((k.value for k in call.keywords if k.arg == keyword), None)

    def _seed_problem(self, seed: ast.AST | None) -> str:
        """'' when the seed is SEED itself; else what it is, in words."""
        if isinstance(seed, ast.Name) and seed.id in self.seed_names:
            return ""
        if seed is None:
            return "no seed, so it starts from the OS or a built-in constant"
        text = ast.unparse(seed)
        for node in ast.walk(seed):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
            if isinstance(node, (ast.Attribute, ast.Name)) and name in _ENTROPY_HINTS:
                return f"the seed `{text}` comes from {_ENTROPY_HINTS[name]}, not SEED"
        return f"the seed is `{text}`, not SEED itself"

    def _seeding_findings(self) -> list[_Finding]:
        found = []
        seeded_globals: dict[str, int] = {}  # module ('torch', 'random', 'numpy') -> body index
        for index, stmt in enumerate(self.tree.body):
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                qual = self.qualified(stmt.value.func) or ""
                if qual in _GLOBAL_SEEDERS and not self._seed_problem(
                    self._seed_argument(stmt.value, _GLOBAL_SEEDERS[qual])
                ):
                    seeded_globals.setdefault(qual.split(".")[0], index)
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            func, qual = node.func, self.qualified(node.func) or ""
            method = func.attr if isinstance(func, ast.Attribute) else ""
            if qual in _GLOBAL_SEEDERS or qual in SEEDED_CONSTRUCTORS:
                keyword = _GLOBAL_SEEDERS.get(qual) or SEEDED_CONSTRUCTORS.get(qual, "seed")
                problem = self._seed_problem(self._seed_argument(node, keyword))
                if problem:
                    found.append(self._finding(SEED_SOURCE, node, f"`{qual}(...)`: {problem}"))
            elif method in _STATE_SETTERS or qual.rsplit(".", 1)[-1] in _STATE_SETTERS:
                found.append(
                    self._finding(
                        SEED_SOURCE,
                        node,
                        f"`{method or qual}` sets an RNG state: the stream no longer follows SEED",
                    )
                )
            elif method in ("manual_seed", "seed", "seed_all", "manual_seed_all"):
                # any object's seeding, qualified or not (torch.default_generator.manual_seed(7))
                problem = self._seed_problem(self._seed_argument(node, "seed"))
                if problem:
                    found.append(self._finding(SEED_SOURCE, node, f"`.{method}(...)`: {problem}"))
            elif qual == "torch.Generator" and not self._is_seeded_generator(node):
                found.append(
                    self._finding(
                        SEED_SOURCE,
                        node,
                        "a torch.Generator that is never seeded with SEED starts from a fixed built-in seed",
                    )
                )
        found += self._global_stream_findings(seeded_globals)
        return found

    def _is_seeded_generator(self, call: ast.Call) -> bool:
        """torch.Generator(...).manual_seed(...) chained, or assigned to g and g.manual_seed(...)
        called somewhere (that call is checked on its own)."""
        parent = self.parent.get(call)
        if isinstance(parent, ast.Attribute) and parent.attr == "manual_seed":
            return True
        if isinstance(parent, ast.Assign):
            names = {t.id for t in parent.targets if isinstance(t, ast.Name)}
            return any(
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr == "manual_seed"
                and isinstance(n.func.value, ast.Name)
                and n.func.value.id in names
                for n in ast.walk(self.tree)
            )
        return False

    def _global_stream_findings(self, seeded: Mapping[str, int]) -> list[_Finding]:
        """Draws from a global RNG that is not seeded with SEED at module level before the first
        module-level statement that draws (or calls code of this file that may)."""
        found = []
        first_use: dict[str, int] = {}
        for index, stmt in enumerate(self.tree.body):
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for node in ast.walk(stmt):
                if not isinstance(node, ast.Call):
                    continue
                qual = self.qualified(node.func) or ""
                local = isinstance(node.func, ast.Name) and node.func.id in self.defined
                for module in ("torch", "random", "numpy"):
                    if local or (self.draw_kind(node) and qual.startswith(module + ".")):
                        first_use.setdefault(module, index)
        draws: dict[str, ast.Call] = {}
        for node in ast.walk(self.tree):
            if (
                isinstance(node, ast.Call)
                and self.draw_kind(node)
                and not self._has_generator(node)
            ):
                qual = self.qualified(node.func) or ""
                module = qual.split(".")[0]
                if module in ("torch", "random", "numpy") and not qual.startswith(
                    "numpy.random.Generator"
                ):
                    draws.setdefault(module, node)
        names = {
            "torch": "torch.manual_seed(SEED)",
            "random": "random.seed(SEED)",
            "numpy": "np.random.seed(SEED)",
        }
        for module, index in seeded.items():
            if module in first_use and first_use[module] < index:
                stmt = self.tree.body[index]
                found.append(
                    self._finding(
                        SEED_SOURCE,
                        stmt,
                        f"{names[module]} comes after random numbers are first drawn, so those draws ignore SEED",
                    )
                )
        for module, node in draws.items():
            if module not in seeded:
                found.append(
                    self._finding(
                        SEED_SOURCE,
                        node,
                        f"draws from the global {module} RNG, which is never seeded with SEED at the top level ({names[module]})",
                    )
                )
        return found

    @staticmethod
    def _has_generator(call: ast.Call) -> bool:
        return any(k.arg == "generator" for k in call.keywords)

    def _shift_findings(self) -> list[_Finding]:
        live = self.live_names()
        found = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and self.draw_kind(node) and self.thrown_away(node, live):
                found.append(
                    self._finding(
                        RNG_SHIFT, node, f"`{_short(ast.unparse(node))}` is drawn and never used"
                    )
                )
        return found


def _is_changed(stmt: ast.stmt, found: list[_Finding]) -> bool:
    """The statement is the changed contract line already reported."""
    return any(f.line == stmt.lineno and "was changed" in f.what for f in found)


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


# -- the dynamic check --------------------------------------------------------------------------


# A run's full-precision figures: the metric, or (metric, tie-break) where the target has a
# tie-break (a discrete metric such as an accuracy repeats across honest seeds; its log-loss does not).
Figures = float | tuple[float, ...]


def _finite_figures(value: Figures | None) -> bool:
    if value is None:
        return False
    return all(math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,)))


def _bits(value: Figures) -> bytes:
    return b"".join(struct.pack("<d", v) for v in (value if isinstance(value, tuple) else (value,)))


def seed_insensitive(values_by_seed: Mapping[int, Figures | None]) -> bool:
    """True when at least two distinct seeds gave bitwise-identical values (full precision, as
    the evaluator reported them). Failed runs (None) and non-finite values are left out: they
    say nothing about the seed. Honest runs at different seeds differ in their last bits."""
    seen: set[bytes] = set()
    for value in values_by_seed.values():
        if value is None or not _finite_figures(value):
            continue
        bits = _bits(value)
        if bits in seen:
            return True
        seen.add(bits)
    return False


def seed_ignored_flag(values_by_seed: Mapping[int, Figures | None]) -> dict[str, object] | None:
    """The `seed_ignored` flag (as stored with a run) when the runs ignore the seed; else None."""
    if not seed_insensitive(values_by_seed):
        return None
    groups: dict[bytes, list[int]] = {}
    figures: dict[bytes, Figures] = {}
    for seed, value in values_by_seed.items():
        if value is not None and _finite_figures(value):
            groups.setdefault(_bits(value), []).append(seed)
            figures[_bits(value)] = value
    same = max(groups.values(), key=len)
    value = figures[next(b for b, s in groups.items() if s is same)]
    seeds = ", ".join(str(s) for s in sorted(same))
    return {
        "name": SEED_IGNORED,
        "reason": f"runs of this code at seeds {seeds} gave the same result to the last bit "
        f"({value!r}): its results do not move with the seed (AR_SEED), so they measure a "
        "stream the program chose, not an idea, and can never count as an improvement. Seed "
        "every RNG with SEED (torch.manual_seed(SEED), torch.Generator().manual_seed(SEED)) "
        "and draw the randomness that training needs from those.",
        "lines": [],
    }
