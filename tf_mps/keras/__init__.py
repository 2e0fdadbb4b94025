"""Keras integration: drop-in optimizers whose update runs as one fused tf-mps op, and
drop-in layers (convolution, dense, pooling, normalization) on tf-mps's ops."""

from tf_mps.keras import layers, optimizers

__all__ = ["layers", "optimizers"]
