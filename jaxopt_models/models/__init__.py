"""Flax linen classifiers: MLP, LeNet-5 style CNNs, a deeper CNN and LSTM/GRU RNNs."""

from jaxopt_models.models.cnn import POOLS as POOLS
from jaxopt_models.models.cnn import ConvNet as ConvNet
from jaxopt_models.models.cnn import DeepCNN as DeepCNN
from jaxopt_models.models.cnn import lenet5 as lenet5
from jaxopt_models.models.cnn import lenet5_caffe as lenet5_caffe
from jaxopt_models.models.cnn import mnist1d_cnn as mnist1d_cnn
from jaxopt_models.models.cnn import pool as pool
from jaxopt_models.models.initializers import KERNEL_INITS as KERNEL_INITS
from jaxopt_models.models.initializers import get_initializer as get_initializer
from jaxopt_models.models.mlp import MLP as MLP
from jaxopt_models.models.mlp import lenet300_100 as lenet300_100
from jaxopt_models.models.registry import get_model as get_model
from jaxopt_models.models.registry import model_names as model_names
from jaxopt_models.models.registry import register_model as register_model
from jaxopt_models.models.rnn import CELLS as CELLS
from jaxopt_models.models.rnn import RNNClassifier as RNNClassifier

LeNet5 = ConvNet
