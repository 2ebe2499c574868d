r"""Distillation on the student's own images, Hinton-style: teacher and student see the same data.

Teacher (LeNet-5 with dropout, trained with random shifts of up to 2 pixels, "jitter") and
student (MLP 784-100-10) learn from the same first 3000 labelled training images; no other
image is used. The student alone is trained plainly (hard labels, no augmentation). The
distilled student sees the same 3000 images, jittered, and matches the teacher's soft
targets on exactly those jittered images (the teacher runs inside the compiled step);
``alpha = 0.9``, temperatures 1, 2, 4, 8, 20, three seeds. A control trains the student
alone with the same jitter (hard labels only), so the gain from augmentation and the gain
from the teacher are reported apart.

  python -m experiments.distill --config experiments/configs/fashion_mnist_kd_jitter.py \
      --workdir runs/fm_kd_jitter
  # quick local try: --config=experiments/configs/fashion_mnist_kd_jitter.py:quick
"""

from experiments.configs import fashion_mnist_kd_mlp

VARIANTS = fashion_mnist_kd_mlp.VARIANTS


def get_config(variant: str = ""):
    """``fashion_mnist_kd_mlp`` with a jittered teacher and jittered distilled students."""
    c = fashion_mnist_kd_mlp.get_config(variant)
    p = c.protocol
    p.teacher_num_train = p.student_num_train  # the same labelled images
    p.augment.shift = 2
    p.augment.flip = False
    p.augment.mode = "edge"
    p.augmented_alone_control = True
    c.distillation.precompute_teacher = False  # the teacher labels the jittered images

    t = c.teacher
    t.model.dropout_rate = 0.3
    t.batch_size = 64
    t.num_epochs = 60 if variant != "quick" else 5
    t.augment.shift = 2
    t.augment.flip = False
    t.augment.mode = "edge"
    return c
