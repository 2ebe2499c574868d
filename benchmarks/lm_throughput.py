r"""Language-model throughput: the library's LM train step, KV-cache decoding, XLA:CPU costs.

1. Train step, tokens/s, on nanoGPT's CPU shape (4 layers, 4 heads, width 128, context 64,
   batch 12) and a wider one (6 layers, 6 heads, width 384, context 256, batch 8), vocabulary
   65 (nanoGPT's character-level Shakespeare):
   - ``ours``: the LM recipe's step (``make_train_step(loss_fn=lm_loss, input_key="tokens",
     label_key="targets")`` with the recipe's AdamW, clipping and schedule) on
     ``models.CausalLM`` with learned positions (the GPT-2 / nanoGPT layout);
   - ``minimal``: a hand-written ``jax.jit(value_and_grad + optax)`` loop of the same model
     (AdamW, clip 1.0), as nanoGPT's train loop is; ``lm_step_ratio`` = ours / minimal;
   - ``naive flax``: the same network written the obvious Flax way (one ``c_attn`` Dense,
     ``jax.nn.dot_product_attention``, ``nn.LayerNorm``) in the minimal loop: what XLA:CPU
     does with the plain formulation;
   - ``torch`` (with ``--torch_python`` and ``--nanogpt_model``): nanoGPT's own ``model.py``
     in PyTorch eager (``benchmarks/_nanogpt_torch.py``, run in that Python), interleaved
     round by round with the JAX steps.
2. Decoding at batch 1 with a 256-token context: ``models.generate`` (KV cache, one compiled
   step per token) against recomputing the whole 256-token window for every new token;
   the tokens must be identical. ``decode_speedup`` = recompute time / cached time.
3. (not with ``--quick``) Where XLA:CPU spends the time: the weight-gradient product
   ``x.T @ dy`` as autodiff writes it against an explicit transpose first, and attention
   forward + backward through ``jax.nn.dot_product_attention`` against the library's and
   (contexts of 128 or more) against a blocked causal attention that skips the masked
   upper blocks (``blocked_causal_attention``, a measurement the library does not use).
   ``benchmarks/lm_step_profile.py`` attributes the whole step's time.

  python benchmarks/lm_throughput.py --quick          # CPU shape only, < 2 minutes
  python benchmarks/lm_throughput.py                  # both shapes, decode, XLA:CPU costs
  python benchmarks/lm_throughput.py --torch_python /path/to/venv/bin/python \
      --nanogpt_model /path/to/nanoGPT/model.py       # + PyTorch nanoGPT side by side
  python benchmarks/lm_throughput.py --cpus 0         # pin everything to one core

Interleaved rounds, medians; the 1-minute load average is printed with the numbers (the
machine may be shared). Prints tables and a final JSON line.
"""

import argparse
import functools
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":  # before JAX starts: its thread pools size themselves from the mask
    from _cpus import pin_from_argv

    pin_from_argv()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _timing import (  # noqa: E402
    load_average,
    median,
    print_json,
    print_table,
    shape_names,
    step_runner,
    time_interleaved,
)

from jaxopt_models import models, training  # noqa: E402
from jaxopt_models.models import transformer  # noqa: E402
from jaxopt_models.recipes import lm  # noqa: E402

VOCAB = 65  # nanoGPT's character-level Shakespeare vocabulary
SHAPES = {
    "cpu": {"layers": 4, "heads": 4, "width": 128, "context": 64, "batch": 12},
    "wide": {"layers": 6, "heads": 6, "width": 384, "context": 256, "batch": 8},
}


# ----------------------------------------------------------------------------- models


def lm_model(shape: dict, vocab: int = VOCAB) -> models.CausalLM:
    """The library's GPT of ``shape``: learned positions, LayerNorm, tanh GELU, tied head."""
    return models.CausalLM(
        vocab_size=vocab,
        num_layers=shape["layers"],
        num_heads=shape["heads"],
        embed_dim=shape["width"],
        max_len=shape["context"],
        positions="learned",
    )


