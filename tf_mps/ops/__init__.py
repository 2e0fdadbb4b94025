"""The tf-mps ops, by family. Each wrapper validates its arguments in Python where a
mistake would otherwise surface as an opaque TypeError, and documents the math."""

from tf_mps.ops.conv import conv2d, conv2d_transpose
from tf_mps.ops.dense import dense
from tf_mps.ops.norm import batch_norm, instance_norm
from tf_mps.ops.optim import apply_adam, apply_rmsprop, apply_sgd
from tf_mps.ops.pool import avg_pool2d, max_pool2d

__all__ = ["apply_adam", "apply_sgd", "apply_rmsprop", "avg_pool2d", "batch_norm", "conv2d", "conv2d_transpose",
           "dense", "instance_norm", "max_pool2d"]
