"""The LM recipe: trains through the engine, reports bits per byte, honours its sections."""

import json
import math
import os

import pytest

from jaxopt_models.recipes import build, lm


def _tiny(**overrides):
    c = lm.default_config()
    c.dataset.max_bytes = 60_000
    c.model.num_layers = 1
    c.model.num_heads = 2
    c.model.embed_dim = 32
    c.context = 32
    c.batch_size = 4
    c.num_steps = 12
    c.eval_every_steps = 6
    c.eval_max_batches = 2
    c.eval_batch_size = 8
    c.optimizer.warmup_steps = 2
    c.checkpoint.every_seconds = 0.0
    c.plots = False
    c.generate.max_new_tokens = 8
    c.generate.num_samples = 1
    c.generate.prompt = "def "
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (c[section] if section else c)[field] = value
    return c


def test_lm_run_writes_results_and_bits_per_byte_match_loss(tmp_path):
    workdir = str(tmp_path / "lm")
    _, results = lm.run(_tiny(), workdir)
    # byte tokens: one token per byte, so bits per byte is nats per token / ln 2
    for split in ("val", "test"):
        assert results[f"{split}_bits_per_byte"] == pytest.approx(
            results[f"{split}_loss"] / math.log(2), rel=1e-9
        )
        assert results[f"{split}_perplexity"] == pytest.approx(math.exp(results[f"{split}_loss"]))
    # the final evaluation scores the whole held-out stream, every target once
    assert results["val_tokens"] == results["num_tokens"]["val"] - 1
    assert results["steps"] == 12
    assert len(results["history"]) == 2 and "val_bits_per_byte" in results["history"][0]
    assert results["samples"][0].startswith("def ")
    for name in ("results.json", "variables.msgpack", "samples.txt", "metrics.jsonl"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.path.isdir(os.path.join(workdir, "tokenizer"))
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["val_loss"] == results["val_loss"]


def test_lm_pruning_and_weight_qat_are_honoured():
    _, dense = lm.run(_tiny(), None)
    c = _tiny(**{"pruning.method": "magnitude", "pruning.sparsity": 0.5,
                 "pruning.end_fraction": 0.5, "quantization.weight_bits": 4})
    _, pruned = lm.run(c, None)
    assert pruned["pruning"]["prunable"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert pruned["val_loss"] != dense["val_loss"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"quantization.act_bits": 8}, "config.quantization.act_bits"),
        ({"eval_every_steps": 5}, "config.eval_every_steps"),
        ({"dataset.tokenizer": "words"}, "config.dataset.tokenizer"),
        ({"model.dtype": "int8"}, "config.model.dtype"),
        ({"generate.temperature": -1.0}, "config.generate.temperature"),
    ],
)
def test_lm_bad_config_is_refused_before_training(overrides, field, tmp_path):
    with pytest.raises(build.ConfigError, match=field.replace(".", r"\.")):
        lm.run(_tiny(**overrides), str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad" / "metrics.jsonl")
