"""Flax linen models: MLP, LeNet-5 style CNNs, a deeper CNN, LSTM/GRU RNNs and transformers."""

from jaxopt_models.models.checkpoint_import import convert_checkpoint as convert_checkpoint
from jaxopt_models.models.checkpoint_import import load_pretrained as load_pretrained
from jaxopt_models.models.checkpoint_import import read_checkpoint as read_checkpoint
from jaxopt_models.models.checkpoint_import import read_safetensors as read_safetensors
from jaxopt_models.models.cnn import POOLS as POOLS
from jaxopt_models.models.cnn import ConvNet as ConvNet
from jaxopt_models.models.cnn import DeepCNN as DeepCNN
from jaxopt_models.models.cnn import lenet5 as lenet5
from jaxopt_models.models.cnn import lenet5_caffe as lenet5_caffe
from jaxopt_models.models.cnn import mnist1d_cnn as mnist1d_cnn
from jaxopt_models.models.cnn import pool as pool
from jaxopt_models.models.generate import generate as generate
from jaxopt_models.models.generate import init_cache as init_cache
from jaxopt_models.models.generate import sample_logits as sample_logits
from jaxopt_models.models.initializers import KERNEL_INITS as KERNEL_INITS
from jaxopt_models.models.initializers import get_initializer as get_initializer
from jaxopt_models.models.int8 import Int8Layer as Int8Layer
from jaxopt_models.models.int8 import Int8Model as Int8Model
from jaxopt_models.models.int8 import build_int8_model as build_int8_model
from jaxopt_models.models.int8 import calibrate_activation_ranges as calibrate_activation_ranges
from jaxopt_models.models.int8 import capture_layer_inputs as capture_layer_inputs
from jaxopt_models.models.int8 import fake_quant_apply as fake_quant_apply
from jaxopt_models.models.int8 import int8_apply as int8_apply
from jaxopt_models.models.mlp import MLP as MLP
from jaxopt_models.models.mlp import lenet300_100 as lenet300_100
from jaxopt_models.models.registry import get_model as get_model
from jaxopt_models.models.registry import model_names as model_names
from jaxopt_models.models.registry import register_model as register_model
from jaxopt_models.models.rnn import CELLS as CELLS
from jaxopt_models.models.rnn import RNNClassifier as RNNClassifier
from jaxopt_models.models.transformer import LOGICAL_AXIS_RULES as LOGICAL_AXIS_RULES
from jaxopt_models.models.transformer import CausalLM as CausalLM
from jaxopt_models.models.transformer import EncoderClassifier as EncoderClassifier
from jaxopt_models.models.transformer import TransformerConfig as TransformerConfig
from jaxopt_models.models.transformer import apply_rope as apply_rope
from jaxopt_models.models.transformer import bert_base as bert_base
from jaxopt_models.models.transformer import bert_tiny as bert_tiny
from jaxopt_models.models.transformer import gpt2 as gpt2
from jaxopt_models.models.transformer import gpt_tiny as gpt_tiny
from jaxopt_models.models.transformer import llama_tiny as llama_tiny
from jaxopt_models.models.transformer import logical_axes as logical_axes
from jaxopt_models.models.transformer import tinyllama_1b as tinyllama_1b

LeNet5 = ConvNet
