"""TensorFlow runtime knobs for serving and training: thread caps and XLA (``BWP_TF_THREADS``,
``BWP_TF_XLA``).
"""

from __future__ import annotations

import os

from stream.core.settings import load_settings

_tf_configured = False


def xla_enabled() -> bool:
    """The ``tf_xla`` setting (``BWP_TF_XLA``, default true): run the large buckets XLA-compiled."""
    return load_settings().tf_xla


def tf_threads() -> int:
    """Cores TensorFlow may use: the ``tf_threads`` setting (``BWP_TF_THREADS``), else the CPU
    count capped at 2 (the target machines have 2 cores, shared with Kafka/Redis)."""
    return load_settings().tf_threads or min(2, os.cpu_count() or 1)


def configure_tf(threads: int | None = None) -> None:
    """Quiet TensorFlow and cap its thread pools (call before the first TF op).

    ``threads`` defaults to :func:`tf_threads`.
    """
    global _tf_configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if _tf_configured:
        return
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    tf.get_logger().setLevel("ERROR")
    n = threads or tf_threads()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1 if n <= 2 else 2)
    except RuntimeError:
        pass  # TF already initialised in this process (e.g. by training): keep its pools
    _tf_configured = True