class NaiveBlock(nn.Module):
    """A pre-norm GPT block written the obvious Flax way (fused qkv Dense, library attention
    of JAX, tanh GELU)."""

    heads: int

    @nn.compact
    def __call__(self, x):
        b, t, e = x.shape
        qkv = nn.Dense(3 * e, name="c_attn")(nn.LayerNorm(name="ln_1")(x))
        q, k, v = jnp.split(qkv.reshape(b, t, 3 * self.heads, e // self.heads), 3, axis=2)
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, e)
        x = x + nn.Dense(e, name="c_proj")(y)
        h = nn.gelu(nn.Dense(4 * e, name="c_fc")(nn.LayerNorm(name="ln_2")(x)))
        return x + nn.Dense(e, name="mlp_proj")(h)


class NaiveGPT(nn.Module):
    """nanoGPT's network as a Flax user first writes it (tied head, learned positions)."""

    vocab: int
    layers: int
    heads: int
    width: int
    context: int

    @nn.compact
    def __call__(self, tokens):
        wte = nn.Embed(self.vocab, self.width, name="wte")
        x = wte(tokens) + nn.Embed(self.context, self.width, name="wpe")(
            jnp.arange(tokens.shape[1])
        )
        for i in range(self.layers):
            x = NaiveBlock(self.heads, name=f"h_{i}")(x)
        return wte.attend(nn.LayerNorm(name="ln_f")(x))


def token_batch(shape: dict, vocab: int = VOCAB, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """One fixed random ``(inputs, targets)`` batch of ``shape``."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (shape["batch"], shape["context"] + 1)).astype(np.int32)
    return jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])


# ----------------------------------------------------------------------------- train steps


def nanogpt_optimizer() -> optax.GradientTransformation:
    """nanoGPT's optimizer for the Shakespeare runs: AdamW(1e-3, 0.9, 0.99, wd 0.1), clip 1."""
    return optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b1=0.9, b2=0.99, weight_decay=0.1)
    )


def library_train_step(model, x, y):
    """The LM recipe's compiled step (its optimizer config), its state and the batch."""
    config = lm.default_config()
    tx = training.make_optimizer(config.optimizer, config.num_steps)
    state = training.create_train_state(model, jax.random.key(0), x, tx)
    step = training.make_train_step(loss_fn=lm.lm_loss, input_key="tokens", label_key="targets")
    return step, state, {"tokens": x, "targets": y}


def library_step(model, x, y):
    """The LM recipe's compiled step as a no-argument callable."""
    return step_runner(*library_train_step(model, x, y))


def minimal_step(model, x, y):
    """A hand-written ``jax.jit(value_and_grad + optax)`` loop of ``model``."""
    tx = nanogpt_optimizer()
    init_key = jax.random.split(jax.random.key(0))[0]  # the parameters create_train_state makes
    params = jax.jit(model.init)(init_key, x)["params"]
    box = {"params": params, "opt": tx.init(params)}

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def run():
        box["params"], box["opt"], loss = step(box["params"], box["opt"], x, y)
        return loss

    return run


