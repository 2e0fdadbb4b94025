"""Keras integration: drop-in optimizers whose update runs as one fused tf-mps op."""

from tf_mps.keras import optimizers

__all__ = ["optimizers"]
