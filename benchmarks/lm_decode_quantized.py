r"""Decoding speed at batch 1 with weight-only quantized kernels: float32 vs int8 vs int4.

A ``models.CausalLM`` decodes greedily with the KV cache (``models.generate``: prefill of a
16-token prompt, then one compiled step per token up to a 256-token context, 240 new
tokens) with three forms of the same weights:

- ``float32``: the float params;
- ``int8``: every linear kernel (the head projections, attention output and MLP; the tied
  embedding stays float) quantized per output column, symmetric, 8 bits (``compress_model``'s
  round to nearest: ``report.qparams`` of QTensors / QuantizedKernels, one byte per weight);
- ``int4``: the same at 4 bits, asymmetric, groups of ``group`` inputs, bit-packed two per
  byte (``quantization.pack_params``), plus a float32 scale and a zero point per group.

The quantized forms run through ``apply_with_qtensors`` inside the compiled decode step, so
the loop reads the integer kernels and dequantizes them on every step (nothing is hoisted
out of the loop). Each quantized run's tokens are checked against the float model run on
its dequantized weights (``identical``: greedy decoding gives the same tokens).

Shapes: ``bible`` is the trained Bible LM's model (4 layers, 4 heads, width 160, byte
vocabulary, RoPE, tied embeddings; about 1.2M kernel weights, 5 MB in float32: it sits in
the CPU caches), ``wide`` 8 layers, 8 heads, width 512 (25M kernel weights, 100 MB in
float32: every step streams the weights from memory, the case weight-only quantization is
for). Also, per shape, its MLP up-projection kernel alone: ``(1, in) @ (in, out)`` products
in a compiled loop, the quantized kernel dequantized in every step as in decoding, to show
where the time goes (float product; int8 or packed int4 dequantize + product).

  python benchmarks/lm_decode_quantized.py            # both shapes, 5 rounds
  python benchmarks/lm_decode_quantized.py --quick    # bible shape, 64-token context, 2 rounds

Interleaved rounds (the order rotates), medians, ratios within one run; prints a table and a
final JSON line with ``int8_decode_ratio`` / ``int4_decode_ratio`` per shape (quantized
tokens/s over float32 tokens/s: above 1 is faster) and the weight bytes of each form.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _timing import (  # noqa: E402
    load_average,
    median,
    print_json,
    print_table,
    shape_names,
    time_interleaved,
)

from jaxopt_models import models, quantization  # noqa: E402
from jaxopt_models.models import weight_only_dense  # noqa: E402

VOCAB = 256  # bytes
SHAPES = {
    "bible": {"layers": 4, "heads": 4, "width": 160, "group": 32},  # 160 = 5 groups of 32
    "wide": {"layers": 8, "heads": 8, "width": 512, "group": 128},
}
PROMPT = 16
FORMS = ("float32", "int8", "int4")


def lm_model(shape: dict, context: int) -> models.CausalLM:
    """The Bible LM's architecture at ``shape``: RoPE, LayerNorm, GELU MLP, tied embeddings."""
    return models.CausalLM(
        vocab_size=VOCAB,
        num_layers=shape["layers"],
        num_heads=shape["heads"],
        embed_dim=shape["width"],
        max_len=context,
        init_std=0.1,  # distinct logits: greedy tokens do not hinge on rounding
    )


def weight_forms(model: models.CausalLM, shape: dict, seed: int = 0) -> dict:
    """``{form: params}``: float32 params and their int8 / packed int4 quantized kernels."""
    tokens = jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (1, 16)), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(seed), tokens)["params"]
    forms = {"float32": params}
    settings = {
        "int8": {"bits": 8, "symmetric": True},
        "int4": {"bits": 4, "group_size": shape["group"]},
    }
    for form, s in settings.items():
        _, report = models.compress_model(
            model, {"params": params}, [tokens], method="rtn", settings=s, sequential=False
        )
        q = report.qparams
        forms[form] = quantization.pack_params(q) if form == "int4" else q
    return forms


def weight_bytes(params) -> int:
    """Bytes the params store (quantized kernels at their packed width, plus scales)."""
    return models.stored_bytes(params)


def measure_shape(shape: dict, *, context: int, rounds: int) -> dict:
    """Greedy decoding at batch 1 with each weight form: times, tokens, bytes."""
    model = lm_model(shape, context)
    forms = weight_forms(model, shape)
    prompt = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (1, PROMPT)), jnp.int32)
    new = context - PROMPT

    def run(params):
        return lambda: models.generate(model, params, prompt, max_new_tokens=new)

    out = {form: np.asarray(run(p)()) for form, p in forms.items()}  # compiles each
    identical = {}
    for form in FORMS[1:]:
        # the float program on the dequantized weights (same shapes: no new compile)
        ref = np.asarray(run(models.dequantize_tree(forms[form]))())
        identical[form] = bool(np.array_equal(out[form], ref))
    times = time_interleaved(
        {form: run(p) for form, p in forms.items()}, rounds=rounds, iters=1, warmup=0
    )
    return {
        "new_tokens": new,
        "times": times,
        "identical": identical,
        "bytes": {form: weight_bytes(p) for form, p in forms.items()},
        "kernel_weights": sum(
            int(np.prod(k.shape)) for k in models.quantized_kernels(forms["int8"]).values()
        ),
    }


