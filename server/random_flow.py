"""Random draws in a Python file and where their values go: an AST index (imports, parents,
scopes), which calls draw random numbers (torch, numpy, random, RNG objects, layers whose
construction draws their initial weights, the file's own functions that return a draw), and
a data-flow reading that says whether a value reaches anything kept.

Made for the seed review (server/seed_checks.py): a random draw whose value is thrown away
is a seed change in disguise. Scope-aware (functions, lambdas and classes have their own
names) but not flow-sensitive: a name counts as read if it is read anywhere in its scope.
It errs towards "kept" wherever it cannot tell (an unknown call may store what it gets), so
honest code is not flagged; the price is that some disguises pass (see seed_checks).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

# What a value can pass through and still be thrown away: pure methods and calls.
PURE_METHODS = set(
    [
        "sum",
        "mean",
        "item",
        "tolist",
        "float",
        "double",
        "half",
        "bfloat16",
        "int",
        "long",
        "to",
        "cpu",
        "cuda",
        "numpy",
        "detach",
        "clone",
        "view",
        "reshape",
        "size",
        "numel",
        "std",
        "var",
        "max",
        "min",
        "abs",
        "norm",
        "flatten",
        "squeeze",
        "unsqueeze",
        "contiguous",
        "t",
        "argmax",
        "argmin",
        "any",
        "all",
        "prod",
        "exp",
        "log",
        "sqrt",
        "round",
        "astype",
        "copy",
    ]
)
PURE_CALLS = set(
    [
        "print",
        "len",
        "float",
        "int",
        "bool",
        "str",
        "repr",
        "format",
        "abs",
        "sum",
        "min",
        "max",
        "round",
        "list",
        "tuple",
        "sorted",
        "hash",
        "id",
        "type",
        "set",
        "frozenset",
        "logging.info",
        "logging.debug",
        "logging.warning",
        "torch.nn.Parameter",
        "torch.nn.Sequential",
        "torch.nn.ModuleList",
        "torch.nn.ModuleDict",
        "torch.nn.ParameterList",
    ]
)
# Methods that write their argument (or random numbers) into their receiver.
MUTATORS = set(
    [
        "append",
        "extend",
        "insert",
        "add",
        "update",
        "copy_",
        "set_",
        "fill_",
        "add_",
        "mul_",
        "sub_",
        "div_",
        "addcmul_",
        "addcdiv_",
        "lerp_",
        "clamp_",
        "normal_",
        "uniform_",
        "random_",
        "bernoulli_",
        "exponential_",
        "geometric_",
        "log_normal_",
        "cauchy_",
    ]
)
# Constructors of an RNG object, seeded by their first argument (none: from the OS).
SEEDED_CONSTRUCTORS = {
    **dict.fromkeys(
        ("numpy.random." + n for n in ["default_rng", "RandomState", "PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"]),
        "seed",
    ),
    "numpy.random.SeedSequence": "entropy",
    "random.Random": "x",
    "torch.quasirandom.SobolEngine": "seed",
}  # fmt: skip
FUNCTIONAL_DRAWS = {
    *("torch." + n for n in ["rand", "randn", "randint", "randperm", "normal", "bernoulli", "multinomial", "poisson", "binomial", "rand_like", "randn_like", "randint_like"]),
    *("torch.nn.functional." + n for n in ["dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "gumbel_softmax", "rrelu"]),
}  # fmt: skip
# Layers whose construction draws their initial weights from the global torch RNG.
LAYER_DRAWS = {
    "torch.nn." + n for n in ["Linear", "Bilinear", "LazyLinear", "Embedding", "EmbeddingBag", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "RNN", "LSTM", "GRU", "MultiheadAttention", "Transformer", "TransformerEncoderLayer", "TransformerDecoderLayer"]
}  # fmt: skip
# Draws that write into their first argument.
INIT_DRAWS = {
    "torch.nn.init." + n for n in ["uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_"]
}  # fmt: skip
IN_PLACE_DRAW_METHODS = set(
    [
        "normal_",
        "uniform_",
        "random_",
        "bernoulli_",
        "exponential_",
        "geometric_",
        "log_normal_",
        "cauchy_",
    ]
)
# Module functions of `random` and `numpy.random` that are not draws.
NOT_DRAWS = set(
    [
        "seed",
        "getstate",
        "setstate",
        "get_state",
        "set_state",
        "Random",
        "SystemRandom",
        "default_rng",
        "RandomState",
        "Generator",
        "SeedSequence",
        "PCG64",
        "PCG64DXSM",
        "MT19937",
        "Philox",
        "SFC64",
        "BitGenerator",
        "get_bit_generator",
        "set_bit_generator",
    ]
)
SHUFFLES = {"random.shuffle", "numpy.random.shuffle"}
_PASS_THROUGH = (
    ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.FormattedValue, ast.JoinedStr,
    ast.keyword,
)  # fmt: skip

NameKey = tuple[int, str]  # (id of the scope's node, name)


def bound_names(node: ast.AST) -> Iterator[str]:
    """Names a node binds: assignment targets, parameters, imports, defs, except and match names."""
    if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
        yield node.id
    elif isinstance(node, ast.arg):
        yield node.arg
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield node.name
    elif isinstance(node, ast.alias):
        yield node.asname or node.name.split(".")[0]
    elif (isinstance(node, ast.ExceptHandler) and node.name) or (
        isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name
    ):
        yield node.name


class CodeIndex:
    """One parsed file: each node's parent, what imported names stand for, the functions and
    classes it defines, and which scope each name resolves to."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parent: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parent[child] = node
        self.imports = self._imports()
        self.defined = {
            n.name
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        }
        self.locals: dict[int, set[str]] = {id(tree): set()}
        self.outer_decl: dict[int, set[str]] = {}
        for node in ast.walk(tree):
            scope = self.scope_of(node)
            if isinstance(node, (ast.Global, ast.Nonlocal)):
                self.outer_decl.setdefault(id(scope), set()).update(node.names)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                scope = self.scope_of(self.parent.get(node, tree))  # a def binds in its parent
            elif isinstance(node, ast.arg):
                scope = self._function_of(node)
            for name in bound_names(node):
                self.locals.setdefault(id(scope), set()).add(name)
        self.rng_objects = self._rng_objects()
        self.drawing_functions = self._drawing_functions()

    def _imports(self) -> dict[str, str]:
        """Local name -> the module or object it stands for (`np` -> `numpy`)."""
        names: dict[str, str] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    names[alias.asname or top] = alias.name if alias.asname else top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        return names

    def qualified(self, node: ast.AST) -> str | None:
        """`np.random.rand` -> `numpy.random.rand`; None for what is not an imported dotted name."""
        if isinstance(node, ast.Name):
            return self.imports.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualified(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def _function_of(self, node: ast.AST) -> ast.AST:
        """The function or lambda whose parameter a node is."""
        current: ast.AST | None = node
        while current is not None and not isinstance(
            current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Module)
        ):
            current = self.parent.get(current)
        return current or self.tree

    def scope_of(self, node: ast.AST) -> ast.AST:
        """The innermost function, lambda or class whose body holds node (else the module)."""
        current = self.parent.get(node)
        while current is not None:
            if isinstance(
                current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
            ):
                return current
            current = self.parent.get(current)
        return self.tree

    def key(self, name: ast.Name) -> NameKey:
        """The scope a name resolves to: its own, an enclosing function's, else the module's."""
        scope: ast.AST = self.scope_of(name)
        first = True
        while not isinstance(scope, ast.Module):
            local = name.id in self.locals.get(id(scope), set())
            declared_outer = name.id in self.outer_decl.get(id(scope), set())
            visible = first or not isinstance(scope, ast.ClassDef)  # methods skip class scope
            if local and not declared_outer and visible:
                return (id(scope), name.id)
            first = False
            scope = self.scope_of(scope)
        return (id(self.tree), name.id)

    def _rng_objects(self) -> set[str]:
        """Names assigned an RNG object (np.random.default_rng(...), random.Random(...), ...)."""
        names = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                call = _innermost_call(node.value)
                qual = self.qualified(call.func) or ""
                if qual in SEEDED_CONSTRUCTORS or qual in (
                    "numpy.random.Generator",
                    "torch.Generator",
                ):
                    names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        return names

    def _drawing_functions(self) -> set[str]:
        """Functions of this file that return a value and draw random numbers (directly or by
        calling another such function): throwing their result away throws the draw away."""
        functions = {
            n.name: n
            for n in ast.walk(self.tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        returning = {
            name
            for name, fn in functions.items()
            if any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(fn))
        }
        drawing: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name in returning - drawing:
                calls = (n for n in ast.walk(functions[name]) if isinstance(n, ast.Call))
                if any(self.draw_kind(c, drawing) for c in calls):
                    drawing.add(name)
                    changed = True
        return drawing

    def draw_kind(self, call: ast.Call, drawing: set[str] | None = None) -> str:
        """'' for no draw; 'value' for a draw that returns its numbers; 'inplace' for one that
        writes them into its target (see _draw_target)."""
        drawing = self.drawing_functions if drawing is None else drawing
        func = call.func
        qual = self.qualified(func) or ""
        if qual in FUNCTIONAL_DRAWS or qual in LAYER_DRAWS:
            return "value"
        if qual in INIT_DRAWS or qual in SHUFFLES:
            return "inplace"
        for module in ("random.", "numpy.random."):
            if qual.startswith(module) and qual[len(module) :] not in NOT_DRAWS:
                return "value"
        if isinstance(func, ast.Name) and func.id in drawing and func.id not in self.imports:
            return "value"
        if isinstance(func, ast.Attribute) and not qual:
            if func.attr in IN_PLACE_DRAW_METHODS:
                return "inplace"
            receiver = func.value
            if isinstance(receiver, ast.Name) and receiver.id in self.rng_objects:
                if func.attr == "shuffle":
                    return "inplace"
                if (
                    func.attr not in NOT_DRAWS
                    and "seed" not in func.attr
                    and "state" not in func.attr
                ):
                    return "value"
        return ""

    def draw_target(self, call: ast.Call) -> ast.AST | None:
        """What an in-place draw writes into: its receiver (t.normal_()) or first argument."""
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in IN_PLACE_DRAW_METHODS:
            return func.value if not self.qualified(func) else (call.args[0] if call.args else None)
        return call.args[0] if call.args else None

    # -- where a value goes ----------------------------------------------------------------
    def destination(self, node: ast.AST) -> tuple[str, list[ast.Name]]:
        """Where node's value ends up: ('discarded', []) for a statement that drops it,
        ('names', [...]) for simple names it is stored in (or written into), ('kept', [])
        for anything else (an attribute, an argument of an unknown call, a condition, ...)."""
        current = node
        while True:
            parent = self.parent.get(current)
            if parent is None:
                return "kept", []
            if isinstance(parent, ast.Expr):
                return "discarded", []
            if isinstance(parent, _PASS_THROUGH) or (
                isinstance(parent, ast.Subscript)
                and parent.value is current
                and isinstance(parent.ctx, ast.Load)
            ):
                current = parent
                continue
            if isinstance(parent, ast.Attribute) and parent.value is current:
                if not isinstance(parent.ctx, ast.Load):
                    return "kept", []  # x.attr = ...: x holds what it is given
                call = self.parent.get(parent)
                if not (isinstance(call, ast.Call) and call.func is parent):
                    current = parent  # x.shape
                    continue
                if parent.attr in PURE_METHODS:
                    current = call  # x.sum(): still x's value
                    continue
                if parent.attr in MUTATORS:
                    if isinstance(current, ast.Name):
                        return "names", [current]  # t.add_(1): t's fate decides
                    current = call  # torch.empty(7).normal_(): the result is the value
                    continue
                return "kept", []
            if isinstance(parent, ast.Call):
                func = parent.func
                qual = self.qualified(func) or (func.id if isinstance(func, ast.Name) else "")
                local = isinstance(func, ast.Name) and func.id in self.defined
                if func is not current and qual in PURE_CALLS and not local:
                    current = parent
                    continue
                if isinstance(func, ast.Attribute) and func.attr in MUTATORS:
                    return self._written_into(func.value)
                return "kept", []
            if isinstance(parent, ast.Assign) and parent.value is current:
                return _names(parent.targets)
            if isinstance(parent, (ast.AugAssign, ast.AnnAssign)) and parent.value is current:
                return _names([parent.target])
            return "kept", []

    def _written_into(self, receiver: ast.AST) -> tuple[str, list[ast.Name]]:
        """x.append(value): the value's fate is x's."""
        if isinstance(receiver, ast.Name):
            return "names", [receiver]
        if isinstance(receiver, ast.Call):
            return self.destination(receiver)
        return "kept", []

    def live_names(self) -> set[NameKey]:
        """Names whose value reaches something kept; a name read only to be dropped, or only
        into dead names, is dead."""
        live: set[NameKey] = set()
        feeds: dict[NameKey, set[NameKey]] = {}  # target -> the names its value reads
        for node in ast.walk(self.tree):
            if not (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)):
                continue
            where, targets = self.destination(node)
            if where == "kept":
                live.add(self.key(node))
            for target in targets:
                if target is not node:
                    feeds.setdefault(self.key(target), set()).add(self.key(node))
        todo = list(live)
        while todo:
            for source in feeds.get(todo.pop(), ()):
                if source not in live:
                    live.add(source)
                    todo.append(source)
        return live

    def is_dropped(self, node: ast.AST, live: set[NameKey]) -> bool:
        """True when node's value reaches nothing kept (given the live names)."""
        where, names = self.destination(node)
        if where == "names":
            return not any(self.key(n) in live for n in names)
        return where == "discarded"

    def thrown_away(self, call: ast.Call, live: set[NameKey]) -> bool:
        """True when a draw's numbers reach nothing that is used."""
        if self.draw_kind(call) == "inplace":
            target = self.draw_target(call)
            if target is None:
                return True
            if isinstance(target, ast.Name):
                return self.key(target) not in live
            if not isinstance(target, ast.Call):
                return False  # an attribute or an item: written into something kept
        return self.is_dropped(call, live)


def _innermost_call(call: ast.Call) -> ast.Call:
    """torch.Generator().manual_seed(SEED) -> torch.Generator()."""
    while isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Call):
        call = call.func.value
    return call


def _names(targets: list[ast.expr]) -> tuple[str, list[ast.Name]]:
    """Assignment targets as simple names, or 'kept' when one is an attribute or an item."""
    names: list[ast.Name] = []
    for target in targets:
        elements = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
        for element in elements:
            if isinstance(element, ast.Starred):
                element = element.value
            if not isinstance(element, ast.Name):
                return "kept", []
            names.append(element)
    return "names", names
