"""Work-arounds for Keras defects that would make a result silently wrong, applied when
``helpers.training`` is imported; each names how to see it (``tests/scripts/``).
"""

from __future__ import annotations

import random

import tensorflow as tf
from keras import ops
from keras.optimizers import LossScaleOptimizer

_PATCHED = "_blood_cells_replica_safe"


def _replica_safe_tf_apply(self, grads, trainable_variables=None):
    """``LossScaleOptimizer._tf_apply`` with the finiteness check taken over every replica.

    Keras (3.0 to at least 3.15, since keras-team/keras#18691) checks replica 0's gradients
    alone, which are not all-reduced yet: an overflow on another replica applies inf and every
    weight becomes NaN (``tests/scripts/loss_scale_replicas.py``). Here a non-finite step on
    any replica is skipped with the loss scale halved, as on one device.
    """
    replica_context = tf.distribute.get_replica_context()
    if (replica_context is None or replica_context.num_replicas_in_sync == 1
            or tf.__internal__.distribute.strategy_supports_no_merge_call()):
        return _original_tf_apply(self, grads, trainable_variables)

    def handle_cross_replica(distribution, grads, trainable_variables):
        finite_per_replica = distribution.extended.call_for_each_replica(
            self.check_finite, args=(grads,))
        finite = ops.all(ops.stack(distribution.experimental_local_results(finite_per_replica)))

        def apply_finite():
            distribution.extended.call_for_each_replica(
                self._stateful_handle_finite_grads, args=(grads, trainable_variables))

        # In the cross-replica context, as Keras does: a branch that merges cannot run in a
        # cond inside a replica context.
        ops.cond(finite, apply_finite, self._stateful_handle_non_finite_grads)

    replica_context.merge_call(handle_cross_replica, args=(grads, trainable_variables))


# The private methods the work-around calls; a Keras without them is left as it is.
_NEEDED = ("_tf_apply", "check_finite", "_stateful_handle_finite_grads",
           "_stateful_handle_non_finite_grads")
_original_tf_apply = getattr(LossScaleOptimizer, "_tf_apply", None)


def apply() -> None:
    """Install the work-arounds (idempotent)."""
    if (not all(hasattr(LossScaleOptimizer, name) for name in _NEEDED)
            or getattr(LossScaleOptimizer._tf_apply, _PATCHED, False)):
        return
    setattr(_replica_safe_tf_apply, _PATCHED, True)
    LossScaleOptimizer._tf_apply = _replica_safe_tf_apply


def own_default_seeds(seed: int) -> None:
    """Give Keras a Python generator of its own for the seeds of unseeded initializers,
    seeded with ``seed``.

    Keras (3.0 to at least 3.15) draws each such seed from Python's shared ``random`` when the
    layer is built. Any other thread that draws from it meanwhile, such as a Dask worker's
    event loop (``tests/test_cluster.py``), changes every initial weight after it: the same
    seed gave another model on a worker than in a kernel. Raises RuntimeError on a Keras
    without that generator, rather than train irreproducibly.
    """
    from keras.src.random import seed_generator

    if not hasattr(seed_generator, "python_random"):
        raise RuntimeError("This Keras draws its default seeds in a way helpers.keras_fixes "
                           "does not know; pin keras<=3.15 or update own_default_seeds.")
    seed_generator.python_random = random.Random(seed)
