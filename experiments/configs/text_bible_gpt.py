r"""A byte-level GPT on the King James Bible, sized for a 2-core CPU (about 15 minutes).

4 layers, 4 heads, width 160, context 128, RoPE, LayerNorm, GELU MLP, tied embeddings
(about 1.3M parameters); AdamW 2e-3 with 200 warmup steps and cosine decay, clipping at 1,
batch 12, 1,500 steps. Validation every 250 steps on the first 40 validation batches; the whole
validation and test streams (books held out by document) at the end; two samples.

  apt-get install -y bible-kjv bible-kjv-text
  python -m experiments.lm --config experiments/configs/text_bible_gpt.py --workdir runs/lm_bible
  # quick local try: --config=experiments/configs/text_bible_gpt.py:quick
"""

from jaxopt_models.recipes import lm


def get_config(variant: str = ""):
    c = lm.default_config()
    c.dataset.name = "bible_kjv"
    c.dataset.tokenizer = "byte"
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.embed_dim = 160
    c.context = 128
    c.batch_size = 12
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 200
    c.num_steps = 1500
    c.eval_every_steps = 250
    c.eval_max_batches = 40
    c.generate.prompt = "And God said"
    c.generate.max_new_tokens = 100
    c.generate.temperature = 0.7
    if variant == "quick":
        c.dataset.max_bytes = 300_000
        c.num_steps = 60
        c.eval_every_steps = 30
        c.eval_max_batches = 4
        c.optimizer.warmup_steps = 10
        c.generate.max_new_tokens = 20
    elif variant:
        raise ValueError(f"variant={variant!r} is not known; allowed values: ('', 'quick')")
    return c
