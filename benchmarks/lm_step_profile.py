r"""Where an LM train step's time goes: XLA:CPU's ops by category, beside PyTorch nanoGPT's.

Profiles the library's LM train step (the ``ours`` step of ``benchmarks/lm_throughput.py``:
the recipe's step, AdamW, clipping) with ``jax.profiler`` and attributes the time of every
op XLA:CPU runs (a fusion, a library call) to a category through the op names the
compiled program keeps (``ParallelStep.lower(...).compile().as_text()``):

  linear layers   the products of the query/key/value/output projections, the MLP and the
                  output head, forward and backward
  attention core  scores, mask, softmax, the weighted sum and their gradients, with the
                  layout changes inside attention
  MLP activation  GELU / SwiGLU and their gradients (and the MLP's bias gradients)
  norms           LayerNorm / RMSNorm, forward and backward
  layout copies   transposes and copies of the linear layers' operands
  optimizer       gradient clipping and the AdamW update
  other           embedding, loss, residual adds

With ``--torch_python`` and ``--nanogpt_model`` the same is done for nanoGPT's own step in
PyTorch eager with ``torch.profiler`` (``benchmarks/_nanogpt_torch.py --profile``), its
aten ops sorted into the same categories.

By default both run on one core with one thread (``--cpus 0``): then every op's time is
its own and the categories add up to the step. With more cores XLA:CPU runs independent
ops concurrently and the JAX column counts thread time (it can exceed the step), while
PyTorch's column is each op's wall time; compare ``step ms`` there, not the categories.

  python benchmarks/lm_step_profile.py                       # both shapes, one core
  python benchmarks/lm_step_profile.py --torch_python /path/to/venv/bin/python \
      --nanogpt_model /path/to/nanoGPT/model.py              # + PyTorch, same categories
  python benchmarks/lm_step_profile.py --cpus 0,1 --torch_threads 2

For each shape it also times the three products of the MLP's first layer alone (forward
``x @ w``, input gradient ``dy @ w.T``, weight gradient ``x.T @ dy``), in XLA:CPU and in
PyTorch: the kernels behind the "linear layers" row.

Prints tables per shape and a final JSON line.
"""

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
CPUS_DEFAULT = "0"

if __name__ == "__main__":  # before JAX starts: its thread pool sizes itself from the mask
    from _cpus import pin_from_argv

    pin_from_argv(CPUS_DEFAULT)

import jax  # noqa: E402
from _timing import (  # noqa: E402
    load_average,
    median,
    print_json,
    print_table,
    shape_names,
    step_runner,
    time_interleaved,
)
from jax.profiler import ProfileData  # noqa: E402
from lm_throughput import SHAPES, VOCAB, library_train_step, lm_model, token_batch  # noqa: E402

