r"""Knowledge distillation (``recipes.distill``): teacher, student alone, student distilled.

Prints mean ± std test accuracies over the seeds and the fraction of the teacher-student
gap closed; writes ``<workdir>/teacher/``, ``student/seed_<s>/``, ``kd_T<T>/seed_<s>/`` and
``summary.json``.

Usage:
  python -m experiments.distill --config experiments/configs/fashion_mnist_kd_mlp.py \
      --workdir runs/fm_kd
  # one temperature: --config.protocol.temperatures='(4,)'
  # reuse a teacher trained by an earlier run: --teacher_dir runs/fm_kd/teacher
"""

from jaxopt_models.recipes import cli, distill

cli.define_flags(
    distill.default_config,
    teacher_dir=("string", None, "Load the teacher saved in this directory (a train run)."),
)


def _run(config, workdir, **kwargs):
    return distill.run(config, workdir, teacher_dir=cli.FLAGS.teacher_dir, **kwargs)


if __name__ == "__main__":
    cli.main(_run, distill.print_summary)
