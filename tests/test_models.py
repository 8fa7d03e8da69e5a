"""utils.models: the streams build, train a step, load weights files, and freeze the right layers.

ResNet-50s are built at 32x32 (its smallest input) and trained eagerly (tracing a ResNet-50
train step costs more than a few eager steps on a CPU). Tests marked ``backend_smoke`` are
re-run under JAX by tests/test_backends.py.
"""
import re

import numpy as np
import pytest

import keras
from keras import layers

from utils import models

SIZE = 32          # smallest input ResNet50 accepts
# A few steps: op by op is cheaper than tracing on TensorFlow; JAX's eager mode is slow, its jit is not.
EAGER = keras.backend.backend() != "jax"


def _train_step(model, x, y):
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy",
                  run_eagerly=EAGER)
    before = [np.array(w) for w in model.trainable_weights]
    loss = float(np.asarray(model.train_on_batch(x, y)))
    after = [np.array(w) for w in model.trainable_weights]
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "no weight moved in a training step"
    return loss


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A weights file of a (seeded, random) 3-channel ResNet50(include_top=False), and its arrays."""
    keras.utils.set_random_seed(123)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    path = tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5"
    backbone.save_weights(path)
    return path, _weights(backbone), {layer.name: layer.get_weights() for layer in backbone.layers}


@pytest.fixture(scope="module")
def spatial_model():
    keras.utils.set_random_seed(0)
    return models.build_spatial_model(3, image_size=SIZE, weights=None)


def test_spatial_model_builds_and_trains_a_step(spatial_model):
    model = spatial_model
    assert model.get_layer("resnet50") is models.get_backbone(model)
    assert model.input_shape == (None, SIZE, SIZE, 3) and model.output_shape == (None, 3)
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"
    x = np.random.default_rng(0).normal(0, 50, (4, SIZE, SIZE, 3)).astype("float32")
    _train_step(model, x, np.array([0, 1, 2, 0]))
    # training=True: batch statistics (a random backbone's BN moving statistics are still 0/1)
    probabilities = np.asarray(model(x, training=True))
    assert probabilities.shape == (4, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_weights_file_really_loads_into_the_backbone(backbone_file):
    path, saved, _ = backbone_file
    keras.utils.set_random_seed(7)
    loaded = models.get_backbone(models.build_spatial_model(3, image_size=SIZE, weights=path))
    keras.utils.set_random_seed(7)   # the same seed without the file: what "not loaded" would look like
    fresh = models.get_backbone(models.build_spatial_model(3, image_size=SIZE, weights=None))
    loaded_w, fresh_w = _weights(loaded), _weights(fresh)
    assert len(loaded_w) == len(saved) == 318
    for a, b in zip(loaded_w, saved):
        np.testing.assert_array_equal(a, b)
    kernels = [i for i, w in enumerate(saved) if w.ndim == 4]
    assert all(not np.array_equal(fresh_w[i], saved[i]) for i in kernels)


def test_from_scratch_residual_blocks_start_as_the_identity(backbone_file):
    def last_bn_gammas(backbone):   # the last BatchNorm of each of the 3 + 4 + 6 + 3 bottleneck blocks
        return [np.asarray(l.gamma) for l in backbone.layers if re.fullmatch(r"conv\d_block\d+_3_bn", l.name)]

    scratch = models.get_backbone(models.build_spatial_model(3, image_size=SIZE, weights=None))
    gammas = last_bn_gammas(scratch)
    assert len(gammas) == 16 and not any(g.any() for g in gammas)
    assert np.asarray(scratch.get_layer("conv2_block1_1_bn").gamma).all()     # other BN layers untouched
    off = models.get_backbone(models.build_spatial_model(3, image_size=SIZE, weights=None,
                                                         zero_init_residual=False))
    assert all(g.all() for g in last_bn_gammas(off))
    path, _, saved = backbone_file
    pretrained = models.get_backbone(models.build_spatial_model(3, image_size=SIZE, weights=path))
    for layer in pretrained.layers:   # loaded weights are never zeroed
        if re.fullmatch(r"conv\d_block\d+_3_bn", layer.name):
            np.testing.assert_array_equal(layer.get_weights()[0], saved[layer.name][0])


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        models.build_spatial_model(3, image_size=SIZE, weights=tmp_path / "nope.weights.h5")


def test_freeze_and_unfreeze_select_the_right_layers(spatial_model):
    model = spatial_model
    backbone = models.get_backbone(model)
    head_params = sum(int(np.prod(w.shape)) for w in model.get_layer("predictions").weights)

    models.freeze_backbone(model)
    assert models.trainable_summary(model)["trainable_params"] == head_params
    assert not backbone.trainable_weights

    models.unfreeze_backbone(model, "conv4")
    for layer in backbone.layers:
        if not layer.weights:
            continue
        stage = models.layer_stage(layer.name)
        assert 1 <= stage <= 5, layer.name
        is_bn = isinstance(layer, layers.BatchNormalization)
        assert layer.trainable == (stage >= 4 and not is_bn), layer.name
    summary = models.trainable_summary(model)
    assert summary["bn_layers"] == 53 and summary["bn_layers_training"] == 0

    models.unfreeze_backbone(model, "conv1", train_batchnorm=True)
    assert all(layer.trainable for layer in backbone.layers)
    assert models.trainable_summary(model)["bn_layers_training"] == 53
    models.unfreeze_backbone(model, "conv1")
    assert models.trainable_summary(model)["trainable_params"] > 20_000_000
    with pytest.raises(ValueError, match="conv6"):
        models.unfreeze_backbone(model, "conv6")


def test_frozen_batchnorm_runs_in_inference_mode():
    """Keras 3: a BatchNormalization layer with trainable=False ignores training=True."""
    bn = layers.BatchNormalization()
    x = np.random.default_rng(1).normal(3.0, 2.0, (8, 4)).astype("float32")
    bn.build(x.shape)
    bn.trainable = False
    np.testing.assert_allclose(np.asarray(bn(x, training=True)), np.asarray(bn(x, training=False)), rtol=1e-6)
    bn.trainable = True
    assert not np.allclose(np.asarray(bn(x, training=True)), np.asarray(bn(x, training=False)))


@pytest.mark.backend_smoke
def test_temporal_cnn_m_builds_and_trains_a_step():
    keras.utils.set_random_seed(0)
    model = models.build_temporal_model(4, image_size=64, stack_length=10, width=0.125, dropout=0.5)
    assert model.input_shape == (None, 64, 64, 20) and model.output_shape == (None, 4)
    assert model.get_layer("conv1_conv").filters == 12 and model.get_layer("fc7").units == 256
    x = np.random.default_rng(0).normal(0, 0.2, (4, 64, 64, 20)).astype("float32")
    _train_step(model, x, np.array([0, 1, 2, 3]))


def test_temporal_cnn_m_2048_has_the_paper_sizes():
    model = models.build_temporal_model(51, image_size=224, stack_length=10)
    filters = [model.get_layer(f"conv{i}_conv").filters for i in range(1, 6)]
    kernels = [model.get_layer(f"conv{i}_conv").kernel_size[0] for i in range(1, 6)]
    strides = [model.get_layer(f"conv{i}_conv").strides[0] for i in range(1, 6)]
    assert filters == [96, 256, 512, 512, 512] and kernels == [7, 5, 3, 3, 3] and strides == [2, 2, 1, 1, 1]
    assert [model.get_layer(n).units for n in ("fc6", "fc7", "predictions")] == [4096, 2048, 51]
    assert [model.get_layer(n).rate for n in ("fc6_dropout", "fc7_dropout")] == [0.9, 0.9]
    assert model.get_layer("flatten").input.shape[1:] == (7, 7, 512)
    assert model.get_layer("conv1_bn") and model.get_layer("conv2_bn")


def test_temporal_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        models.build_temporal_model(3, arch="vgg")
    with pytest.raises(ValueError, match="ImageNet"):
        models.build_temporal_model(3, image_size=64, weights="imagenet")
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        models.build_temporal_model(3, image_size=64, width=0.125, weights=tmp_path / "missing.weights.h5")


def test_temporal_resnet50_cross_modality_init_and_step(backbone_file):
    path, _, source = backbone_file
    keras.utils.set_random_seed(0)
    model = models.build_temporal_model(3, image_size=SIZE, stack_length=10, arch="resnet50",
                                        dropout=0.5, weights=path)
    backbone = models.get_backbone(model)
    assert model.input_shape == (None, SIZE, SIZE, 20)
    kernel, bias = backbone.get_layer("conv1_conv").get_weights()
    rgb_kernel, rgb_bias = source["conv1_conv"]
    assert kernel.shape == (7, 7, 20, 64)
    expected = np.repeat(rgb_kernel.mean(axis=2, keepdims=True), 20, axis=2)
    np.testing.assert_allclose(kernel, expected, rtol=1e-6)
    np.testing.assert_array_equal(bias, rgb_bias)
    for name in ("conv1_bn", "conv2_block1_0_conv", "conv5_block3_3_conv", "conv5_block3_3_bn"):
        for a, b in zip(backbone.get_layer(name).get_weights(), source[name]):
            np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).normal(0, 0.2, (4, SIZE, SIZE, 20)).astype("float32")
    _train_step(model, x, np.array([0, 1, 2, 0]))


def test_batchnorm_demonstration_leaves_the_model_unchanged():
    """Notebook 02's check of the two BatchNorm modes must not move the model's moving statistics."""
    keras.utils.set_random_seed(0)
    model = models.build_spatial_model(3, image_size=32, weights=None, dropout=0.0)
    bn = models.get_backbone(model).get_layer("conv2_block1_1_bn")
    before = [np.array(w) for w in model.get_weights()]
    probe = np.random.default_rng(0).normal(3.0, 2.0, (8, 4, 4, bn.gamma.shape[0])).astype("float32")
    assert models.batchnorm_modes_agree(bn, probe) == {False: True, True: False}
    assert models.batchnorm_modes_agree(bn, probe) == {False: True, True: False}     # a re-run, the same
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert bn.trainable
