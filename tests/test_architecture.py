"""The server's shape: SQL only in the store, no import cycle, no module too large to read, and
nothing specific to one research target in the target-neutral code.

Each assertion names the offender: the module and line with SQL, the modules of a cycle, the
module over the size limit.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER = REPO_ROOT / "server"
STORE = SERVER / "store"
MAX_MODULE_LINES = 600

# SQL statements in string literals, and direct calls on a connection.
SQL_WORDS = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM"
    r"|CREATE\s+(TABLE|INDEX)|ALTER\s+TABLE)\b",
    re.IGNORECASE | re.DOTALL,
)
CONNECTION_CALLS = {"execute", "executemany", "executescript", "query"}


def server_modules() -> list[Path]:
    return sorted(p for p in SERVER.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SERVER.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_only_the_store_speaks_sql() -> None:
    offenders = []
    for path in server_modules():
        if STORE in path.parents:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and SQL_WORDS.search(node.value)
            ):
                offenders.append(f"{module_name(path)}:{node.lineno}: SQL text {node.value[:60]!r}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in CONNECTION_CALLS
                and _on_a_database(node.func.value)
            ):
                offenders.append(f"{module_name(path)}:{node.lineno}: .{node.func.attr}( on a db")
    assert not offenders, "SQL outside server/store/:\n" + "\n".join(offenders)


def _on_a_database(value: ast.expr) -> bool:
    """`db.execute(`, `self.db.query(`, `store.db.conn.execute(`, `conn.execute(` and the like."""
    names = []
    while isinstance(value, ast.Attribute):
        names.append(value.attr)
        value = value.value
    if isinstance(value, ast.Name):
        names.append(value.id)
    return any(name in ("db", "conn", "connection", "cursor") for name in names)


def import_graph() -> dict[str, set[str]]:
    """server module -> the server modules it imports, deferred and TYPE_CHECKING imports included."""
    modules = {module_name(p): p for p in server_modules()}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                # `import server.store.papers` also runs server.store: count the closest module.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_cycle_in_server() -> None:
    graph = import_graph()
    # A package's __init__ importing its own submodules is how a package re-exports: not a cycle
    # of concerns. Every other edge counts.
    for name in graph:
        graph[name] = {
            t for t in graph[name] if not (t.startswith(name + ".") or name.startswith(t + "."))
        }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in server/: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_server_module_is_too_large() -> None:
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in server_modules()}
    too_large = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_large, f"modules over {MAX_MODULE_LINES} lines: " + ", ".join(
        f"{name} ({n})" for name, n in sorted(too_large.items(), key=lambda item: -item[1])
    )


def test_the_design_doc_names_every_status_verdict_and_kind() -> None:
    """docs/design.md lists the record's vocabulary as server/record.py defines it."""
    from server.record import KINDS, STATUSES, VERDICTS

    design = (SERVER.parent / "docs" / "design.md").read_text()
    section = design[design.index("## Statuses and verdicts") :]
    section = section[: section.index("\n## ", 1)]
    named = set(re.findall(r"`([a-z_]+)`|\b([a-z_]+)\b", section.replace("|", " ")))
    words = {a or b for a, b in named}
    missing = [v for v in (*STATUSES, *VERDICTS, *KINDS) if v not in words]
    assert not missing, f"docs/design.md 'Statuses and verdicts' does not name: {missing}"


# Names that belong to the GPT target (trainer/), never to the target-neutral server and sandbox:
# the metric, its unit, the model family and its data. (A migration naming an old column marks its
# line "# legacy name".) A second target (targets/digits) runs
# through the same code, so a GPT assumption here would be a bug there.
GPT_SPECIFIC = re.compile(
    r"val_bpb|\bbpb\b|bits per byte|\bGPT\b|small-GPT|nanochat|tokeni[sz]er|\bvocab(_size)?\b"
    r"|lower is better|\bperplexity\b"
    r"|^\s*(from|import) trainer\b",  # the GPT target's own package
    re.IGNORECASE,
)
NEUTRAL_ROOTS = ("server", "sandbox")


def test_server_and_sandbox_name_nothing_gpt_specific() -> None:
    """server/ and sandbox/ (code, comments, the dashboard's script and page) say nothing that only
    holds for the GPT target; the metric's name, unit and direction come from target.toml."""
    found = []
    for root in NEUTRAL_ROOTS:
        for path in sorted((REPO_ROOT / root).rglob("*")):
            if path.suffix not in (".py", ".js", ".html", ".css") or "__pycache__" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if GPT_SPECIFIC.search(line) and "# legacy name" not in line:
                    found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, "GPT-specific names outside trainer/:\n" + "\n".join(found)
