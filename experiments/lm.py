r"""Train a language model (``recipes.lm``) on an offline corpus, then sample from it.

Usage:
  python -m experiments.lm --config experiments/configs/text_bible_gpt.py --workdir runs/lm
  python -m experiments.lm --config experiments/configs/text_bible_gpt.py:quick --workdir runs/q
"""

from jaxopt_models.recipes import cli, lm

cli.define_flags(lm.default_config)

if __name__ == "__main__":
    cli.main(lm.run, lm.print_results)
