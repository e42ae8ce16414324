"""Each private Keras / TensorFlow internal of model/compat.py, exercised on real objects: a failure here names
the internal that a TF or Keras upgrade removed or changed (and a "no longer needed" failure, the hack to drop)."""

import gc
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import compat
from model.generator import Generator
from model.convs import PaddedConv1D
from model.layers import ResBlock1, WeightNorm
from core.config import GeneratorConfig

VERSIONS = f"(Keras {keras.__version__}, TensorFlow {tf.__version__})"


def _has(obj, name: str) -> None:
    assert hasattr(obj, name), f"{type(obj).__name__}.{name} is gone {VERSIONS}: update model/compat.py"


def _ids(variables) -> set:
    return {id(v) for v in variables}


def _checkpoint_keys(obj, tmp_path) -> list[str]:
    prefix = tf.train.Checkpoint(obj=obj).write(str(tmp_path / "ckpt"))
    return [name for name, _ in tf.train.list_variables(prefix)]


class _WithG(keras.layers.Layer):
    """A kernel and a g, as WeightNorm around its layer."""

    def build(self, input_shape=None):
        self.kernel = self.add_weight(name="kernel", shape=(2, 3))
        self.g = self.add_weight(name="g", shape=(3,), initializer="ones")


def _layer_with_g() -> _WithG:
    layer = _WithG()
    layer.build()
    return layer


def test_untrack_variable_removes_it_from_the_layers_weights():
    layer = _layer_with_g()
    _has(layer, "_untrack_variable")
    assert id(layer.g) in _ids(layer.weights) and id(layer.g) in _ids(layer.trainable_weights)
    compat.untrack_variable(layer, layer.g)
    assert id(layer.g) not in _ids(layer.weights), (
        f"Layer._untrack_variable no longer removes the variable from layer.weights {VERSIONS}")
    assert id(layer.g) not in _ids(layer.trainable_weights), (
        f"Layer._untrack_variable no longer removes the variable from layer.trainable_weights {VERSIONS}")
    assert _ids(layer.weights) == _ids([layer.kernel])


def test_delete_attribute_without_gc_drops_it_from_the_layer_and_the_checkpoint(monkeypatch, tmp_path):
    calls = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append(args) or collect(*args))
    # Why the bypass exists: Keras' own `del` runs gc.collect() (~0.2 s per layer).
    layer = _layer_with_g()
    del layer.g
    assert calls, (f"Keras' Layer.__delattr__ no longer runs gc.collect() {VERSIONS}: delete_attribute_without_gc "
                   f"is no longer needed (a plain `del` will do)")
    calls.clear()
    layer = _layer_with_g()
    assert any(key.startswith("obj/g/") for key in _checkpoint_keys(layer, tmp_path))
    compat.untrack_variable(layer, layer.g)
    compat.delete_attribute_without_gc(layer, "g")
    assert not calls, f"the __delattr__ after keras.layers.Layer in the MRO now runs gc.collect() {VERSIONS}"
    assert not hasattr(layer, "g"), f"super(keras.layers.Layer, layer).__delattr__ no longer deletes {VERSIONS}"
    keys = _checkpoint_keys(layer, tmp_path)
    assert not any(key.startswith("obj/g/") for key in keys), (
        f"a deleted attribute is still a checkpoint dependency {VERSIONS}: AutoTrackable.__delattr__ changed: {keys}")
    assert any(key.startswith("obj/kernel/") for key in keys)


def test_weight_norm_fold_leaves_no_g(tmp_path):
    """The two hacks above as WeightNorm.fold uses them: g leaves the weights and the checkpoint."""
    wrapper = WeightNorm(PaddedConv1D(3, 3, pad=1))
    wrapper.build((None, 5, 2))
    assert any("/g/" in key for key in _checkpoint_keys(wrapper, tmp_path))
    wrapper.fold()
    assert not hasattr(wrapper, "g") and _ids(wrapper.weights) == _ids([wrapper.layer.kernel, wrapper.layer.bias])
    assert not any("/g/" in key for key in _checkpoint_keys(wrapper, tmp_path))


class _ListHolder(keras.Model):
    def __init__(self, track: bool):
        super().__init__()
        self.blocks = [keras.layers.Dense(2), keras.layers.Dense(3)]
        if track:
            for i, block in enumerate(self.blocks):
                compat.track_child(self, block, f"blocks_{i}")

    def call(self, x):
        return self.blocks[1](self.blocks[0](x))


