"""Random transformer-like layers and float64 NumPy helpers for the one-shot compression tests."""

import numpy as np


def make_layer(seed: int, n_in: int = 192, n_out: int = 96, rows: int = 768, outliers: int = 4):
    """Calibration inputs ``x`` (rows, in) with correlated features and a few outlier input
    channels (20x larger, as in transformer activations), a kernel ``w`` (in, out) and the
    Hessian ``h = x^T x``; all float64, ``w`` holding float32 values."""
    rng = np.random.default_rng(seed)
    mix = np.eye(n_in) + 0.4 * rng.standard_normal((n_in, n_in)) / np.sqrt(n_in)
    x = rng.standard_normal((rows, n_in)) @ mix
    x += 0.3 * rng.standard_normal((1, n_in))  # per-feature offsets
    hot = rng.choice(n_in, size=outliers, replace=False)
    x[:, hot] *= 20.0
    w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32).astype(np.float64)
    return x, w, x.T @ x


def output_error(x: np.ndarray, w: np.ndarray, w_hat) -> float:
    """``||x w - x w_hat||^2`` in float64."""
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.sum((x @ d) ** 2))


def np_prepare(w: np.ndarray, h: np.ndarray):
    """Dead inputs (zero Hessian diagonal) get H[i, i] = 1 and w[i] = 0 (copies)."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    return w, h


def np_inverse_cholesky_upper(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse, as the papers compute it."""
    h = h + damp * np.mean(np.diag(h)) * np.eye(len(h))
    return np.linalg.cholesky(np.linalg.inv(h)).T


def np_grid(rows, bits, symmetric):
    """Min-max grid per column of ``rows`` (g, out) in the library's conventions."""
    lo = np.minimum(rows.min(0), 0.0)
    hi = np.maximum(rows.max(0), 0.0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = np.maximum(-lo, hi) / qmax
        scale = np.where(scale > 0, scale, 1.0)
        return scale, np.zeros_like(scale), -qmax, qmax
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = (hi - lo) / (qmax - qmin)
    scale = np.where(scale > 0, scale, 1.0)
    zp = np.clip(qmin - np.round(lo / scale), qmin, qmax)
    return scale, zp, qmin, qmax
