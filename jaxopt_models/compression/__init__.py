"""Compression: weight sharing, low-rank factorisation and a compact file format.

- ``cluster_weights`` / ``shared_params`` / ``share_gradients``: per-layer k-means weight
  sharing with centroid fine-tuning that keeps pruned weights at exactly zero.
- ``low_rank``: truncated-SVD factorisation of Dense and conv kernels, applied by
  ``LowRankDense`` / ``LowRankConv``.
- ``save_compressed`` / ``load_compressed``: sparse relative indices, codebooks, packed
  integers and Huffman coding in one checksummed binary file; ``size_report`` gives the
  bytes per layer after each stage.
- ``slim``: structural slimming, removing the neurons / filters channel pruning zeroed.
"""

from jaxopt_models.compression.bitpack import pack_stream as pack_stream
from jaxopt_models.compression.bitpack import unpack_stream as unpack_stream
from jaxopt_models.compression.file_format import FormatError as FormatError
from jaxopt_models.compression.file_format import decode_compressed as decode_compressed
from jaxopt_models.compression.file_format import encode_compressed as encode_compressed
from jaxopt_models.compression.file_format import load_compressed as load_compressed
from jaxopt_models.compression.file_format import save_compressed as save_compressed
from jaxopt_models.compression.huffman import huffman_decode as huffman_decode
from jaxopt_models.compression.huffman import huffman_encode as huffman_encode
from jaxopt_models.compression.kmeans import INITS as INITS
from jaxopt_models.compression.kmeans import KMeansResult as KMeansResult
from jaxopt_models.compression.kmeans import init_centroids as init_centroids
from jaxopt_models.compression.kmeans import kmeans as kmeans
from jaxopt_models.compression.low_rank import LowRankConv as LowRankConv
from jaxopt_models.compression.low_rank import LowRankDense as LowRankDense
from jaxopt_models.compression.low_rank import low_rank as low_rank
from jaxopt_models.compression.low_rank import rank_for_energy as rank_for_energy
from jaxopt_models.compression.low_rank import reconstruct_low_rank as reconstruct_low_rank
from jaxopt_models.compression.report import format_size_report as format_size_report
from jaxopt_models.compression.report import size_report as size_report
from jaxopt_models.compression.slim import Slimmed as Slimmed
from jaxopt_models.compression.slim import layer_chain as layer_chain
from jaxopt_models.compression.slim import rebuild_by_widths as rebuild_by_widths
from jaxopt_models.compression.slim import slim as slim
from jaxopt_models.compression.weight_sharing import SharedTensor as SharedTensor
from jaxopt_models.compression.weight_sharing import ShareGradientsState as ShareGradientsState
from jaxopt_models.compression.weight_sharing import centroid_gradients as centroid_gradients
from jaxopt_models.compression.weight_sharing import cluster_weights as cluster_weights
from jaxopt_models.compression.weight_sharing import is_shared as is_shared
from jaxopt_models.compression.weight_sharing import reconstruct as reconstruct
from jaxopt_models.compression.weight_sharing import share_gradients as share_gradients
from jaxopt_models.compression.weight_sharing import shared_params as shared_params
from jaxopt_models.compression.weight_sharing import update_codebooks as update_codebooks
