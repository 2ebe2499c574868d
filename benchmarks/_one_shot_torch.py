r"""Runs the papers' own PyTorch code (GPTQ, SparseGPT, Wanda) on one layer, driven over stdin.

Run by ``benchmarks/one_shot_reference.py`` in another Python that has PyTorch. The reference
code is not part of this repository and is never downloaded here: ``--gptq_repo``,
``--sparsegpt_repo`` and ``--wanda_repo`` point at checkouts of the authors' repositories
(IST-DASLab/gptq, IST-DASLab/sparsegpt, locuslab/wanda), whose files are imported from there:

- GPTQ: ``gptq.py`` (class ``GPTQ``: ``add_batch`` + ``fasterquant``) with its ``quant.py``
  (``Quantizer``, configured as the authors' ``opt.py`` does by default: per channel,
  ``mse=False``, asymmetric);
- SparseGPT: ``sparsegpt.py`` (class ``SparseGPT``: ``add_batch`` + ``fasterprune``);
- Wanda: ``lib/layerwrapper.py`` (class ``WrappedGPT``, whose ``add_batch`` accumulates the
  squared input norms ``scaler_row``). Wanda has no per-layer function (its pruning loop,
  ``prune_wanda`` in ``lib/prune.py``, runs a whole LLaMA), so :func:`wanda_prune` restates
  the few scoring and masking lines of that loop.

Two shims let the reference files run on a CPU-only PyTorch without ``transformers``: a stub
``transformers`` module whose ``Conv1D`` class is never an instance (the files only use it in
``isinstance`` checks) and a no-op ``torch.cuda.synchronize`` (called at the end of
``fasterquant`` / ``fasterprune``). The reference's prints go to stderr.

Inputs, in ``--data``: ``x.npy`` (rows, in) float32 calibration inputs, ``w.npy`` (in, out)
float32 kernel in the Flax layout (the ``nn.Linear`` weight is its transpose) and
``methods.json``: ``{name: {"kind": "gptq" | "sparsegpt" | "wanda", "bits", "group_size",
"sparsity", "n_m": [n kept, m]}}``. The statistics (Hessian, ``scaler_row``) are accumulated
once at start with the reference's ``add_batch``, fed ``--seq_len`` rows at a time.

Protocol (one line each way, so the caller can interleave its own rounds with these):
  stdout ``ready <torch version> <threads>`` once set up; then for each stdin line
  - ``run NAME``: one run of method NAME from a fresh layer and a copy of the statistics,
    answered with ``<seconds>`` (the reference call alone: ``fasterquant`` / ``fasterprune``
    / the Wanda lines); the first run also writes the result, in the (in, out) layout, to
    ``--data``/``ref_NAME.npy``;
  - ``stats KIND``: accumulates KIND's statistics (``hessian`` or ``wanda``) again from
    scratch, answered with ``<seconds>``;
  ``quit`` (or end of input) exits.
"""

import argparse
import importlib.util
import json
import os
import sys
import time
import types


def load_file(name: str, path: str, search_dir: str | None = None):
    """Imports the Python file at ``path`` as module ``name`` (``search_dir`` first on the
    import path while it runs, for its sibling imports such as ``from quant import *``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if search_dir:
        sys.path.insert(0, search_dir)
    try:
        spec.loader.exec_module(module)
    finally:
        if search_dir:
            sys.path.remove(search_dir)
            sys.modules.pop("quant", None)  # each repository ships its own quant.py
    return module


def install_shims(torch) -> None:
    """A stub ``transformers`` (only for ``isinstance(layer, transformers.Conv1D)``) when it is
    not installed, and a no-op ``torch.cuda.synchronize`` on a machine without CUDA."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        stub = types.ModuleType("transformers")
        stub.Conv1D = type("Conv1D", (), {})
        sys.modules["transformers"] = stub
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *args, **kwargs: None
        torch.cuda.empty_cache = lambda *args, **kwargs: None


