"""Imports of packages that only an optional extra installs, with an error that names the extra.

The core install (``pip install jaxopt_models``) carries what the primitives, models and the
training engine need. Dataset generators, plots, progress bars and tokenizers come with an
extra; a function that needs one imports it through ``require`` at call time, never at module
import time, so a core-only install imports every subpackage.
"""

import importlib
from types import ModuleType

from jaxopt_models.checks import check_one_of

#: The extras declared in pyproject.toml that ``require`` may point to.
EXTRAS = ("experiments", "text", "dev")

#: Top-level import name -> distribution name, where the two differ.
_DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
}


def distribution_name(module_name: str) -> str:
    """Returns the name to install for an importable module (``"sklearn.datasets"`` ->
    ``"scikit-learn"``).

    Args:
      module_name: dotted module name, e.g. ``"sklearn.datasets"``.

    Returns:
      The distribution name of its top-level package (the top-level name when no mapping is
      known).

    Example:
      >>> distribution_name("sklearn.datasets")
      'scikit-learn'
    """
    top = module_name.split(".", 1)[0]
    return _DISTRIBUTIONS.get(top, top)


def require(module_name: str, extra: str, purpose: str) -> ModuleType:
    """Imports ``module_name``; if it is missing, raises an error that says which extra to install.

    Args:
      module_name: dotted module name to import, e.g. ``"sklearn.datasets"``.
      extra: the extra of ``jaxopt_models`` that installs it, one of ``EXTRAS``.
      purpose: what needs the module, as a noun phrase (``"the digits dataset"``); it starts
        the error message.

    Returns:
      The imported module (``importlib.import_module(module_name)``).

    Raises:
      ModuleNotFoundError: the module (or a package it needs) is not installed; the message
        reads ``"<purpose> needs <package>; install it with pip install
        'jaxopt_models[<extra>]'"``. Other ``ImportError``s are re-raised as ``ImportError``
        with the same hint and the original error chained.

    Example:
      >>> datasets = require("sklearn.datasets", "experiments", "the digits dataset")
      >>> bunch = datasets.load_digits()
    """
    for arg_name, value in (("module_name", module_name), ("purpose", purpose)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"{arg_name}={value!r} must be a non-empty str")
    check_one_of("extra", extra, EXTRAS)
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        error_type = ModuleNotFoundError if isinstance(err, ModuleNotFoundError) else ImportError
        raise error_type(
            f"{purpose} needs {distribution_name(module_name)}; install it with "
            f"pip install 'jaxopt_models[{extra}]' (importing {module_name!r} failed: {err})",
            name=module_name,
        ) from err