class TorchNanoGPT:
    """nanoGPT's PyTorch model in another Python, one ``run 1`` round trip per call."""

    def __init__(self, python: str, model_py: str, shape: dict, vocab: int, threads: int):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nanogpt_torch.py")
        args = [python, script, "--model_py", model_py, "--vocab", str(vocab)]
        args += ["--threads", str(threads)]
        for key in ("layers", "heads", "width", "context", "batch"):
            args += [f"--{key}", str(shape[key])]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"the PyTorch timing script did not start: {' '.join(args)}")
        self.params, self.version = int(line[1]), line[2]

    def __call__(self) -> None:
        self.proc.stdin.write("run 1\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def train_steps(shape: dict, *, naive: bool = True) -> dict:
    """``{name: step}``: no-argument callables running one train step (returning the loss)
    of ``ours``, ``minimal`` and (with ``naive``) ``naive flax`` on one fixed batch."""
    x, y = token_batch(shape)
    model = lm_model(shape)
    fns = {"ours": library_step(model, x, y), "minimal": minimal_step(model, x, y)}
    if naive:
        naive_model = NaiveGPT(
            VOCAB, shape["layers"], shape["heads"], shape["width"], shape["context"]
        )
        fns["naive flax"] = minimal_step(naive_model, x, y)
    return fns


def measure_train(shape: dict, *, rounds: int, iters: int, torch=None, naive: bool = True):
    """Seconds per train step of each variant, interleaved: ``{name: [per round]}``."""
    fns = train_steps(shape, naive=naive)
    if torch is not None:
        fns["torch nanoGPT"] = torch
    return time_interleaved(fns, rounds=rounds, iters=iters, warmup=2)


# ----------------------------------------------------------------------------- decoding


def recompute_generate(model, params, prompt: jax.Array, max_new_tokens: int) -> jax.Array:
    """Greedy decoding without a cache: every new token reruns the whole fixed-size window
    (prompt + ``max_new_tokens`` positions, later ones padded; the mask makes them unseen)."""
    batch, p = prompt.shape
    total = p + max_new_tokens

    @jax.jit
    def run(params, prompt):
        buf = jnp.zeros((batch, total), jnp.int32).at[:, :p].set(prompt)

        def body(i, buf):
            logits = model.apply({"params": params}, buf)
            last = jax.lax.dynamic_index_in_dim(logits, p + i - 1, axis=1, keepdims=False)
            token = jnp.argmax(last, axis=-1).astype(jnp.int32)
            return jax.lax.dynamic_update_index_in_dim(buf, token, p + i, axis=1)

        return jax.lax.fori_loop(0, max_new_tokens, body, buf)

    return run(params, prompt)


def measure_decode(shape: dict, *, context: int, prompt_len: int, rounds: int, iters: int = 1):
    """Cached ``generate`` vs full recomputation at batch 1; checks the tokens are equal."""
    model = lm_model({**shape, "context": context}).clone(init_std=0.1)  # distinct logits
    params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, context), jnp.int32))["params"]
    prompt = jnp.asarray(np.random.default_rng(2).integers(0, VOCAB, (1, prompt_len)), jnp.int32)
    new = context - prompt_len
    cached = models.generate(model, params, prompt, max_new_tokens=new)
    full = recompute_generate(model, params, prompt, new)
    mismatch = np.flatnonzero(np.asarray(cached)[0] != np.asarray(full)[0])
    times = time_interleaved(
        {
            "kv cache": lambda: models.generate(model, params, prompt, max_new_tokens=new),
            "recompute": lambda: recompute_generate(model, params, prompt, new),
        },
        rounds=rounds,
        iters=iters,
        warmup=1,
    )
    return {
        "new_tokens": new,
        "times": times,
        "identical": mismatch.size == 0,
        "first_mismatch": int(mismatch[0]) if mismatch.size else None,
    }


# ----------------------------------------------------------------------------- XLA:CPU costs


def _causal_block_bias(i: int, block: int) -> np.ndarray:
    """The additive mask of query block ``i`` against key blocks ``0..i``."""
    bias = np.zeros((block, (i + 1) * block), np.float32)
    bias[:, i * block :][np.triu(np.ones((block, block), bool), 1)] = transformer._MASK_VALUE
    return bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def blocked_causal_attention(q, k, v, block):
    """Causal softmax attention of ``(B, N, T, D)`` arrays by query blocks of ``block`` rows,
    each against only the key blocks at or before it (the masked upper blocks are skipped,
    as a fused flash kernel does). A measurement: the library does not use it."""
    return _blocked_fwd(q, k, v, block)[0]


