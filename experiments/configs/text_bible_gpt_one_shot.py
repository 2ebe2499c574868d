r"""One-shot compression of the byte-level Bible GPT (``text_bible_gpt.py``), no retraining.

Reads the finished LM run in ``source_dir`` (default ``runs/lm_bible``: train it first with
``experiments.lm``), calibrates on 256 random training windows of 128 bytes (32,768 tokens),
each layer on the outputs of the already-compressed layers before it (sequential), and
scores every result on the whole validation and test books (perplexity, bits per byte).

Methods, as in the GPTQ / SparseGPT / Wanda / AWQ / SmoothQuant papers: RTN and GPTQ at 4
and 3 bits, one grid per output column and per group of 32 inputs (the model's 160-wide
kernels admit no group of 128); AWQ 4-bit; SmoothQuant W8A8; magnitude, Wanda and SparseGPT
at 50% and 2:4; SparseGPT 50% + GPTQ 4-bit in one sweep. The token embedding, which is also
the output head (tied), stays float32 as in the papers.

  # first train the LM into runs/lm_bible with the command in text_bible_gpt.py, then:
  python -m experiments.one_shot --config experiments/configs/text_bible_gpt_one_shot.py \
      --workdir runs/lm_bible_one_shot --config.source_dir=runs/lm_bible
  # quick local try: --config=experiments/configs/text_bible_gpt_one_shot.py:quick
"""

from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import one_shot

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The one-shot recipe on a finished Bible LM run; ``variant="quick"``: four methods
    on 32 calibration windows."""
    check_one_of("variant", variant, VARIANTS)
    c = one_shot.default_config()
    c.dataset.name = "bible_kjv"  # must be the LM run's corpus (checked)
    c.source_dir = "runs/lm_bible"
    c.eval_batch_size = 32
    c.one_shot.methods = (
        "rtn",
        "gptq",
        "rtn group_size=32",
        "gptq group_size=32",
        "rtn bits=3",
        "gptq bits=3",
        "rtn bits=3 group_size=32",
        "gptq bits=3 group_size=32",
        "awq",
        "awq group_size=32",
        "smoothquant",
        "magnitude",
        "wanda",
        "sparsegpt",
        "magnitude n_m=2:4",
        "wanda n_m=2:4",
        "sparsegpt n_m=2:4",
        "sparsegpt+gptq",
    )
    c.one_shot.sparsity = 0.5
    c.one_shot.bits = 4
    c.one_shot.calibration_examples = 256
    c.one_shot.calibration_batch_size = 64
    if variant == "quick":
        c.num_epochs = 1  # (the recipe trains nothing here: the model comes from source_dir)
        c.one_shot.methods = ("magnitude", "sparsegpt", "rtn", "gptq")
        c.one_shot.calibration_examples = 32
        c.one_shot.calibration_batch_size = 32
    return c