def test_track_child_puts_listed_layers_into_tf_checkpoints(tmp_path):
    untracked = _ListHolder(track=False)
    untracked(np.zeros((1, 4), np.float32))
    assert not any("kernel" in key for key in _checkpoint_keys(untracked, tmp_path)), (
        f"tf.train.Checkpoint now follows Keras' list attributes {VERSIONS}: track_child may no longer be needed "
        f"(check that checkpoints keep their names)")
    model = _ListHolder(track=True)
    _has(model, "_track_trackable")
    model(np.zeros((1, 4), np.float32))
    keys = _checkpoint_keys(model, tmp_path)
    for i in range(2):
        assert any(key.startswith(f"obj/blocks_{i}/") and "kernel" in key for key in keys), (
            f"Trackable._track_trackable no longer names the dependency blocks_{i} {VERSIONS}: {keys}")
    restored = _ListHolder(track=True)
    restored(np.zeros((1, 4), np.float32))
    tf.train.Checkpoint(obj=restored).read(str(tmp_path / "ckpt")).assert_consumed()
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{a.path}: not restored {VERSIONS}")


def test_sublayers_finds_every_nested_weight_norm():
    cfg = GeneratorConfig.from_raw(dict(num_mels=8, resblock="1", upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
                                        upsample_initial_channel=8, resblock_kernel_sizes=[3],
                                        resblock_dilation_sizes=[[1, 3, 5]]))
    generator = Generator(cfg)
    generator.build()
    _has(generator, "_flatten_layers")
    found = compat.sublayers(generator)
    assert found[0] is generator
    expected = [generator.conv_pre, *generator.ups, generator.conv_post]
    for block in generator.resblocks:
        assert isinstance(block, ResBlock1)
        expected += block.convs1 + block.convs2
    wrappers = [layer for layer in found if isinstance(layer, WeightNorm)]
    assert _ids(wrappers) == _ids(expected) and len(wrappers) == len(expected), (
        f"Layer._flatten_layers no longer finds the WeightNorm wrappers in list attributes {VERSIONS}")
    assert _ids(w.layer for w in expected) <= _ids(found), (
        f"Layer._flatten_layers no longer descends into a Wrapper's layer {VERSIONS}")


def test_adam_slots_are_the_moments_of_that_variable():
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=shape).astype(np.float32)) for shape in [(3,), (2, 2), (4,)]]
    grads = [rng.normal(size=v.shape).astype(np.float32) for v in variables]
    optimizer = keras.optimizers.AdamW(learning_rate=1e-3, beta_1=0.8, beta_2=0.99, weight_decay=0.0)
    optimizer.apply_gradients(zip([tf.constant(g) for g in grads], variables))
    for variable, grad in zip(variables, grads):
        m, v = compat.adam_slots(optimizer, variable)
        np.testing.assert_allclose(m.numpy(), 0.2 * grad, rtol=1e-6, err_msg=(
            f"AdamW._momentums[_get_variable_index(v)] is not v's first moment {VERSIONS}"))
        np.testing.assert_allclose(v.numpy(), 0.01 * grad ** 2, rtol=1e-6, err_msg=(
            f"AdamW._velocities[_get_variable_index(v)] is not v's second moment {VERSIONS}"))


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _failed_restore_warnings(prefix: str, silence: bool) -> tuple[int, list[str]]:
    """Restores a checkpoint of Dense(3) layers x, y into a Dense(4) x (incompatible), lets them go; returns the
    number of restores marked and TensorFlow's warnings."""
    handler = _Messages()
    tf.get_logger().addHandler(handler)
    marked = 0
    try:
        layer = keras.layers.Dense(4)
        layer.build((None, 2))
        checkpoint = tf.train.Checkpoint(x=layer)
        with pytest.raises(ValueError, match="incompatible") as raised:
            checkpoint.restore(prefix)
        if silence:
            marked = compat.silence_failed_restore(raised.value)
        del layer, checkpoint, raised
        gc.collect()
    finally:
        tf.get_logger().removeHandler(handler)
    return marked, handler.messages


def test_silence_failed_restore_stops_the_unrestored_value_warnings(tmp_path):
    layers = [keras.layers.Dense(3) for _ in range(2)]
    for layer in layers:
        layer.build((None, 2))
    prefix = tf.train.Checkpoint(x=layers[0], y=layers[1]).write(str(tmp_path / "ckpt"))
    _, warnings = _failed_restore_warnings(prefix, silence=False)
    assert any("could not be found" in w for w in warnings), (
        f"TensorFlow no longer warns about unrestored values after a failed restore {VERSIONS}: "
        f"silence_failed_restore may no longer be needed; warnings: {warnings}")
    marked, warnings = _failed_restore_warnings(prefix, silence=True)
    assert marked >= 1, (f"no _CheckpointRestoreCoordinator among the locals of the failed restore's traceback "
                         f"{VERSIONS}: update silence_failed_restore")
    assert not warnings, f"expect_partial on the coordinator no longer silences its warnings {VERSIONS}: {warnings}"
