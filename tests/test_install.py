"""Installs that reproduce: declared dependencies match the imports, a core-only install works,
the lock pins what the suite runs with, and the packaging metadata builds quietly."""

import ast
import functools
import importlib.metadata as metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxopt_models"
LOCK = ROOT / "constraints.txt"
PROJECT = "jaxopt-models"

# Packages that only an extra may install; the computed set below must contain them all.
EXTRA_ONLY_IMPORTS = {
    "chex",
    "hypothesis",
    "matplotlib",
    "mnist1d",
    "pytest",
    "safetensors",
    "sklearn",
    "tokenizers",
    "tqdm",
}
# Engine packages compared with the lock by name, whatever the dev closure holds.
KEY_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
# Function-level imports of extras that do not go through jaxopt_models._optional.require, as
# (path prefix, top-level module): recipes/report.py imports matplotlib.pyplot right after
# require("matplotlib", ...). Remove an entry once its sites call require() themselves.
PENDING_BARE_IMPORTS = {
    ("jaxopt_models/recipes/", "matplotlib"),
}


# ----------------------------------------------------------------------------- helpers


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _declared() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    """Core requirements and each extra's requirements, self-references expanded."""
    project = _pyproject()["project"]
    core = [Requirement(r) for r in project["dependencies"]]
    raw = {k: [Requirement(r) for r in v] for k, v in project["optional-dependencies"].items()}

    def expand(extra: str, seen: tuple[str, ...] = ()) -> list[Requirement]:
        out = []
        for req in raw[extra]:
            if canonicalize_name(req.name) == PROJECT:
                for sub in sorted(req.extras):
                    assert sub not in seen, f"extra {extra!r} includes itself via {sub!r}"
                    out += expand(sub, (*seen, extra))
            else:
                out.append(req)
        return out

    return core, {extra: expand(extra) for extra in raw}


def _names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def _closure(reqs: list[Requirement]) -> tuple[set[str], set[str]]:
    """Installed distributions ``reqs`` pull in (themselves included), and those missing."""
    found, missing = set(), set()
    stack = [(req, ("",)) for req in reqs]
    done = set()
    while stack:
        req, extras = stack.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        name = canonicalize_name(req.name)
        key = (name, tuple(sorted(req.extras)))
        if key in done:
            continue
        done.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        found.add(name)
        own_extras = ("", *sorted(req.extras))
        stack += [(Requirement(r), own_extras) for r in dist.requires or []]
    return found, missing


@functools.cache
def _modules_by_distribution() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            out.setdefault(canonicalize_name(dist), set()).add(module)
    return out


@functools.cache
def _extra_only_modules() -> set[str]:
    """Top-level modules that only the extras install (no core dependency provides them)."""
    core, extras = _declared()
    core_dists, _ = _closure(core)
    all_extras = [r for reqs in extras.values() for r in reqs]
    extra_dists, _ = _closure(all_extras)
    by_dist = _modules_by_distribution()
    core_modules = {m for d in core_dists for m in by_dist.get(d, ())}
    modules = {m for d in extra_dists - core_dists for m in by_dist.get(d, ())}
    return {m for m in modules - core_modules if m.isidentifier()}


def _library_files() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _rel(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.Module) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(module-import-time imports, function-level imports) as (line, top-level name)."""
    at_import, in_functions = [], []

    def visit(node: ast.AST, in_function: bool) -> None:
        if _is_type_checking(node):
            return
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        target = in_functions if in_function else at_import
        target += [(node.lineno, n.split(".")[0]) for n in names]
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    third_party = lambda pairs: [  # noqa: E731
        (line, n) for line, n in pairs if n not in sys.stdlib_module_names and n != "jaxopt_models"
    ]
    return third_party(at_import), third_party(in_functions)


def _require_calls(tree: ast.Module) -> list[tuple[int, str, str]]:
    """``require("module", "extra", ...)`` calls as (line, module, extra)."""
    out = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require"
            and len(node.args) >= 2
            and all(isinstance(a, ast.Constant) for a in node.args[:2])
        ):
            out.append((node.lineno, node.args[0].value, node.args[1].value))
    return out


def _lock() -> tuple[dict[str, str], list[str]]:
    pins, header = {}, []
    for line in LOCK.read_text().splitlines():
        if line.startswith("#"):
            header.append(line)
            continue
        if not line.strip():
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line.strip())
        assert m, f"constraints.txt line {line!r} is not an exact 'name==version' pin"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = m.group(2)
    return pins, header


def _lock_python(header: list[str]) -> str | None:
    for line in header:
        m = re.fullmatch(r"#\s*python:\s*(\d+\.\d+)\s*", line)
        if m:
            return m.group(1)
    return None


def _run_python(code: str, *args: str, timeout: float = 240) -> dict:
    """Runs ``code`` in a fresh interpreter (CPU JAX); returns the JSON it prints last."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------ (a) a core-only install runs the primitives

