r"""A byte-level GPT on the running Python's own standard-library sources (always present).

nanoGPT's CPU shape: 4 layers, 4 heads, width 128, context 64, batch 12 (about 0.8M
parameters); AdamW 1e-3, warmup + cosine, clipping at 1.

  python -m experiments.lm --config experiments/configs/text_stdlib_gpt.py --workdir runs/lm_py
  # quick local try: --config=experiments/configs/text_stdlib_gpt.py:quick
"""

from jaxopt_models.recipes import lm


def get_config(variant: str = ""):
    c = lm.default_config()
    c.dataset.name = "python_stdlib"
    c.num_steps = 2000
    c.eval_every_steps = 250
    c.eval_max_batches = 40
    c.generate.prompt = "def "
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