GEMV_STEPS = 32


def gemv_fns(n_in: int, n_out: int, group: int) -> dict:
    """One kernel ``(n_in, n_out)`` at batch 1 as decoding uses it: ``GEMV_STEPS`` products
    ``(1, n_in) @ W`` in a compiled loop, each step dequantizing the kernel (the kernel is
    tied to the step's input, as ``generate`` ties it to the cache, so nothing is hoisted).
    Forms: the float product, int8 and packed int4 through ``weight_only_dense``."""
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.normal(size=(n_in, n_out)), jnp.float32)
    xs = jnp.asarray(rng.normal(size=(GEMV_STEPS, 1, n_in)), jnp.float32)
    q8 = quantization.quantize(w, 8, axis=-1)
    q4 = quantization.pack(
        quantization.quantize(w, 4, symmetric=False, axis=-1, group_size=group, group_axis=0)
    )

    def looped(product):
        def body(kernel, x):
            kernel, x = jax.lax.optimization_barrier((kernel, x))
            return kernel, product(x, kernel)

        return jax.jit(lambda kernel: jax.lax.scan(body, kernel, xs)[1])

    matmul, dense = looped(jnp.matmul), looped(weight_only_dense)
    return {
        "float32": lambda: matmul(w),
        "int8": lambda: dense(q8),
        "int4": lambda: dense(q4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="bible shape, 64-token context")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--shapes", default=None, help="comma list of: " + ",".join(SHAPES))
    p.add_argument("--context", type=int, default=None, help="prompt + new tokens (256)")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    context = args.context or (64 if args.quick else 256)
    if context <= PROMPT:
        p.error(f"--context must be more than the {PROMPT}-token prompt, got {context}")
    names = shape_names(p, args.shapes or ("bible" if args.quick else "bible,wide"), SHAPES)

    print(
        f"jax {jax.__version__}, backend {jax.default_backend()} ({jax.devices()[0].device_kind})"
        f", cores {len(os.sched_getaffinity(0))}, batch 1, prompt {PROMPT}, context {context}, "
        f"{rounds} interleaved rounds (medians), load {load_average()}"
    )
    record: dict = {
        "backend": jax.default_backend(),
        "rounds": rounds,
        "context": context,
        "prompt": PROMPT,
        "vocab": VOCAB,
    }
    rows, gemv_rows = [], []
    for name in names:
        shape = SHAPES[name]
        m = measure_shape(shape, context=context, rounds=rounds)
        sec = {form: median(t) for form, t in m["times"].items()}
        tps = {form: m["new_tokens"] / s for form, s in sec.items()}
        load = load_average()
        for form in FORMS:
            rows.append(
                [
                    name,
                    form,
                    f"{m['bytes'][form] / 1e6:.2f}",
                    f"{m['bytes'][form] / m['bytes']['float32']:.3f}",
                    f"{tps[form]:,.0f}",
                    f"{tps[form] / tps['float32']:.2f}",
                    "-" if form == "float32" else str(m["identical"][form]),
                    f"{load}",
                ]
            )
        for form in FORMS[1:]:
            record.setdefault(f"{form}_decode_ratio", {})[name] = round(
                tps[form] / tps["float32"], 3
            )
            record.setdefault(f"{form}_tokens_identical", {})[name] = m["identical"][form]
        record.setdefault("tokens_per_s", {})[name] = {f: round(v, 1) for f, v in tps.items()}
        record.setdefault("weight_bytes", {})[name] = m["bytes"]
        record.setdefault("kernel_weights", {})[name] = m["kernel_weights"]
        record.setdefault("shapes", {})[name] = {**shape, "vocab": VOCAB}

        n_in, n_out = shape["width"], 4 * shape["width"]  # the MLP's up projection
        times = time_interleaved(gemv_fns(n_in, n_out, shape["group"]), rounds=rounds, iters=5)
        us = {form: median(t) * 1e6 / GEMV_STEPS for form, t in times.items()}
        for form in FORMS:
            gemv_rows.append(
                [
                    f"{name} {n_in}x{n_out}",
                    form,
                    f"{us[form]:.1f}",
                    f"{us['float32'] / us[form]:.2f}",
                ]
            )
        record.setdefault("gemv_us", {})[f"{name} {n_in}x{n_out}"] = {
            f: round(v, 1) for f, v in us.items()
        }

    print(f"\ndecode at batch 1, {context - PROMPT} new tokens (KV cache, greedy)")
    print_table(
        ["shape", "weights", "MB", "vs float32", "tokens/s", "speed vs float32", "identical",
         "load"],
        rows,
    )  # fmt: skip
    print(
        f"\none MLP kernel at batch 1: (1, in) @ (in, out) in a loop of {GEMV_STEPS} steps, "
        "dequantized in every step"
    )
    print_table(["kernel", "weights", "us/product", "speed vs float32"], gemv_rows)
    print_json(record)


if __name__ == "__main__":
    main()