def _blocked_fwd(q, k, v, block):
    scale, outs, probs = 1.0 / np.sqrt(q.shape[-1]), [], []
    for i in range(q.shape[2] // block):
        rows, keys = slice(i * block, (i + 1) * block), slice(0, (i + 1) * block)
        s = jnp.einsum("bntd,bnsd->bnts", q[:, :, rows], k[:, :, keys]) * scale
        e = jnp.exp(s + _causal_block_bias(i, block) - s.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
        outs.append(jnp.einsum("bnts,bnsd->bntd", p, v[:, :, keys]))
        probs.append(p)
    o = jnp.concatenate(outs, axis=2)
    return o, (q, k, v, probs, o)


def _blocked_bwd(block, res, do):
    q, k, v, probs, o = res
    t, scale = q.shape[2], 1.0 / np.sqrt(q.shape[-1])
    delta = jnp.sum(do * o, -1, keepdims=True)
    dqs, dk, dv = [], jnp.zeros_like(k), jnp.zeros_like(v)
    for i, p in enumerate(probs):
        rows, keys = slice(i * block, (i + 1) * block), slice(0, (i + 1) * block)
        pad = ((0, 0), (0, 0), (0, t - (i + 1) * block), (0, 0))
        dv = dv + jnp.pad(jnp.einsum("bnts,bntd->bnsd", p, do[:, :, rows]), pad)
        dp = jnp.einsum("bntd,bnsd->bnts", do[:, :, rows], v[:, :, keys])
        ds = p * (dp - delta[:, :, rows]) * scale
        dqs.append(jnp.einsum("bnts,bnsd->bntd", ds, k[:, :, keys]))
        dk = dk + jnp.pad(jnp.einsum("bnts,bntd->bnsd", ds, q[:, :, rows]), pad)
    return jnp.concatenate(dqs, axis=2), dk, dv


blocked_causal_attention.defvjp(_blocked_fwd, _blocked_bwd)


def measure_xla_costs(*, rounds: int):
    """Minimal XLA:CPU measurements behind the model's CPU formulations (seconds per call)."""
    rng = np.random.default_rng(0)
    out = {}
    for rows, k, n in ((768, 512, 128), (2048, 384, 1536)):
        x = jnp.asarray(rng.normal(size=(rows, k)), jnp.float32)
        dy = jnp.asarray(rng.normal(size=(rows, n)), jnp.float32)
        autodiff = jax.jit(lambda x, dy: x.T @ dy)
        explicit = jax.jit(lambda x, dy: jax.lax.optimization_barrier(x.T) @ dy)
        fns = {
            "x.T @ dy": lambda: autodiff(x, dy),
            "transpose, then matmul": lambda: explicit(x, dy),
        }
        out[f"weight grad {k}x{n} over {rows} rows"] = (
            time_interleaved(fns, rounds=rounds, iters=20),
            2 * rows * k * n,
        )
    for name in ("cpu", "wide"):
        s = SHAPES[name]
        b, t, h = s["batch"], s["context"], s["heads"]
        d = s["width"] // h
        q, k, v, r = (jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32) for _ in range(4))

        def grad_of(attention):
            return jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v) * r), (0, 1, 2)))

        heads_major = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
        attentions = {
            "jax.nn.dot_product_attention": lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, is_causal=True
            ),
            "library attention": lambda q, k, v: transformer._attention(q, k, v, None, True),
        }
        if t >= 128:  # query blocks of 64: the upper blocks skipped, as PyTorch's kernel does
            attentions["blocked causal, 64-row blocks"] = lambda q, k, v: heads_major(
                blocked_causal_attention(*map(heads_major, (q, k, v)), 64)
            )
        grads = {n: grad_of(f) for n, f in attentions.items()}
        fns = {n: (lambda g=g: g(q, k, v)) for n, g in grads.items()}
        iters = 10 if name == "cpu" else 2
        if t >= 128:
            forward = {n: jax.jit(attentions[n]) for n in list(attentions)[1:]}
            out[f"attention forward {name} shape"] = (
                time_interleaved(
                    {n: (lambda f=f: f(q, k, v)) for n, f in forward.items()},
                    rounds=rounds,
                    iters=iters,
                ),
                None,
            )
        out[f"attention fwd+bwd {name} shape"] = (
            time_interleaved(fns, rounds=rounds, iters=iters),
            None,
        )
    return out


