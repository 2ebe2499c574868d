r"""Distil the Bible GPT (``text_bible_gpt.py``, 4 blocks, width 160) into a 2-block student.

The student keeps the teacher's width 160, 4 heads, byte tokens, context 128, batch 12 and
optimizer, starts from scratch and trains for 400 steps on per-token
``0.9 * KL(teacher || student) + 0.1 * CE`` (``T = 1``) plus 3 x a cosine loss between its
block outputs and the teacher's at the same relative depth (student block 0 to teacher block
1, block 1 to block 3, DistilBERT's hidden-state loss); the teacher's logits and states are
computed inside the compiled step. ``:alone`` is the student alone: the same run (tokens,
steps, seed, init) with no teacher term (``alpha=0``, ``hidden.loss=none``). Seeds vary the
init, dropout and window order; the document split stays the teacher's
(``dataset.split_seed=0``), so no run sees the teacher's held-out books.

  python -m experiments.lm --config experiments/configs/text_bible_gpt.py --workdir runs/lm_bible
  python -m experiments.lm --config experiments/configs/text_bible_gpt_distill.py \
      --workdir runs/lm_bible_kd/distilled/seed_1 --config.seed=1 \
      --config.distillation.teacher_dir=runs/lm_bible
  python -m experiments.lm --config experiments/configs/text_bible_gpt_distill.py:alone \
      --workdir runs/lm_bible_kd/alone/seed_1 --config.seed=1 \
      --config.distillation.teacher_dir=runs/lm_bible
  # quick local try: --config=experiments/configs/text_bible_gpt_distill.py:quick
"""

from experiments.configs import text_bible_gpt

VARIANTS = ("", "quick", "alone", "quick_alone")


def get_config(variant: str = ""):
    """``text_bible_gpt`` with 2 blocks, 400 steps and the teacher's soft targets and states."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not known; allowed values: {VARIANTS}")
    c = text_bible_gpt.get_config("quick" if variant.startswith("quick") else "")
    c.dataset.split_seed = 0  # the teacher's document split, whatever the seed
    c.model.num_layers = 2
    c.num_steps = 400
    c.eval_every_steps = 200
    c.optimizer.warmup_steps = 60
    c.distillation.temperature = 1.0
    c.distillation.alpha = 0.9
    c.distillation.hidden.loss = "cosine"
    c.distillation.hidden.weight = 3.0
    if variant.startswith("quick"):
        c.num_steps = 40
        c.eval_every_steps = 20
        c.optimizer.warmup_steps = 5
    if variant.endswith("alone"):
        c.distillation.alpha = 0.0
        c.distillation.hidden.loss = "none"
    return c
