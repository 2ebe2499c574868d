r"""Distillation as in Hinton et al. (2015), on Fashion-MNIST: MLP teacher and MLP student.

Teacher (MLP 784-1200-1200-10, dropout 0.5, inputs jittered by up to 2 pixels) and student
(MLP 784-800-800-10, no regularization) learn from the same first 3000 labelled training
images; no other image is used. The student alone is trained plainly on them (hard
labels); the distilled student matches the teacher's soft targets on the same images
(``alpha = 0.9``, temperatures 1, 2, 4, 8, 20), three seeds.

  python -m experiments.distill --config experiments/configs/fashion_mnist_kd_hinton.py \
      --workdir runs/fm_kd_hinton
  # quick local try: --config=experiments/configs/fashion_mnist_kd_hinton.py:quick
  # 1,000 or 10,000 images (T = 2, 4): --config=experiments/configs/fashion_mnist_kd_hinton.py:1k
  # all 60,000 training images: --config=experiments/configs/fashion_mnist_kd_hinton.py:full
"""

import ml_collections

from experiments.configs import fashion_mnist_kd_mlp
from jaxopt_models.checks import check_one_of

VARIANTS = ("", "quick", "1k", "10k", "full")


def get_config(variant: str = ""):
    """``fashion_mnist_kd_mlp`` with Hinton's MLPs; variants: see ``VARIANTS``."""
    check_one_of("variant", variant, VARIANTS)
    c = fashion_mnist_kd_mlp.get_config("quick" if variant == "quick" else "")
    p = c.protocol
    c.model.features = (800, 800)
    p.teacher_num_train = p.student_num_train  # the same labelled images

    t = c.teacher
    t.model = ml_collections.ConfigDict(
        {"name": "mlp", "features": (1200, 1200), "dropout_rate": 0.5, "kernel_init": "he_normal"}
    )
    t.optimizer.learning_rate = 1e-3
    t.batch_size = 64
    t.num_epochs = 200 if variant != "quick" else 5
    t.augment.shift = 2
    t.augment.flip = False
    t.augment.mode = "edge"
    if variant in ("1k", "10k"):  # the same setting on the first 1,000 / 10,000 images
        n = 1000 if variant == "1k" else 10000
        p.student_num_train = n
        p.teacher_num_train = n
        p.temperatures = (2, 4)
        t.log_every_epochs = 20
    if variant == "full":  # all 60,000 labelled images for teacher and student
        p.student_num_train = None
        p.teacher_num_train = None
        c.batch_size = 128
        c.num_epochs = 30
        c.log_every_epochs = 10
        t.batch_size = 128
        t.num_epochs = 60
        t.log_every_epochs = 10
    return c
