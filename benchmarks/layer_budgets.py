r"""Per-layer budgets vs one uniform level, on a trained byte-level LM (same method, same target).

Loads a finished LM recipe run (``--lm_dir``: ``results.json`` + ``variables.msgpack``),
calibrates on ``--calibration_windows`` training windows, and compares with the same method
and the same global target (the linear layers of the blocks; the tied embedding / head stays
float, as ``models.compress_model`` leaves it):

- pruning at ``--sparsity`` (magnitude / Wanda / SparseGPT): uniform vs OWL
  (``models.owl_sparsity``) vs the loss-sensitivity knapsack (``models.sensitivity_sparsity``,
  costs measured with the method itself);
- quantization at ``--bits`` on average (RTN / GPTQ, the same ``--group_size`` on both sides):
  uniform vs mixed precision from ``--bit_levels`` (``models.sensitivity_bits``).

Hyperparameters of the automatic rules (OWL's ``lam``, ``m`` and per-layer / per-block
groups; the sensitivity cost ``loss`` (KL from the float model) or ``output_error``) are
chosen on a *selection* subset of the validation stream (windows after the reported ones);
the perplexity reported is on the first ``--eval_batches`` validation batches, which no
choice looked at. ``increase`` is the perplexity minus the float model's; ``ratio`` is an
automatic rule's increase over the uniform one's (the acceptance asks for <= 0.8).

  python benchmarks/layer_budgets.py --lm_dir runs/lm_bible
  python benchmarks/layer_budgets.py --lm_dir runs/lm_bible --parts quant --quant gptq
  python benchmarks/layer_budgets.py --lm_dir runs/lm_bible --quick   # a smoke run

Prints one row per (method, allocation) on both subsets, the chosen allocations, and a final
JSON line with ``<method>_<rule>_increase`` / ``_ratio`` / ``_ppl``, ``dense_ppl`` and the
settings. Allocations are saved as JSON under ``--out_dir`` (default ``<lm_dir>/budgets``).
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from _timing import print_json, print_table  # noqa: E402

from jaxopt_models import models  # noqa: E402
from jaxopt_models.data import get_text_dataset, lm_train_batch  # noqa: E402
from jaxopt_models.models import get_model  # noqa: E402
from jaxopt_models.recipes import lm  # noqa: E402
from jaxopt_models.training import load_variables  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def _names(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def load_lm(lm_dir: str):
    """``(model, variables, dataset, config)`` of a finished LM recipe run."""
    with open(os.path.join(lm_dir, "results.json")) as f:
        results = json.load(f)
    config = ml_collections.ConfigDict(results["config"])
    d = config.dataset
    ds = get_text_dataset(
        d.name,
        tokenizer=d.tokenizer,
        vocab_size=d.vocab_size,
        seed=config.seed,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        max_bytes=d.max_bytes,
        data_dir=d.data_dir,
    )
    model = get_model(config.model.name, **lm.model_kwargs(config, ds.vocab_size))
    sample = np.zeros((1, config.context), np.int32)
    template = jax.jit(lambda x: model.init(jax.random.key(0), x))(sample)
    return model, load_variables(lm_dir, template), ds, config


class Evaluator:
    """Perplexity / bits per byte on two disjoint runs of validation windows."""

    def __init__(self, model, ds, context, batch_size, report_batches, select_batches):
        self.ds = ds
        per = batch_size * context
        n = len(ds.val)
        if (report_batches + select_batches) * per + 1 > n:
            raise SystemExit(
                f"the validation stream has {n} tokens, fewer than the "
                f"{(report_batches + select_batches) * per + 1} of --eval_batches "
                f"{report_batches} + --select_batches {select_batches} batches of {per}"
            )
        self.report = ds.val[: report_batches * per + 1]
        self.select = ds.val[report_batches * per : (report_batches + select_batches) * per + 1]
        self.fn = lm.make_lm_eval(model, None, batch_size, context)

    def __call__(self, variables, subset: str) -> dict[str, float]:
        tokens = self.report if subset == "report" else self.select
        return self.fn(variables["params"], tokens, self.ds.tokenizer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lm_dir", required=True, help="a finished LM recipe run")
    p.add_argument("--out_dir", default=None, help="where allocations go (<lm_dir>/budgets)")
    p.add_argument("--parts", default="prune,quant")
    p.add_argument("--prune", default="wanda,sparsegpt,magnitude", help="pruning methods")
    p.add_argument("--quant", default="rtn,gptq", help="quantization methods")
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--sparsity_levels", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--bit_levels", default="2,3,4,8")
    p.add_argument("--group_size", type=int, default=32, help="0: one grid per column")
    p.add_argument("--owl_lam", default="0.04,0.08,0.12")
    p.add_argument("--owl_m", default="3,5,7")
    p.add_argument("--owl_groups", default="layer,block")
    p.add_argument("--costs", default="loss,output_error", help="sensitivity cost variants")
    p.add_argument("--calibration_windows", type=int, default=64)
    p.add_argument("--calibration_batch", type=int, default=16)
    p.add_argument("--eval_batch", type=int, default=32)
    p.add_argument("--eval_batches", type=int, default=10, help="reported validation batches")
    p.add_argument("--select_batches", type=int, default=10, help="selection batches after them")
    p.add_argument("--seed", type=int, default=1234, help="seed of the calibration windows")
    p.add_argument("--quick", action="store_true", help="a smoke run: little data, few variants")
    p.add_argument(
        "--xla_cache",
        default=os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or os.path.join(tempfile.gettempdir(), "jaxopt_models_bench_xla"),
        help="persistent compilation cache: every compress_model call compiles one "
        "calibration step per layer group, the same programs each time ('' turns it off)",
    )
    args = p.parse_args()
    if args.xla_cache:
        jax.config.update("jax_compilation_cache_dir", args.xla_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    if args.quick:
        args.calibration_windows, args.calibration_batch = 16, 8
        args.eval_batches, args.select_batches = 2, 2
        args.owl_lam, args.owl_m, args.owl_groups = "0.08", "5", "layer"
        args.costs, args.sparsity_levels = "loss", "0.5,0.7,0.9"
        args.prune, args.quant, args.bit_levels = "wanda", "rtn", "2,3,4"
    parts = set(_names(args.parts))
    out_dir = args.out_dir or os.path.join(args.lm_dir, "budgets")
    os.makedirs(out_dir, exist_ok=True)

    t_start = time.perf_counter()
    model, variables, ds, config = load_lm(args.lm_dir)
    context = int(config.context)
    n_cal = args.calibration_windows // args.calibration_batch
    batches = [
        lm_train_batch(ds.train, args.calibration_batch, context, seed=args.seed, step=i)["tokens"]
        for i in range(n_cal)
    ]
    evaluate = Evaluator(
        model, ds, context, args.eval_batch, args.eval_batches, args.select_batches
    )
    dense = {s: evaluate(variables, s) for s in ("select", "report")}
    print(
        f"float model: perplexity {dense['report']['perplexity']:.4f} (report, "
        f"{dense['report']['tokens']:,} tokens), {dense['select']['perplexity']:.4f} (select, "
        f"{dense['select']['tokens']:,} tokens); calibration {n_cal} x "
        f"{args.calibration_batch} windows of {context}",
        flush=True,
    )
    stats = models.collect_stats(model, variables, batches)
    rows, record, chosen = [], {}, {}
    record["dense_ppl"] = dense["report"]["perplexity"]
    record["dense_bits_per_byte"] = dense["report"]["bits_per_byte"]

    def run(method, settings, rules):
        new_vars, _ = models.compress_model(
            model, variables, batches, method=method, settings=settings, layers=rules
        )
        return new_vars

    def add_row(method, rule, variant, scores, selected):
        inc = scores["report"]["perplexity"] - dense["report"]["perplexity"]
        rows.append(
            [
                method,
                rule,
                variant,
                f"{scores['select']['perplexity']:.4f}",
                f"{scores['report']['perplexity']:.4f}",
                f"{scores['report']['bits_per_byte']:.4f}",
                f"{inc:+.4f}",
                "*" if selected else "",
            ]
        )
        return inc

    def score(new_vars, both: bool):
        out = {"select": evaluate(new_vars, "select")}
        if both:
            out["report"] = evaluate(new_vars, "report")
        return out

    def best_of(method, rule, candidates, settings):
        """Evaluates each candidate allocation on the selection subset; the best one (and
        every other, for the table) also on the report subset."""
        results = []
        for variant, alloc in candidates:
            s = score(run(method, settings, alloc.rules), both=True)
            results.append((variant, alloc, s))
            print(
                f"  {method} {rule} {variant}: select {s['select']['perplexity']:.4f}, "
                f"report {s['report']['perplexity']:.4f}",
                flush=True,
            )
        best = min(results, key=lambda r: r[2]["select"]["perplexity"])
        for variant, _, s in results:
            add_row(method, rule, variant, s, variant == best[0])
        return best

    def finish(method, rule, uniform_inc, best):
        variant, alloc, s = best
        inc = s["report"]["perplexity"] - dense["report"]["perplexity"]
        record[f"{method}_{rule}_ppl"] = s["report"]["perplexity"]
        record[f"{method}_{rule}_increase"] = inc
        record[f"{method}_{rule}_ratio"] = inc / uniform_inc if uniform_inc > 0 else None
        record[f"{method}_{rule}_variant"] = variant
        chosen[f"{method}_{rule}"] = alloc
        models.save_allocation(alloc, os.path.join(out_dir, f"{method}_{rule}.json"))

    log = None if args.quick else (lambda line: print("    " + line, flush=True))
    if "prune" in parts:
        target = args.sparsity
        levels = _floats(args.sparsity_levels)
        for method in _names(args.prune):
            t0 = time.perf_counter()
            uni = score(run(method, {"sparsity": target}, None), both=True)
            uniform_inc = add_row(method, "uniform", f"{target:g}", uni, True)
            record[f"{method}_uniform_ppl"] = uni["report"]["perplexity"]
            record[f"{method}_uniform_increase"] = uniform_inc
            print(f"{method} uniform: report {uni['report']['perplexity']:.4f}", flush=True)
            owl = [
                (
                    f"lam={lam:g} m={m:g} {groups}",
                    models.owl_sparsity(
                        model,
                        variables,
                        batches,
                        target=target,
                        lam=lam,
                        m=m,
                        groups=groups,
                        stats=stats,
                    ),
                )  # fmt: skip
                for lam in _floats(args.owl_lam)
                for m in _floats(args.owl_m)
                for groups in _names(args.owl_groups)
            ]
            finish(method, "owl", uniform_inc, best_of(method, "owl", owl, {}))
            sens = []
            for cost in _names(args.costs):
                alloc = models.sensitivity_sparsity(
                    model, variables, batches, target=target, method=method, levels=levels,
                    cost=cost, stats=stats, log=log,
                )  # fmt: skip
                sens.append((f"cost={cost}", alloc))
            finish(method, "sensitivity", uniform_inc, best_of(method, "sensitivity", sens, {}))
            print(f"{method}: {time.perf_counter() - t0:.0f} s", flush=True)
    if "quant" in parts:
        g = args.group_size or None
        bit_levels = _ints(args.bit_levels)
        for method in _names(args.quant):
            t0 = time.perf_counter()
            settings = {"group_size": g}
            uni = score(run(method, {**settings, "bits": args.bits}, None), both=True)
            uniform_inc = add_row(method, "uniform", f"{args.bits} bits", uni, True)
            record[f"{method}_uniform_ppl"] = uni["report"]["perplexity"]
            record[f"{method}_uniform_increase"] = uniform_inc
            print(f"{method} uniform: report {uni['report']['perplexity']:.4f}", flush=True)
            mixed = []
            for cost in _names(args.costs):
                alloc = models.sensitivity_bits(
                    model, variables, batches, method=method, average_bits=args.bits,
                    levels=bit_levels, settings=settings, cost=cost, stats=stats, log=log,
                )  # fmt: skip
                mixed.append((f"cost={cost}", alloc))
            finish(method, "mixed", uniform_inc, best_of(method, "mixed", mixed, settings))
            print(f"{method}: {time.perf_counter() - t0:.0f} s", flush=True)

    print()
    header = [
        "method",
        "allocation",
        "variant",
        "select ppl",
        "ppl",
        "bits/byte",
        "increase",
        "chosen",
    ]
    print_table(header, rows)
    print(
        f"\nfloat: ppl {dense['report']['perplexity']:.4f}, bits/byte "
        f"{dense['report']['bits_per_byte']:.4f}; increase = ppl - float ppl on the reported "
        "subset; chosen = best on the selection subset"
    )
    for name, alloc in chosen.items():
        print(f"\n{name}: " + models.format_allocation(alloc))
    record.update(
        {
            "lm_dir": os.path.basename(os.path.normpath(args.lm_dir)),
            "sparsity": args.sparsity,
            "bits": args.bits,
            "bit_levels": _ints(args.bit_levels),
            "group_size": args.group_size or None,
            "calibration_windows": n_cal * args.calibration_batch,
            "report_tokens": dense["report"]["tokens"],
            "select_tokens": dense["select"]["tokens"],
            "seconds": time.perf_counter() - t_start,
            "device": jax.devices()[0].platform,
        }
    )
    print_json(record)


if __name__ == "__main__":
    main()
