"""The tf-mps ops, by family. Each wrapper validates its arguments in Python where a
mistake would otherwise surface as an opaque TypeError, and documents the math."""

from tf_mps.ops.conv import conv2d
from tf_mps.ops.optim import apply_adam, apply_rmsprop, apply_sgd

__all__ = ["apply_adam", "apply_sgd", "apply_rmsprop", "conv2d"]
