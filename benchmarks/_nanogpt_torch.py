r"""Times nanoGPT's own PyTorch model on one train step, driven round by round over stdin.

Run by ``benchmarks/lm_throughput.py --torch_python PY --nanogpt_model PATH/model.py`` in
another Python that has PyTorch; nanoGPT is not part of this repository: ``--model_py``
points at the ``model.py`` of a nanoGPT checkout elsewhere, which is imported from
there.

The step is nanoGPT's ``train.py`` step in float32 eager mode: forward with targets,
``loss.backward()``, ``clip_grad_norm_(1.0)``, ``optimizer.step()`` with the model's own
``configure_optimizers`` (AdamW, weight decay on the 2-D weights), ``zero_grad(set_to_none
=True)``, on one fixed random batch.

Protocol (one line each way, so the caller can interleave its own rounds with these):
  stdout ``ready <parameters>`` once built; then for each stdin line ``run N`` it runs N
  steps and answers ``<wall seconds per step> <process CPU seconds per step> <loss>``;
  ``quit`` (or end of input) exits.

With ``--profile N`` it instead runs ``torch.profiler`` over N steps (after 3 warm-up steps)
and prints one JSON line after ``ready``: the self time of the aten ops per step, in
milliseconds, summed by the categories of ``benchmarks/lm_step_profile.py`` (``CATEGORIES``
there), and the step's wall time.
"""

import argparse
import contextlib
import importlib.util
import json
import sys
import time

# aten op -> category of lm_step_profile.py (ops under the "optimizer" record: optimizer)
_OPS = {
    "linear layers": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention core": ("aten::_scaled_dot_product",),
    "MLP activation": ("aten::gelu",),
    "norms": ("aten::native_layer_norm",),
    "layout copies": ("aten::copy_", "aten::clone", "aten::contiguous"),
}


def op_category(name: str, under_optimizer: bool) -> str:
    """The category of an aten op's self time (``other``: loss, embedding, adds, views)."""
    if under_optimizer:
        return "optimizer"
    for category, prefixes in _OPS.items():
        if name.startswith(prefixes):
            return category
    return "other"


def profile_steps(step, steps: int) -> dict:
    """``{"step_ms": wall per step, "categories": {category: self ms per step}}``."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - t0) / steps
    totals: dict[str, float] = {}
    for event in prof.events():
        parent, under = event.cpu_parent, event.name == "optimizer"
        while parent is not None and not under:
            under, parent = parent.name == "optimizer", parent.cpu_parent
        if event.name == "optimizer" or event.name.startswith("ProfilerStep"):
            continue
        category = op_category(event.name, under)
        totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total / 1e3 / steps
    return {"step_ms": wall * 1e3, "categories": totals}


def load_model_module(path: str):
    """Imports the ``model.py`` at ``path`` as a module named ``nanogpt_model``."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--model_py={path!r} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_py", required=True, help="path of nanoGPT's model.py")
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--context", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=0, help="profile this many steps, then exit")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    nanogpt = load_model_module(args.model_py)
    config = nanogpt.GPTConfig(
        block_size=args.context,
        vocab_size=args.vocab,
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.width,
        dropout=0.0,
        bias=True,
    )
    with contextlib.redirect_stdout(sys.stderr):  # the model prints its size
        model = nanogpt.GPT(config)
        model.train()
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    n_params = sum(t.numel() for t in model.parameters())
    gen = torch.Generator().manual_seed(args.seed)
    data = torch.randint(0, args.vocab, (args.batch, args.context + 1), generator=gen)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def step(optimizer_region=contextlib.nullcontext) -> float:
        _, loss = model(x, y)
        loss.backward()
        with optimizer_region():  # the profile labels this part "optimizer"
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.item()

    print(f"ready {n_params} {torch.__version__} threads={torch.get_num_threads()}", flush=True)
    if args.profile:
        region = lambda: torch.profiler.record_function("optimizer")  # noqa: E731
        print(json.dumps(profile_steps(lambda: step(region), args.profile)), flush=True)
        return
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] != "run" or len(words) != 2:
            print(f"error: unknown command {line.strip()!r}", flush=True)
            continue
        n = int(words[1])
        t0, c0 = time.perf_counter(), time.process_time()
        loss = 0.0
        for _ in range(n):
            loss = step()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{wall / n:.6f} {cpu / n:.6f} {loss:.6f}", flush=True)


if __name__ == "__main__":
    main()
