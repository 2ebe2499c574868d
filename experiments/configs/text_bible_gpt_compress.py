r"""The Bible GPT (``text_bible_gpt.py``) through the compression pipeline.

SparseGPT 50% and GPTQ 4-bit in one joint sweep (one symmetric grid per output column: no
zero points to store, and a pruned weight is the integer 0), the token embedding (also the
tied head) rounded to 8 bits per token, the compressed file written,
read back and checked; calibration on 256 random training windows of 128 bytes. Sweep
points for the perplexity-vs-bytes plot: GPTQ at 8, 4 and 3 bits and SparseGPT 50% alone.

  # first train the LM into runs/lm_bible with the command in text_bible_gpt.py, then:
  python -m experiments.lm_compress --config experiments/configs/text_bible_gpt_compress.py \
      --workdir runs/lm_bible_compress --config.source_dir=runs/lm_bible
  # quick local try: --config=experiments/configs/text_bible_gpt_compress.py:quick
"""

from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import lm_compress

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The pipeline on a finished Bible LM run; ``variant="quick"``: 32 calibration
    windows, a short decode measurement and no sweep."""
    check_one_of("variant", variant, VARIANTS)
    c = lm_compress.default_config()
    c.dataset.name = "bible_kjv"
    c.source_dir = "runs/lm_bible"
    c.prune.method = "sparsegpt"
    c.prune.sparsity = 0.5
    c.quantize.method = "gptq"
    c.quantize.bits = 4
    c.quantize.symmetric = True
    c.quantize.embedding_bits = 8
    c.decode.new_tokens = 112  # 16 + 112 = the model's context of 128
    c.sweep = ("gptq bits=8", "gptq", "gptq bits=3", "sparsegpt")
    if variant == "quick":
        c.calibration_examples = 32
        c.calibration_batch_size = 32
        c.decode.new_tokens = 32
        c.decode.rounds = 1
        c.sweep = ()
    return c