CATEGORIES = (
    "linear layers",
    "attention core",
    "MLP activation",
    "norms",
    "layout copies",
    "optimizer",
    "other",
)
_PROJECTIONS = ("/query/", "/key/", "/value/", "/out/", "/up/", "/down/", "/gate/")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) [^=]*\{$")


def parse_program(text: str) -> dict[str, tuple[str, bool]]:
    """``{instruction name: (op_name, contains a dot)}`` for the compiled ``text``'s ops."""
    bodies: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            current = bodies.setdefault(head.group(1), [])
        elif current is not None:
            current.append(line)
    ops: dict[str, tuple[str, bool]] = {}
    for lines in bodies.values():
        for line in lines:
            m = _INSTRUCTION.match(line)
            if not m:
                continue
            name, opcode = m.groups()
            op_name = _OP_NAME.search(line)
            called = _CALLS.search(line)
            has_dot = opcode in ("dot", "convolution") or (
                called is not None
                and any(
                    re.search(r" (dot|convolution)\(", body_line)
                    for body_line in bodies.get(called.group(1), ())
                )
            )
            ops[name] = (op_name.group(1) if op_name else "", has_dot)
    return ops


def op_category(thunk: str, op_name: str, has_dot: bool) -> str:
    """The category (``CATEGORIES``) of one XLA:CPU op from its name and HLO op name."""
    kind = thunk.split(".")[0]
    layout = kind.startswith(("transpose", "copy", "wrapped_copy", "wrapped_transpose"))
    if "CausalLM" not in op_name:
        # the loss is differentiated ("jvp(...)"); clipping and AdamW are not
        return "other" if "jvp(" in op_name else "optimizer"
    if "norm" in op_name:
        return "norms"
    in_projection = any(p in op_name for p in _PROJECTIONS)
    if "/attn/" in op_name and not in_projection:
        return "attention core"
    if has_dot:
        return "linear layers"
    if layout:
        return "layout copies"
    if "/mlp/" in op_name:
        return "MLP activation"
    return "other"


def library_step_and_program(shape: dict):
    """The LM recipe's compiled step on ``shape`` as a no-argument callable, and its HLO."""
    step, state, batch = library_train_step(lm_model(shape), *token_batch(shape))
    text = step.lower(step.place_state(state), batch).compile().as_text()
    return step_runner(step, state, batch), text


def profile_jax(shape: dict, steps: int) -> dict:
    """``{"step_ms", "categories": {category: ms per step}, "unattributed_ms"}``."""
    run, text = library_step_and_program(shape)
    ops = parse_program(text)
    for _ in range(3):
        jax.block_until_ready(run())
    t0 = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(run())
    step_ms = (time.perf_counter() - t0) / steps * 1e3
    totals: dict[str, float] = collections.defaultdict(float)
    unattributed = 0.0
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                jax.block_until_ready(run())
        (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        data = ProfileData.from_file(path)
    for plane in data.planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                if event.name not in ops:  # executor bookkeeping, waits, thread-pool regions
                    continue
                ms = event.duration_ns / 1e6 / steps
                op_name, has_dot = ops[event.name]
                if not op_name and not has_dot:
                    unattributed += ms
                    continue
                totals[op_category(event.name, op_name, has_dot)] += ms
    return {"step_ms": step_ms, "categories": dict(totals), "unattributed_ms": unattributed}


def profile_torch(python: str, model_py: str, shape: dict, threads: int, steps: int) -> dict:
    """nanoGPT's step in PyTorch, profiled by ``_nanogpt_torch.py --profile`` (same cores)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nanogpt_torch.py")
    args = [python, script, "--model_py", model_py, "--vocab", str(VOCAB)]
    args += ["--threads", str(threads), "--profile", str(steps)]
    for key in ("layers", "heads", "width", "context", "batch"):
        args += [f"--{key}", str(shape[key])]
    out = subprocess.run(args, capture_output=True, text=True, check=False)
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) < 2 or not lines[0].startswith("ready"):
        raise RuntimeError(f"the PyTorch profile failed ({' '.join(args)}):\n{out.stderr[-2000:]}")
    record = json.loads(lines[-1])
    record["version"] = lines[0].split()[2]
    return record


# The three products of a linear layer's train step, (rows, in, out) = (tokens, E, 4E):
# forward x @ w, input gradient dy @ w.T, weight gradient x.T @ dy.
GEMM_FORMS = ("x @ w", "dy @ w.T", "x.T @ dy")

_TORCH_GEMMS = r"""
import json, statistics, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
n, k, m, reps = (int(a) for a in sys.argv[2:6])
g = torch.Generator().manual_seed(0)
x, w, dy = (torch.randn(*s, generator=g) for s in ((n, k), (k, m), (n, m)))
fns = {"x @ w": lambda: x @ w, "dy @ w.T": lambda: dy @ w.t(), "x.T @ dy": lambda: x.t() @ dy}
out = {}
for name, f in fns.items():
    f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    out[name] = statistics.median(times)
print(json.dumps(out))
"""


def gemm_seconds(n: int, k: int, m: int, reps: int) -> dict[str, float]:
    """Median seconds of each of ``GEMM_FORMS`` in XLA:CPU, one compiled product each."""
    import numpy as np

    rng = np.random.default_rng(0)
    x, w, dy = (jax.numpy.asarray(rng.normal(size=s), "float32") for s in ((n, k), (k, m), (n, m)))
    fns = {
        "x @ w": (jax.jit(lambda x, w: x @ w), (x, w)),
        "dy @ w.T": (jax.jit(lambda dy, w: dy @ w.T), (dy, w)),
        "x.T @ dy": (jax.jit(lambda x, dy: x.T @ dy), (x, dy)),
    }
    times = time_interleaved(
        {name: (lambda fn=fn, args=args: fn(*args)) for name, (fn, args) in fns.items()},
        rounds=reps,
        iters=1,
        warmup=1,
    )
    return {name: median(t) for name, t in times.items()}


def torch_gemm_seconds(python: str, threads: int, n: int, k: int, m: int, reps: int) -> dict:
    """The same products in PyTorch (``torch.matmul``), in ``python``."""
    args = [python, "-c", _TORCH_GEMMS, str(threads), str(n), str(k), str(m), str(reps)]
    out = subprocess.run(args, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the PyTorch GEMM timing failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="cpu,wide", help="comma list of: " + ",".join(SHAPES))
    p.add_argument("--steps", type=int, default=None, help="profiled steps (default 10 / 3)")
    p.add_argument("--cpus", default=CPUS_DEFAULT, help="pin to these cores (default: 0)")
    p.add_argument("--torch_python", default=None, help="a Python with PyTorch installed")
    p.add_argument("--nanogpt_model", default=None, help="nanoGPT's model.py (not vendored)")
    p.add_argument("--torch_threads", type=int, default=1, help="torch.set_num_threads")
    args = p.parse_args()
    if (args.torch_python is None) != (args.nanogpt_model is None):
        p.error("--torch_python and --nanogpt_model go together")
    names = shape_names(p, args.shapes, SHAPES)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be a positive integer, got {args.steps}")
    cores = len(os.sched_getaffinity(0))
    print(f"jax {jax.__version__}, {cores} core(s) ({args.cpus}), load {load_average()}")
    record: dict = {"cores": cores, "jax": jax.__version__}
    for name in names:
        shape = SHAPES[name]
        steps = args.steps or (10 if name == "cpu" else 3)
        sides = {"jax": profile_jax(shape, steps)}
        if args.torch_python:
            sides["torch"] = profile_torch(
                args.torch_python, args.nanogpt_model, shape, args.torch_threads, steps
            )
            record["torch"] = sides["torch"].pop("version")
        rows = []
        for category in CATEGORIES:
            row = [category]
            for side in sides.values():
                row.append(f"{side['categories'].get(category, 0.0):.1f}")
            if "torch" in sides:
                j, t = (sides[s]["categories"].get(category, 0.0) for s in ("jax", "torch"))
                row.append(f"{j - t:+.1f}")
            rows.append(row)
        sums = [sum(s["categories"].values()) for s in sides.values()]
        rows.append(["sum of ops"] + [f"{v:.1f}" for v in sums])
        rows.append(["step (wall, unprofiled)"] + [f"{s['step_ms']:.1f}" for s in sides.values()])
        if "torch" in sides:
            rows[-2].append(f"{sums[0] - sums[1]:+.1f}")
            rows[-1].append(f"{sides['jax']['step_ms'] - sides['torch']['step_ms']:+.1f}")
        header = ["category (ms per step)", "jax (XLA:CPU)"]
        header += ["torch nanoGPT", "jax - torch"] if "torch" in sides else []
        print(f"\n{name} shape {shape}, {steps} profiled steps, load {load_average()}")
        print_table(header, rows)
        unattributed = sides["jax"]["unattributed_ms"]
        if unattributed > 0.05:
            print(f"(XLA:CPU ops without an op name, not in the table: {unattributed:.1f} ms)")
        for side, res in sides.items():
            record[f"{side}_{name}"] = {
                "step_ms": round(res["step_ms"], 2),
                **{c: round(v, 2) for c, v in res["categories"].items()},
            }

        n, k = shape["batch"] * shape["context"], shape["width"]
        gemms = {"jax": gemm_seconds(n, k, 4 * k, reps=15)}
        if args.torch_python:
            gemms["torch"] = torch_gemm_seconds(
                args.torch_python, args.torch_threads, n, k, 4 * k, 15
            )
        flops = 2 * n * k * 4 * k
        rows = []
        for form in GEMM_FORMS:
            row = [form] + [f"{flops / g[form] / 1e9:.1f}" for g in gemms.values()]
            if "torch" in gemms:
                row.append(f"{gemms['torch'][form] / gemms['jax'][form]:.2f}")
            rows.append(row)
            for side, g in gemms.items():
                record[f"{side}_{name}"][f"gemm {form} GFLOP/s"] = round(flops / g[form] / 1e9, 1)
        header = [f"MLP product {n}x{k}x{4 * k} (GFLOP/s)", "jax (XLA:CPU)"]
        header += ["torch", "jax speed vs torch"] if "torch" in gemms else []
        print()
        print_table(header, rows)
    record["load"] = load_average()
    print_json(record)


if __name__ == "__main__":
    main()
