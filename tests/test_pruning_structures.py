"""Tests for jaxopt_models.pruning.structures."""

import pytest

from jaxopt_models.pruning import Channels, NByM, Unstructured, channels, n_by_m, unstructured
from jaxopt_models.pruning.structures import as_structure


def test_factories_and_strings():
    assert unstructured() == Unstructured()
    assert n_by_m(2, 4) == NByM(2, 4, -1)
    assert channels(axis=0, norm="l1") == Channels(0, "l1")
    assert as_structure(None) == Unstructured()
    assert as_structure("unstructured") == Unstructured()
    assert as_structure("channels") == Channels(-1, "l2")
    assert as_structure("1:8") == NByM(1, 8, -1)
    assert as_structure(NByM(2, 4, 0)) == NByM(2, 4, 0)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: n_by_m(5, 4), ValueError, "1 <= n <= m"),
        (lambda: n_by_m(0, 4), ValueError, "1 <= n <= m"),
        (lambda: n_by_m(1, 0), ValueError, "m must be >= 1"),
        (lambda: n_by_m(2.0, 4), TypeError, "n must be an int"),
        (lambda: channels(norm="linf"), ValueError, "norm must be 'l1' or 'l2'"),
        (lambda: as_structure("5:4"), ValueError, "1 <= n <= m"),
        (lambda: as_structure(NByM(5, 4)), ValueError, "1 <= n <= m"),
        (lambda: as_structure("blocks"), ValueError, "structure must be"),
        (lambda: as_structure(3), TypeError, "structure must be"),
    ],
)
def test_validation(make, error, match):
    with pytest.raises(error, match=match):
        make()
