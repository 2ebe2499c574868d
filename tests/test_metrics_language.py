import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_models import data, metrics


def _reference_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Float64 NumPy cross-entropy per position."""
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("shape", [(5,), (2, 7), (3, 4, 6)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("with_mask", [False, True])
def test_lm_loss_matches_float64_reference(shape, dtype, with_mask):
    rng = np.random.default_rng(0)
    vocab = 11
    logits = (rng.normal(size=(*shape, vocab)) * 3).astype(np.float32)
    logits = np.asarray(jnp.asarray(logits, dtype).astype(jnp.float32))  # what the model gave
    targets = rng.integers(0, vocab, shape)
    mask = rng.random(shape) < 0.7 if with_mask else np.ones(shape, bool)
    ref = _reference_nll(logits, targets) * mask
    out = metrics.lm_loss(
        jnp.asarray(logits, dtype), jnp.asarray(targets), (jnp.asarray(mask) if with_mask else None)
    )
    assert isinstance(out, metrics.LMLoss)
    assert out.per_token.shape == shape and out.per_token.dtype == jnp.float32
    np.testing.assert_allclose(out.per_token, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.total_nats, ref.sum(), rtol=1e-5)
    assert float(out.num_tokens) == mask.sum()
    np.testing.assert_allclose(out.mean, ref.sum() / mask.sum(), rtol=1e-5)


def test_lm_loss_under_jit_and_masked_padding():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 5, (2, 4)))
    mask = jnp.array([[True, True, True, True], [True, False, False, False]])
    eager = metrics.lm_loss(logits, targets, mask)
    jitted = jax.jit(metrics.lm_loss)(logits, targets, mask)
    np.testing.assert_allclose(jitted.total_nats, eager.total_nats, rtol=1e-6)
    assert (np.asarray(eager.per_token)[~np.asarray(mask)] == 0).all()
    # Huge logits on padded rows do not leak into the sum.
    poisoned = logits.at[1, 1:].set(1e30)
    np.testing.assert_allclose(metrics.lm_loss(poisoned, targets, mask).total_nats,
                               eager.total_nats, rtol=1e-6)  # fmt: skip


def test_lm_loss_shape_errors():
    with pytest.raises(ValueError, match=r"logits shape \(2, 3\) must be targets shape \(3,\)"):
        metrics.lm_loss(jnp.zeros((2, 3)), jnp.zeros((3,), int))
    with pytest.raises(ValueError, match="mask shape"):
        metrics.lm_loss(jnp.zeros((2, 3)), jnp.zeros((2,), int), jnp.ones((3,), bool))


def test_uniform_predictions():
    vocab, n = 16, 10
    out = metrics.lm_loss(jnp.zeros((n, vocab)), jnp.arange(n) % vocab)
    total, count = float(out.total_nats), float(out.num_tokens)
    assert total == pytest.approx(n * math.log(vocab), rel=1e-6)
    assert metrics.perplexity(total, count) == pytest.approx(vocab, rel=1e-5)
    assert metrics.bits_per_token(total, count) == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summaries_match_numpy(seed):
    rng = np.random.default_rng(seed)
    per_token = rng.exponential(2.0, 1000)
    total, n, nbytes = per_token.sum(), per_token.size, int(rng.integers(1000, 5000))
    assert metrics.perplexity(total, n) == pytest.approx(np.exp(per_token.mean()), rel=1e-12)
    assert metrics.bits_per_token(total, n) == pytest.approx(per_token.mean() / np.log(2), 1e-12)
    assert metrics.bits_per_byte(total, nbytes) == pytest.approx(total / nbytes / np.log(2), 1e-12)
    # The identity bits/byte = bits/token * tokens/byte, whatever the tokenizer.
    assert metrics.bits_per_byte(total, nbytes) == pytest.approx(
        metrics.bits_per_token(total, n) * n / nbytes, rel=1e-12
    )
    assert isinstance(metrics.perplexity(total, n), float)


def _score(tokens: np.ndarray, vocab: int, seed: int = 0):
    """Sum of nats of random-logit predictions over every target of a stream."""
    rng = np.random.default_rng(seed)
    total, count = 0.0, 0.0
    for b in data.lm_eval_batches(tokens, 2, 8):
        logits = jnp.asarray(rng.normal(size=(2, 8, vocab)), jnp.float32)
        out = metrics.lm_loss(logits, jnp.asarray(b["targets"]), jnp.asarray(b["mask"]))
        total, count = total + float(out.total_nats), count + float(out.num_tokens)
    return total, count


def test_bits_per_byte_for_the_byte_tokenizer():
    tok = data.ByteTokenizer()
    docs = [data.Document("a", "héllo wörld, naïve café\n"), data.Document("b", "日本語 🙂\n")]
    tokens, num_bytes = data.encode_documents(docs, tok)
    total, count = _score(tokens, tok.vocab_size)
    assert count == len(tokens) - 1 == num_bytes  # one token per byte
    bpb = metrics.bits_per_byte(total, num_bytes)
    bpt = metrics.bits_per_token(total, count)
    assert bpb == pytest.approx(bpt * count / num_bytes, rel=1e-12)
    assert bpb == pytest.approx(bpt, rel=1e-12)


def test_bits_per_byte_for_bpe_divides_by_bytes_not_tokens():
    texts = ["the quick brown fox jumps over the lazy dog\n" * 30]
    tok = data.BPETokenizer.train(texts, vocab_size=300)
    docs = [data.Document("a", "the lazy dog jumps\n"), data.Document("b", "over the fox\n")]
    tokens, num_bytes = data.encode_documents(docs, tok)
    assert num_bytes == len(b"the lazy dog jumps\n") + 1 + len(b"over the fox\n")
    total, count = _score(tokens, tok.vocab_size)
    assert count == len(tokens) - 1 < num_bytes
    assert metrics.bits_per_byte(total, num_bytes) == pytest.approx(
        metrics.bits_per_token(total, count) * count / num_bytes, rel=1e-12
    )


def test_summaries_accept_jax_values_under_jit():
    f = jax.jit(lambda t, n, b: (metrics.perplexity(t, n), metrics.bits_per_byte(t, b)))
    ppl, bpb = f(jnp.float32(20.0), jnp.float32(10.0), jnp.float32(5.0))
    assert isinstance(ppl, jax.Array)
    np.testing.assert_allclose(ppl, math.exp(2.0), rtol=1e-6)
    np.testing.assert_allclose(bpb, 4.0 / math.log(2), rtol=1e-6)


@pytest.mark.parametrize(
    "fn, args, match",
    [
        (metrics.perplexity, (1.0, 0), "num_tokens=0 must be > 0"),
        (metrics.bits_per_token, (1.0, -2), "num_tokens=-2 must be > 0"),
        (metrics.bits_per_byte, (1.0, 0), "num_bytes=0 must be > 0"),
        (metrics.bits_per_byte, (1.0, jnp.float32(0)), "num_bytes=.* must be > 0"),
        (metrics.tokens_per_second, (10, 0.0), r"seconds=0.0 must be > 0"),
        (metrics.tokens_per_second, (-1, 1.0), "num_tokens=-1 must be >= 0"),
    ],
)
def test_summary_errors(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_tokens_per_second():
    assert metrics.tokens_per_second(8 * 128 * 100, 2.0) == 51200.0
    assert isinstance(metrics.tokens_per_second(np.int64(10), 4), float)