# ----------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU shape only, fewer rounds")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--shapes", default=None, help="comma list of: " + ",".join(SHAPES))
    p.add_argument("--torch_python", default=None, help="a Python with PyTorch installed")
    p.add_argument("--nanogpt_model", default=None, help="nanoGPT's model.py (not vendored)")
    p.add_argument("--torch_threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--cpus", default=None, help="pin to these cores, e.g. 0 or 0,1")
    p.add_argument("--no_decode", action="store_true")
    args = p.parse_args()
    if (args.torch_python is None) != (args.nanogpt_model is None):
        p.error("--torch_python and --nanogpt_model go together")
    rounds = args.rounds or (3 if args.quick else 7)
    names = shape_names(p, args.shapes or ("cpu" if args.quick else "cpu,wide"), SHAPES)

    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, cores "
        f"{len(os.sched_getaffinity(0))}, vocabulary {VOCAB}, {rounds} interleaved rounds "
        f"(medians), load {load_average()}"
    )
    record: dict = {"backend": jax.default_backend(), "rounds": rounds, "vocab": VOCAB}
    rows, ratios = [], {}
    for name in names:
        shape = SHAPES[name]
        torch = None
        if args.torch_python:
            torch = TorchNanoGPT(
                args.torch_python, args.nanogpt_model, shape, VOCAB, args.torch_threads
            )
            record["torch_version"] = torch.version
        try:
            iters = (3 if args.quick else 5) if name == "cpu" else 1
            times = measure_train(shape, rounds=rounds, iters=iters, torch=torch)
        finally:
            if torch is not None:
                torch.close()
        tokens = shape["batch"] * shape["context"]
        sec = {k: median(v) for k, v in times.items()}
        ratios[name] = sec["minimal"] / sec["ours"]
        record[f"lm_step_ratio_{name}"] = round(ratios[name], 4)
        load = load_average()
        for k, s in sec.items():
            key = k.split()[0]
            record[f"{key}_tokens_per_s_{name}"] = round(tokens / s, 1)
            rows.append(
                [
                    name,
                    k,
                    f"{s * 1e3:.1f}",
                    f"{tokens / s:,.0f}",
                    f"{sec['ours'] / s:.2f}",
                    f"{load}",
                ]
            )
        if torch is not None:
            record[f"vs_torch_{name}"] = round(sec["torch nanoGPT"] / sec["ours"], 4)
    print_table(["shape", "train step", "ms/step", "tokens/s", "speed of ours vs it", "load"], rows)
    record["lm_step_ratio"] = round(min(ratios.values()), 4)

    if not args.no_decode:
        d = measure_decode(SHAPES["cpu"], context=256, prompt_len=32, rounds=rounds)
        cached, full = median(d["times"]["kv cache"]), median(d["times"]["recompute"])
        n = d["new_tokens"]
        print(
            f"\ndecode, batch 1, 256-token context (32 prompt + {n} new), load {load_average()}: "
            f"KV cache {n / cached:,.0f} tokens/s, full recomputation {n / full:,.0f} "
            f"tokens/s, speedup {full / cached:.1f}x, tokens identical: {d['identical']}"
        )
        record.update(
            decode_tokens_per_s=round(n / cached, 1),
            recompute_tokens_per_s=round(n / full, 1),
            decode_speedup=round(full / cached, 2),
            decode_tokens_identical=d["identical"],
        )
        if not d["identical"]:
            print(f"  first differing position: {d['first_mismatch']}")

    if not args.quick:
        rows = []
        for what, (times, flops) in measure_xla_costs(rounds=rounds).items():
            base = median(next(iter(times.values())))
            for k, v in times.items():
                s = median(v)
                rate = f"{flops / s / 1e9:.1f}" if flops else "-"
                rows.append([what, k, f"{s * 1e3:.3f}", rate, f"{base / s:.2f}"])
        print(f"\nXLA:CPU costs (load {load_average()})")
        print_table(["measurement", "variant", "ms", "GFLOP/s", "speedup"], rows)

    record["load"] = load_average()
    print_json(record)


if __name__ == "__main__":
    main()
