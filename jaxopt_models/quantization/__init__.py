"""Quantization: quantize / dequantize, fake-quant for QAT, PTQ over pytrees, integer
inference, binary / ternary weights and bit packing.

Usage::

  from jaxopt_models import quantization as qz

  q = qz.quantize(kernel, bits=8, axis=-1)       # per-output-channel int8 QTensor
  w = qz.dequantize(q)
  qparams = qz.quantize_params(params, bits=4, axis=-1)                  # PTQ
  loss = lambda p: loss_fn(qz.fake_quant_params(p, bits=4, axis=-1))     # weight QAT
  act_quant = qz.ActivationQuantizer(bits=8, clip_range=(0.0, 6.0))      # activation QAT
  y = qz.int8_dense(qz.quantize(x, 8, symmetric=False), q, bias)         # integer Dense
  size = qz.size_bytes(qz.pack_params(qparams))                          # real storage
  q = qz.gptq(kernel, hessian, bits=4, group_size=128)  # one-shot, hessian = X^T X of inputs
"""

from jaxopt_models.quantization.activation import ActivationQuantizer as ActivationQuantizer
from jaxopt_models.quantization.activation import RangeStats as RangeStats
from jaxopt_models.quantization.activation import calibrate_range as calibrate_range
from jaxopt_models.quantization.activation import init_range_stats as init_range_stats
from jaxopt_models.quantization.activation import stats_range as stats_range
from jaxopt_models.quantization.activation import update_range_stats as update_range_stats
from jaxopt_models.quantization.affine import grid_to_float as grid_to_float
from jaxopt_models.quantization.affine import integer_range as integer_range
from jaxopt_models.quantization.affine import quantize_to_grid as quantize_to_grid
from jaxopt_models.quantization.affine import representable_range as representable_range
from jaxopt_models.quantization.affine import scale_and_zero_point as scale_and_zero_point
from jaxopt_models.quantization.affine import storage_dtype as storage_dtype
from jaxopt_models.quantization.awq import AWQResult as AWQResult
from jaxopt_models.quantization.awq import awq as awq
from jaxopt_models.quantization.awq import awq_scales as awq_scales
from jaxopt_models.quantization.binary import binarize as binarize
from jaxopt_models.quantization.binary import fake_binarize as fake_binarize
from jaxopt_models.quantization.binary import fake_ternarize as fake_ternarize
from jaxopt_models.quantization.binary import ternarize as ternarize
from jaxopt_models.quantization.calibration import CALIBRATIONS as CALIBRATIONS
from jaxopt_models.quantization.calibration import MSE as MSE
from jaxopt_models.quantization.calibration import Calibration as Calibration
from jaxopt_models.quantization.calibration import MinMax as MinMax
from jaxopt_models.quantization.calibration import Percentile as Percentile
from jaxopt_models.quantization.calibration import get_calibration as get_calibration
from jaxopt_models.quantization.fake_quant import fake_quant as fake_quant
from jaxopt_models.quantization.fake_quant import straight_through as straight_through
from jaxopt_models.quantization.gptq import gptq as gptq
from jaxopt_models.quantization.integer import int8_conv as int8_conv
from jaxopt_models.quantization.integer import int8_dense as int8_dense
from jaxopt_models.quantization.packing import PackedQTensor as PackedQTensor
from jaxopt_models.quantization.packing import pack as pack
from jaxopt_models.quantization.packing import pack_bits as pack_bits
from jaxopt_models.quantization.packing import pack_params as pack_params
from jaxopt_models.quantization.packing import packed_num_bytes as packed_num_bytes
from jaxopt_models.quantization.packing import size_bytes as size_bytes
from jaxopt_models.quantization.packing import unpack as unpack
from jaxopt_models.quantization.packing import unpack_bits as unpack_bits
from jaxopt_models.quantization.packing import unpack_params as unpack_params
from jaxopt_models.quantization.params import default_filter as default_filter
from jaxopt_models.quantization.params import dequantize_params as dequantize_params
from jaxopt_models.quantization.params import fake_quant_params as fake_quant_params
from jaxopt_models.quantization.params import quantize_params as quantize_params
from jaxopt_models.quantization.qtensor import QTensor as QTensor
from jaxopt_models.quantization.qtensor import dequantize as dequantize
from jaxopt_models.quantization.quantize import quantize as quantize
from jaxopt_models.quantization.smoothquant import smooth_scales as smooth_scales
from jaxopt_models.quantization.smoothquant import w8a8_matmul as w8a8_matmul
