"""The package layout: which way the imports run (see the style guide's "floors").

Reads every module of ``jaxopt_models`` with ``ast`` (nothing is imported), so a lazy
import inside a function counts as much as one at the top of a file.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "jaxopt_models"
PACKAGE_DIR = os.path.join(ROOT, PACKAGE)

# A unit is a subpackage or a top-level module; it may import only from lower floors (and
# from its own floor where SAME_FLOOR allows it).
FLOORS = {
    "tree": 0,
    "checks": 0,
    "fileio": 0,
    "typing": 0,
    "_optional": 0,
    "hessian": 0,
    "pruning": 1,
    "quantization": 1,
    "distillation": 1,
    "compression": 1,
    "models": 2,
    "data": 2,
    "training": 3,
    "metrics": 3,
    "recipes": 4,
    "": 5,  # the package's own __init__
}
# Floor 0 helpers may use each other; compression builds on pruning and quantization.
SAME_FLOOR = {("compression", "pruning"), ("compression", "quantization")}
ENGINE_MUST_NOT_IMPORT = (
    "models",
    "data",
    "pruning",
    "quantization",
    "distillation",
    "compression",
    "recipes",
    "metrics",
)


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join(rel)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_package(path: str) -> bool:
    return os.path.basename(path) == "__init__.py"


class Import:
    """One import of ``target`` (a dotted ``jaxopt_models...`` or other module name)."""

    def __init__(self, module: str, target: str, line: int, in_function: bool):
        self.module, self.target, self.line, self.in_function = module, target, line, in_function

    def __repr__(self) -> str:
        where = "in a function" if self.in_function else "at module level"
        return f"{self.module}:{self.line} imports {self.target} ({where})"


def _imports_of(path: str) -> list[Import]:
    module = _module_name(path)
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    package = module.split(".") if _is_package(path) else module.split(".")[:-1]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            targets = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - child.level + 1]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                # "from jaxopt_models import pruning" imports the subpackage pruning
                targets = [f"{prefix}.{alias.name}" for alias in child.names]
                if prefix != PACKAGE:
                    targets = [prefix]
            elif isinstance(child, ast.Call) and _is_dynamic_import(child):
                targets = [child.args[0].value]
            found.extend(Import(module, t, child.lineno, inside) for t in targets)
            visit(child, inside)

    visit(tree, False)
    return found


def _is_dynamic_import(call: ast.Call) -> bool:
    """``importlib.import_module("...")`` / ``require("...", ...)`` with a literal name."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return (
        name in ("import_module", "require", "__import__")
        and bool(call.args)
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    )


def _all_sources() -> list[str]:
    out = []
    for parent, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        out += [os.path.join(parent, f) for f in sorted(files) if f.endswith(".py")]
    return out


SOURCES = _all_sources()
IMPORTS = [imp for path in SOURCES for imp in _imports_of(path)]


def _package_edges() -> list[tuple[str, str, Import]]:
    edges = []
    for imp in IMPORTS:
        if imp.target == PACKAGE or imp.target.startswith(PACKAGE + "."):
            a, b = _unit(imp.module), _unit(imp.target)
            if a != b:
                edges.append((a, b, imp))
    return edges


EDGES = _package_edges()


def test_the_scan_sees_the_package_and_its_imports():
    """Guards the reader itself: it finds known modules and a known import."""
    modules = {_module_name(p) for p in SOURCES}
    assert {"jaxopt_models.training.loop", "jaxopt_models.recipes.build"} <= modules
    assert any(
        a == "recipes" and b == "training" and imp.module == "jaxopt_models.recipes.train"
        for a, b, imp in EDGES
    )
    # relative imports and "from jaxopt_models import x" resolve to the subpackage
    assert any(b == "pruning" and imp.target == "jaxopt_models.pruning" for _, b, imp in EDGES)


def test_every_unit_sits_on_a_floor():
    units = {_unit(_module_name(p)) for p in SOURCES}
    unplaced = sorted(units - set(FLOORS))
    assert not unplaced, (
        f"{unplaced} are not placed on a floor of the layout; add them to FLOORS in "
        "tests/test_layout.py (and to the style guide)"
    )


@pytest.mark.parametrize("path", [p for p in SOURCES if "/training/" in p.replace(os.sep, "/")])
def test_the_engine_imports_no_model_data_technique_recipe_or_metrics(path):
    bad = [
        imp
        for imp in _imports_of(path)
        if imp.target.startswith(PACKAGE + ".") and _unit(imp.target) in ENGINE_MUST_NOT_IMPORT
    ]
    assert not bad, bad


def _allowed(a: str, b: str) -> bool:
    fa, fb = FLOORS[a], FLOORS[b]
    return fb < fa or (fa == fb == 0) or (a, b) in SAME_FLOOR


def test_imports_only_go_down_the_floors():
    bad = [imp for a, b, imp in EDGES if a in FLOORS and b in FLOORS and not _allowed(a, b)]
    assert not bad, "\n".join(
        f"{imp!r}: floor {FLOORS[_unit(imp.module)]} -> floor {FLOORS[_unit(imp.target)]}"
        for imp in bad
    )


def test_no_function_level_import_reaches_a_higher_floor():
    """A lazy import does not make an upward dependency acceptable."""
    bad = [
        imp
        for a, b, imp in EDGES
        if imp.in_function and a in FLOORS and b in FLOORS and FLOORS[b] > FLOORS[a]
    ]
    assert not bad, bad


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_subpackage_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for a, b, _ in EDGES:
        graph.setdefault(a, set()).add(b)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_is_named_utils():
    names = [
        os.path.relpath(os.path.join(parent, name), ROOT)
        for parent, dirs, files in os.walk(PACKAGE_DIR)
        for name in dirs + files
        if name in ("utils", "utils.py", "util", "util.py")
    ]
    assert not names, f"name modules by what they hold, not utils: {names}"


def test_the_library_never_imports_experiments_or_benchmarks():
    bad = [
        imp for imp in IMPORTS if imp.target.split(".")[0] in ("experiments", "benchmarks", "tests")
    ]
    assert not bad, bad
