"""Tests for jaxopt_models.pruning.summary."""

import jax.numpy as jnp
import pytest

from jaxopt_models.pruning import format_summary, summary


def test_summary_counts_and_table():
    params = {"Dense_0": {"kernel": jnp.array([[1.0, 0.0], [2.0, 3.0]]), "bias": jnp.zeros(2)}}
    masks = {"Dense_0": {"kernel": jnp.array([[True, True], [False, True]]), "bias": None}}
    info = summary(params, masks)
    kernel = info["layers"]["Dense_0/kernel"]
    assert kernel == {"shape": (2, 2), "params": 4, "nonzeros": 2, "sparsity": 0.5}
    assert info["layers"]["Dense_0/bias"]["nonzeros"] == 0
    assert info["total"] == {"params": 6, "nonzeros": 2, "sparsity": pytest.approx(4 / 6)}
    table = format_summary(info)
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "shape", "params", "nonzeros", "sparsity"]
    assert any(line.startswith("Dense_0/kernel") and line.endswith("50.00%") for line in lines)
    assert lines[-1].startswith("total") and lines[-1].endswith("66.67%")


def test_summary_without_masks_and_mismatch():
    info = summary({"w": jnp.array([0.0, 1.0, 2.0, 0.0])})
    assert info["total"] == {"params": 4, "nonzeros": 2, "sparsity": 0.5}
    with pytest.raises(ValueError, match="does not match params tree"):
        summary({"w": jnp.ones(2)}, {"v": jnp.ones(2, bool)})
