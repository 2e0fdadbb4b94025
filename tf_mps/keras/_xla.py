"""Whether the graph being built will be compiled by XLA (which cannot compile custom
ops): the tf-mps optimizers and layers then use Keras's own math."""

try:  # TensorFlow's own test for "this graph is being compiled by XLA".
    from tensorflow.python.framework import ops as _tf_ops
    from tensorflow.python.ops import control_flow_util as _cfu

    def in_xla_context() -> bool:
        return bool(_cfu.GraphOrParentsInXlaContext(_tf_ops.get_default_graph()))

except ImportError:  # pragma: no cover - TensorFlow moved it: assume no XLA

    def in_xla_context() -> bool:
        return False
