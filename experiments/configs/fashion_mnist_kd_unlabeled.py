r"""Distillation through unlabelled images: 3000 labels for everyone, 54k images to transfer.

Teacher (LeNet-5 with dropout) and student (MLP 784-100-10) both learn from the same first
3000 labelled training images. The distilled student then matches the teacher's soft
targets on all 54k images of the training split (the 60k training images less the 10%
held out for validation), of which only those 3000 carry their label (the
others get the teacher's top class as hard label; their true labels are never read), as
in model compression with an unlabelled transfer set (Bucilua et al., 2006; Hinton et
al., 2015). Temperatures 1, 2, 4, 8, 20; three seeds.

  python -m experiments.distill --config experiments/configs/fashion_mnist_kd_unlabeled.py \
      --workdir runs/fm_kd_unlabeled
  # quick local try: --config=experiments/configs/fashion_mnist_kd_unlabeled.py:quick
"""

from experiments.configs import fashion_mnist_kd_mlp

VARIANTS = fashion_mnist_kd_mlp.VARIANTS


def get_config(variant: str = ""):
    """``fashion_mnist_kd_mlp`` with the whole training split as the transfer set."""
    c = fashion_mnist_kd_mlp.get_config(variant)
    p = c.protocol
    p.teacher_num_train = p.student_num_train
    # the whole training split: 60000 (quick: 6000) images less the 10% validation split
    p.transfer_num_train = 54000 if variant != "quick" else 5400
    p.num_epochs = 10 if variant != "quick" else 2
    c.teacher.model.dropout_rate = 0.3
    c.teacher.batch_size = 64
    c.teacher.num_epochs = 40 if variant != "quick" else 5
    return c
