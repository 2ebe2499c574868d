r"""Distillation on Fashion-MNIST: a LeNet-5 teacher, an MLP 784-100-10 student on 3000 images.

The teacher trains on all 60k labelled training images. The student sees only the first
3000, alone (hard labels) and distilled (the teacher's soft targets on the same 3000
images, ``alpha = 0.9``) at temperatures 1, 2, 4, 8 and 20; three seeds each.
See ``fashion_mnist_kd_unlabeled.py`` for distillation through unlabelled images.

  python -m experiments.distill --config experiments/configs/fashion_mnist_kd_mlp.py \
      --workdir runs/fm_kd_mlp
  # quick local try: --config=experiments/configs/fashion_mnist_kd_mlp.py:quick
  # other temperatures: --config.protocol.temperatures='(2, 4)'
"""

from jaxopt_models.checks import check_one_of
from jaxopt_models.recipes import distill

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
    """The distill recipe's config; ``variant="quick"``: 6000 images, 2 seeds, T = 1, 4."""
    check_one_of("variant", variant, VARIANTS)
    c = distill.default_config()  # the top-level fields configure the student
    c.dataset.name = "fashion_mnist"
    c.model.name = "mlp"
    c.model.features = (100,)
    c.model.kernel_init = "he_normal"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.batch_size = 64
    c.num_epochs = 100
    c.log_every_epochs = 10
    c.seeds = (0, 1, 2)

    c.distillation.alpha = 0.9
    p = c.protocol
    p.temperatures = (1, 2, 4, 8, 20)
    p.num_epochs = None  # the student's num_epochs
    p.teacher_num_train = None  # all
    p.student_num_train = 3000
    p.transfer_num_train = None  # the student's images

    t = c.teacher  # trains on config.dataset
    t.model.name = "lenet5"
    t.model.kernel_init = "he_normal"
    t.optimizer.name = "adam"
    t.optimizer.learning_rate = 2e-3
    t.optimizer.schedule = "cosine"
    t.batch_size = 128
    t.num_epochs = 10

    if variant == "quick":
        c.dataset.num_train = 6000
        c.dataset.num_test = 2000
        p.student_num_train = 1000
        c.num_epochs = 10
        c.log_every_epochs = 5
        p.temperatures = (1, 4)
        c.seeds = (0, 1)
        t.num_epochs = 2
    return c