def wanda_prune(torch, weight, scaler_row, prune_n: int, prune_m: int, sparsity: float):
    """Wanda's scoring and masking of one layer, restated from ``prune_wanda`` in the authors'
    ``lib/prune.py``: score ``|W| * sqrt(scaler_row)``; for N:M, the ``prune_n`` lowest
    scores of every ``prune_m`` consecutive inputs of each output row are masked (a top-k per
    group of columns); otherwise each output row is sorted (stable) and its lowest
    ``int(columns * sparsity)`` entries are masked. Masked weights are set to zero in place."""
    metric = torch.abs(weight) * torch.sqrt(scaler_row.reshape((1, -1)))
    mask = torch.zeros_like(metric) == 1
    if prune_n != 0:
        for ii in range(metric.shape[1]):
            if ii % prune_m == 0:
                tmp = metric[:, ii : (ii + prune_m)].float()
                mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    else:
        order = torch.sort(metric, dim=-1, stable=True)
        mask.scatter_(1, order[1][:, : int(metric.shape[1] * sparsity)], True)
    weight[mask] = 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gptq_repo", required=True, help="checkout holding gptq.py and quant.py")
    p.add_argument("--sparsegpt_repo", required=True, help="checkout holding sparsegpt.py")
    p.add_argument("--wanda_repo", required=True, help="checkout holding lib/layerwrapper.py")
    p.add_argument("--data", required=True, help="folder with x.npy, w.npy, methods.json")
    p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    p.add_argument("--seq_len", type=int, default=2048, help="rows per add_batch call")
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--damp", type=float, default=0.01)
    args = p.parse_args()

    protocol = sys.stdout
    sys.stdout = sys.stderr  # the reference code prints; only the protocol goes to stdout

    import numpy as np
    import torch
    import torch.nn as nn

    torch.set_num_threads(args.threads)
    install_shims(torch)
    gptq_mod = load_file("ref_gptq", os.path.join(args.gptq_repo, "gptq.py"), args.gptq_repo)
    sgpt_mod = load_file(
        "ref_sparsegpt", os.path.join(args.sparsegpt_repo, "sparsegpt.py"), args.sparsegpt_repo
    )
    wrapper_mod = load_file(
        "ref_wanda_layerwrapper", os.path.join(args.wanda_repo, "lib", "layerwrapper.py")
    )

    x = torch.from_numpy(np.load(os.path.join(args.data, "x.npy")))
    w = torch.from_numpy(np.ascontiguousarray(np.load(os.path.join(args.data, "w.npy")).T))
    with open(os.path.join(args.data, "methods.json")) as f:
        methods = json.load(f)
    n_out, n_in = w.shape

    def fresh_layer():
        layer = nn.Linear(n_in, n_out, bias=False)
        layer.weight.data = w.clone()
        return layer

    def accumulate(wrapper):
        """Feeds the calibration rows to ``wrapper.add_batch`` as (1, seq_len, in) batches."""
        for start in range(0, x.shape[0], args.seq_len):
            chunk = x[start : start + args.seq_len].unsqueeze(0)
            wrapper.add_batch(chunk, None)
        return wrapper

    @torch.no_grad()
    def stats(kind: str):
        if kind == "hessian":  # SparseGPT's add_batch computes the same H as GPTQ's
            g = accumulate(gptq_mod.GPTQ(fresh_layer()))
            return g.H, g.nsamples
        if kind == "wanda":
            return accumulate(wrapper_mod.WrappedGPT(fresh_layer())).scaler_row, None
        raise ValueError(f"unknown statistics {kind!r}")

    hessian, nsamples = stats("hessian")
    scaler_row, _ = stats("wanda")

    @torch.no_grad()
    def run(name: str):
        spec = methods[name]
        kind = spec["kind"]
        n_m = spec.get("n_m")
        layer = fresh_layer()
        if kind == "gptq":
            g = gptq_mod.GPTQ(layer)
            g.H, g.nsamples = hessian.clone(), nsamples
            g.quantizer = gptq_mod.Quantizer()  # gptq.py's own `from quant import *`
            g.quantizer.configure(spec["bits"], perchannel=True, sym=False, mse=False)
            group = spec.get("group_size") or -1
            t0 = time.perf_counter()
            g.fasterquant(blocksize=args.block_size, percdamp=args.damp, groupsize=group)
        elif kind == "sparsegpt":
            g = sgpt_mod.SparseGPT(layer)
            g.H, g.nsamples = hessian.clone(), nsamples
            prune_n, prune_m = (n_m[1] - n_m[0], n_m[1]) if n_m else (0, 0)
            t0 = time.perf_counter()
            g.fasterprune(
                spec.get("sparsity") or 0.0,
                prunen=prune_n,
                prunem=prune_m,
                blocksize=args.block_size,
                percdamp=args.damp,
            )
        elif kind == "wanda":
            prune_n, prune_m = (n_m[1] - n_m[0], n_m[1]) if n_m else (0, 0)
            t0 = time.perf_counter()
            wanda_prune(
                torch, layer.weight.data, scaler_row, prune_n, prune_m, spec.get("sparsity") or 0
            )
        else:
            raise ValueError(f"unknown method kind {kind!r}")
        seconds = time.perf_counter() - t0
        return seconds, layer.weight.data

    saved = set()
    print(f"ready {torch.__version__} {torch.get_num_threads()}", file=protocol, flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "run":
            seconds, result = run(words[1])
            if words[1] not in saved:
                out = os.path.join(args.data, f"ref_{words[1]}.npy")
                np.save(out, result.numpy().T.astype(np.float32))
                saved.add(words[1])
        elif words[0] == "stats":
            t0 = time.perf_counter()
            stats(words[1])
            seconds = time.perf_counter() - t0
        else:
            raise ValueError(f"unknown command {line!r}")
        print(f"{seconds:.6f}", file=protocol, flush=True)


if __name__ == "__main__":
    main()
