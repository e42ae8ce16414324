"""Every private Keras / TensorFlow internal the package relies on, one small function each.

Nothing else in the package reaches a private attribute of a Keras or TensorFlow object: when an upgrade renames
or changes one of these, the fix is here, and tests/test_compat.py (one test per function, on real objects)
says which one broke. Each was checked on Keras 3.15.1 with TensorFlow 2.21.0.
"""

from __future__ import annotations

import keras


def untrack_variable(layer: keras.layers.Layer, variable: keras.Variable) -> None:
    """Removes ``variable`` from ``layer.weights`` (and its trainable / non-trainable lists).

    Internal: ``keras.layers.Layer._untrack_variable``. Needed by WeightNorm.fold, which drops its ``g`` once
    folded into the kernel; Keras has no public way to remove a weight from a built layer.
    """
    layer._untrack_variable(variable)


def delete_attribute_without_gc(layer: keras.layers.Layer, name: str) -> None:
    """``del layer.<name>`` without Keras' ``gc.collect()``.

    Internal: Keras' ``Layer.__delattr__`` untracks a variable attribute and then runs ``gc.collect()`` (~0.2 s
    per layer: seconds for a generator's weight norms), so we call the next ``__delattr__`` in the MRO (TF's
    AutoTrackable, which also drops the attribute from the checkpoint dependencies). Call
    ``untrack_variable`` first for a variable.
    """
    super(keras.layers.Layer, layer).__delattr__(name)


def track_child(owner: keras.layers.Layer, child, name: str) -> None:
    """Registers ``child`` as the tf.train.Checkpoint dependency ``name`` of ``owner`` (replacing any of that name).

    Internal: TF's ``Trackable._track_trackable``. Needed because Keras 3 keeps list attributes in its own
    TrackedList, which TF's checkpoint graph does not follow: a Model holding [Dense, Dense] writes no variables.
    """
    owner._track_trackable(child, name=name, overwrite=True)


def sublayers(layer: keras.layers.Layer) -> list:
    """``layer`` and every layer under it, recursively (those in list attributes and wrappers included).

    Internal: ``keras.layers.Layer._flatten_layers``. Keras 3 has no public recursive walk (a Layer has no
    ``layers``; ``Model.layers`` is one level deep); used to find the WeightNorm wrappers by type.
    """
    return list(layer._flatten_layers(include_self=True, recursive=True))


def adam_slots(optimizer: keras.optimizers.Optimizer, variable) -> tuple:
    """(first moment m, second moment v): an Adam-family optimizer's slot variables for ``variable``.

    Internal: ``_momentums``, ``_velocities`` (keras.optimizers.Adam / AdamW) indexed by
    ``BaseOptimizer._get_variable_index``. Needed by TorchAdamW.update_step, which rewrites Adam's update (as
    Keras' own AdamW does) and keeps Keras' variables, so checkpoints stay keras.optimizers.AdamW's.
    """
    index = optimizer._get_variable_index(variable)
    return optimizer._momentums[index], optimizer._velocities[index]


def silence_failed_restore(error: BaseException) -> int:
    """Marks the checkpoint restore that raised ``error`` as partial; returns how many restores it marked.

    Internal: TF's ``_CheckpointRestoreCoordinator`` (found among the local variables of the frames of
    ``error``'s traceback) and its ``expect_partial`` flag. Needed because a failed restore's coordinator stays
    referenced by the models and, when they go (at exit), logs a warning per checkpoint value it did not restore:
    hundreds of lines after a one-line error. ``status.expect_partial()`` cannot be called: restore() raised
    before returning the status.
    """
    marked = 0
    frame = error.__traceback__
    while frame is not None:
        for value in frame.tb_frame.f_locals.values():
            if type(value).__name__ == "_CheckpointRestoreCoordinator":
                value.expect_partial = True
                marked += 1
        frame = frame.tb_next
    return marked