CORE_ONLY_SCRIPT = """
import importlib, json, pkgutil, sys, tempfile, os

for name in json.loads(sys.argv[1]):
    sys.modules[name] = None  # as if not installed: importing it raises ModuleNotFoundError

import jaxopt_models

def fail(name):
    raise RuntimeError(f"importing {name} failed")

modules = ["jaxopt_models"]
for info in pkgutil.walk_packages(jaxopt_models.__path__, "jaxopt_models.", onerror=fail):
    importlib.import_module(info.name)
    modules.append(info.name)

import jax
import jax.numpy as jnp
import numpy as np
from jaxopt_models import compression, data, distillation, models, pruning, quantization

out = {"modules": modules}
model = models.MLP(features=(16,), num_classes=4)
x = jax.random.normal(jax.random.key(0), (3, 4, 4, 1))
params = model.init(jax.random.key(1), x)["params"]
masks = pruning.compute_masks(pruning.magnitude_scores(params), 0.5)
pruned = pruning.apply_masks(params, masks)
kernels = [np.asarray(p) for path, p in jax.tree_util.tree_leaves_with_path(pruned)
           if "kernel" in jax.tree_util.keystr(path)]
out["kernel_zero_fraction"] = [float(np.mean(k == 0.0)) for k in kernels]

w = np.asarray(params["Dense_0"]["kernel"], np.float64)
q = quantization.quantize(jnp.asarray(w, jnp.float32), 8)
scale = float(np.max(np.asarray(q.scale)))
out["quant_max_error_in_steps"] = float(
    np.max(np.abs(np.asarray(quantization.dequantize(q), np.float64) - w)) / scale
)

logits_s = model.apply({"params": pruned}, x)
logits_t = model.apply({"params": params}, x)
out["kd_loss"] = np.asarray(distillation.kd_loss(logits_s, logits_t, temperature=2.0)).tolist()
out["logits_s"] = np.asarray(logits_s, np.float64).tolist()
out["logits_t"] = np.asarray(logits_t, np.float64).tolist()

with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.jxc")
    out["file_bytes"] = compression.save_compressed(path, pruned, masks=masks)
    loaded = compression.load_compressed(path)
    out["roundtrip_equal"] = all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(pruned))
    ) and jax.tree.structure(loaded) == jax.tree.structure(pruned)

for name in ("digits", "mnist1d"):
    try:
        data.get_dataset(name)
        out[name] = None
    except ImportError as err:
        out[name] = [type(err).__name__, str(err)]

out["blocked_loaded"] = sorted(n for n in json.loads(sys.argv[1]) if sys.modules.get(n))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def core_only_run():
    blocked = sorted(_extra_only_modules())
    return blocked, _run_python(CORE_ONLY_SCRIPT, json.dumps(blocked))


def test_extra_only_set_contains_the_named_packages():
    missing = EXTRA_ONLY_IMPORTS - _extra_only_modules()
    assert not missing, (
        f"{sorted(missing)} should be installed by an extra only (is a core dependency pulling "
        "them in, or is the dev install incomplete?)"
    )


def test_core_only_imports_every_module(core_only_run):
    _, out = core_only_run
    expected = {
        "jaxopt_models." + _rel(p)[len("jaxopt_models/") : -len(".py")].replace("/", ".")
        for p in _library_files()
    }
    expected = {m.removesuffix(".__init__") for m in expected} | {"jaxopt_models"}
    assert set(out["modules"]) == expected
    assert out["blocked_loaded"] == []


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_core_only_runs_primitives(core_only_run):
    _, out = core_only_run
    assert out["kernel_zero_fraction"] == [0.5, 0.5]
    assert out["quant_max_error_in_steps"] <= 0.5 + 1e-6
    # float64 reference of the per-example KD loss: T^2 * KL(p_t || p_s) at T = 2.
    lp_s = _log_softmax(np.asarray(out["logits_s"]) / 2.0)
    lp_t = _log_softmax(np.asarray(out["logits_t"]) / 2.0)
    reference = 4.0 * (np.exp(lp_t) * (lp_t - lp_s)).sum(-1)
    np.testing.assert_allclose(np.ravel(out["kd_loss"]), reference, rtol=1e-4, atol=1e-6)
    assert out["roundtrip_equal"] is True
    assert out["file_bytes"] > 0


@pytest.mark.parametrize(
    ("dataset", "package"), [("digits", "scikit-learn"), ("mnist1d", "mnist1d")]
)
def test_core_only_dataset_names_the_extra(core_only_run, dataset, package):
    _, out = core_only_run
    assert out[dataset] is not None, f"get_dataset({dataset!r}) worked without its extra"
    kind, message = out[dataset]
    assert kind == "ModuleNotFoundError"
    assert "jaxopt_models[experiments]" in message
    assert f"needs {package}" in message


# ------------------------------------------------ (b) declared dependencies match the imports


def test_core_dependencies_cover_module_level_imports():
    core, _ = _declared()
    declared = _names(core)
    by_module = metadata.packages_distributions()
    problems = []
    for path in _library_files():
        at_import, _ = _imports(ast.parse(path.read_text(), str(path)))
        for line, name in at_import:
            dists = {canonicalize_name(d) for d in by_module.get(name, ())}
            if not dists & declared:
                problems.append(f"{_rel(path)}:{line} imports {name} ({sorted(dists)})")
    assert not problems, "module-level imports not declared as core dependencies:\n" + "\n".join(
        problems
    )


def test_core_declares_nothing_the_library_does_not_import():
    core, _ = _declared()
    by_dist = _modules_by_distribution()
    imported = set()
    for path in _library_files():
        at_import, in_functions = _imports(ast.parse(path.read_text(), str(path)))
        imported |= {name for _, name in at_import + in_functions}
    unused = {r.name for r in core if not by_dist.get(canonicalize_name(r.name), set()) & imported}
    assert not unused, f"core dependencies the library never imports: {sorted(unused)}"
    assert "chex" not in _names(core)


def test_optional_imports_go_through_require_with_the_right_extra():
    core, extras = _declared()
    core_names = _names(core)
    by_module = metadata.packages_distributions()
    problems = []
    for path in _library_files():
        tree = ast.parse(path.read_text(), str(path))
        _, in_functions = _imports(tree)
        pending = {name for prefix, name in PENDING_BARE_IMPORTS if _rel(path).startswith(prefix)}
        for line, name in in_functions:
            dists = {canonicalize_name(d) for d in by_module.get(name, ())}
            if not dists & core_names and name not in pending:
                problems.append(f"{_rel(path)}:{line} imports {name} without require()")
        for line, module, extra in _require_calls(tree):
            dists = {canonicalize_name(d) for d in by_module.get(module.split(".")[0], ())}
            if extra not in extras or not dists & _names(extras[extra]):
                problems.append(f"{_rel(path)}:{line} require({module!r}, {extra!r}): not there")
    assert not problems, "\n".join(problems)


def test_extras_only_packages_are_not_imported_at_module_import():
    core, _ = _declared()
    by_dist = _modules_by_distribution()
    core_modules = sorted(m for r in core for m in by_dist.get(canonicalize_name(r.name), ()))
    extra_only = sorted(_extra_only_modules())
    out = _run_python(
        """
        import importlib, json, pkgutil, sys
        core_modules, extra_only = json.loads(sys.argv[1]), json.loads(sys.argv[2])
        for name in core_modules:  # what the core dependencies load by themselves
            importlib.import_module(name)
        before = set(sys.modules)
        import jaxopt_models
        for info in pkgutil.walk_packages(jaxopt_models.__path__, "jaxopt_models."):
            importlib.import_module(info.name)
        new = {m.split(".")[0] for m in set(sys.modules) - before}
        print(json.dumps(sorted(new & set(extra_only))))
        """,
        json.dumps(core_modules),
        json.dumps(extra_only),
    )
    assert out == [], f"importing jaxopt_models.* loads extras-only packages {out}"


def test_extras_are_declared_as_the_issue_lists():
    core, extras = _declared()
    assert {"experiments", "text", "dev"} <= set(extras)
    assert {"matplotlib", "tqdm", "scikit-learn", "mnist1d"} <= _names(extras["experiments"])
    assert {"tokenizers", "safetensors"} <= _names(extras["text"])
    dev = _names(extras["dev"])
    assert _names(extras["experiments"]) | _names(extras["text"]) <= dev
    assert {"pytest", "pytest-xdist", "hypothesis", "ruff", "chex"} <= dev
    for req in core + [r for reqs in extras.values() for r in reqs]:
        ops = {spec.operator for spec in req.specifier}
        assert ops and ops <= {">=", "<"}, f"{req}: pyproject keeps ranges, pins go to the lock"


# ------------------------------------------------ (c) the lock


def test_lock_pins_every_package_of_the_dev_install():
    pins, header = _lock()
    core, extras = _declared()
    needed, missing = _closure(core + extras["dev"])
    assert not missing, f"the dev install lacks {sorted(missing)}: run make (or make lock)"
    unpinned = sorted(needed - {PROJECT} - set(pins))
    assert not unpinned, f"constraints.txt does not pin {unpinned}; run make lock"
    assert any("make lock" in line for line in header), "the header must say how to refresh"
    assert _lock_python(header), "the header must record the Python version ('# python: X.Y')"
    assert PROJECT not in pins


def test_installed_versions_match_the_lock():
    pins, header = _lock()
    lock_python = _lock_python(header)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if os.environ.get("JAXOPT_MODELS_UNLOCKED"):
        pytest.skip("JAXOPT_MODELS_UNLOCKED is set: this install does not use constraints.txt")
    if lock_python != running:
        pytest.skip(f"constraints.txt is for Python {lock_python}, this is {running}")
    accelerator = sorted(
        d.metadata["Name"]
        for d in metadata.distributions()
        if re.match(r"(jax-cuda|jax-rocm|libtpu)", canonicalize_name(d.metadata["Name"] or ""))
    )
    if accelerator:
        pytest.skip(f"an accelerator build of JAX is installed ({accelerator}); the lock is CPU")
    core, extras = _declared()
    needed, _ = _closure(core + extras["dev"])
    names = sorted((needed - {PROJECT}) | {canonicalize_name(n) for n in KEY_PACKAGES})
    drift = {}
    for name in names:
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != pins.get(name):
            drift[name] = (installed, pins.get(name))
    assert not drift, (
        f"installed vs locked versions differ {drift}; reinstall with make (it uses "
        "constraints.txt) or refresh the lock with make lock"
    )


def test_make_and_ci_install_with_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^CONSTRAINTS\s*:?=\s*constraints\.txt\s*$", makefile, re.M)
    stamp_rule = re.search(r"^\$\(STAMP\)\s*:(.*)$", makefile, re.M)
    assert stamp_rule and "$(CONSTRAINTS)" in stamp_rule.group(1), "stamp must depend on the lock"
    project_installs = re.findall(r"^\t\$\(PIP\) install .*$", makefile, re.M)
    assert any("-e '.[dev]'" in line for line in project_installs)
    for line in project_installs:
        assert "-c $(CONSTRAINTS)" in line and " -q " in line, line
    assert re.search(r"^lock\s*:", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\s*$", ci, re.M)


# ------------------------------------------------ (d) packaging metadata


def test_license_is_an_spdx_string_and_the_backend_supports_it():
    config = _pyproject()
    assert config["project"]["license"] == "Apache-2.0"
    (setuptools,) = [
        Requirement(r) for r in config["build-system"]["requires"] if r.startswith("setuptools")
    ]
    assert not setuptools.specifier.contains("76.1.0"), "SPDX license strings need setuptools>=77"
    assert setuptools.specifier.contains("77.0.3")


def test_editable_install_uses_a_plain_path_entry():
    # A package dir of "." lets setuptools' editable install write a .pth file instead of an
    # import hook, which prints a warning box on every install.
    assert _pyproject()["tool"]["setuptools"]["package-dir"] == {"": "."}
