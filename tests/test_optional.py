"""jaxopt_models._optional.require: the module when installed, else an error naming the extra."""

import sys

import pytest

from jaxopt_models import data
from jaxopt_models._optional import EXTRAS, distribution_name, require


def _block(monkeypatch, top: str) -> None:
    """Makes ``top`` (and its submodules) unimportable for the rest of the test."""
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, top, None)


@pytest.mark.parametrize("module_name", ["json", "json.decoder", "numpy.linalg"])
def test_returns_the_imported_module(module_name):
    module = require(module_name, "experiments", "a test")
    assert module is sys.modules[module_name]
    assert module.__name__ == module_name


@pytest.mark.parametrize(
    ("module_name", "package"),
    [("sklearn.datasets", "scikit-learn"), ("sklearn", "scikit-learn"), ("tqdm.auto", "tqdm")],
)
@pytest.mark.parametrize("extra", EXTRAS)
def test_missing_module_names_package_and_extra(monkeypatch, module_name, package, extra):
    _block(monkeypatch, module_name.split(".")[0])
    with pytest.raises(ModuleNotFoundError) as info:
        require(module_name, extra, "the digits dataset")
    message = str(info.value)
    assert message.startswith(f"the digits dataset needs {package}; install it with ")
    assert f"pip install 'jaxopt_models[{extra}]'" in message
    assert info.value.name == module_name
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_module_that_is_not_installed_anywhere():
    with pytest.raises(ImportError, match=r"needs no_such_package_xyz; .*\[text\]"):
        require("no_such_package_xyz.sub", "text", "BPE tokenizers")


def test_broken_module_keeps_the_original_error(tmp_path, monkeypatch):
    (tmp_path / "broken_optional_pkg.py").write_text("raise ImportError('libfoo.so missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as info:
        require("broken_optional_pkg", "experiments", "plots")
    assert type(info.value) is ImportError
    assert "plots needs broken_optional_pkg" in str(info.value)
    assert "libfoo.so missing" in str(info.value)
    assert str(info.value.__cause__) == "libfoo.so missing"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"extra": "gpu"}, ValueError, r"extra='gpu' is not known; allowed values"),
        ({"extra": None}, ValueError, r"extra=None is not known"),
        ({"module_name": ""}, TypeError, r"module_name='' must be a non-empty str"),
        ({"module_name": 3}, TypeError, r"module_name=3 must be a non-empty str"),
        ({"purpose": None}, TypeError, r"purpose=None must be a non-empty str"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = {"module_name": "json", "extra": "experiments", "purpose": "a test", **kwargs}
    with pytest.raises(error, match=match):
        require(**args)


@pytest.mark.parametrize(
    ("module_name", "expected"),
    [("sklearn.datasets", "scikit-learn"), ("mnist1d.data", "mnist1d"), ("tqdm", "tqdm")],
)
def test_distribution_name(module_name, expected):
    assert distribution_name(module_name) == expected


@pytest.mark.parametrize(
    ("loader", "blocked", "package"),
    [
        # arguments nobody else uses, so no cached dataset hides the import
        (lambda: data.digits(test_fraction=0.4375, seed=9173), "sklearn", "scikit-learn"),
        (lambda: data.mnist1d(num_samples=37, seed=9173), "mnist1d", "mnist1d"),
        (lambda: data.get_dataset("digits", seed=9174), "sklearn", "scikit-learn"),
    ],
)
def test_dataset_sources_name_the_experiments_extra(monkeypatch, loader, blocked, package):
    _block(monkeypatch, blocked)
    with pytest.raises(ImportError, match=rf"needs {package}; .*jaxopt_models\[experiments\]"):
        loader()
