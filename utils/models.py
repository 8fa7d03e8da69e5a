"""The two streams of Simonyan & Zisserman (2014), as Keras 3 models (any backend).

* **Spatial stream** - :func:`build_spatial_model`: ImageNet ResNet-50 (``keras.applications``)
  + global average pooling + dropout + softmax, fine-tuned on single RGB frames. The backbone
  is one nested layer named ``"resnet50"`` (:data:`BACKBONE_NAME`), so it can be frozen for a
  warm-up of the new head (:func:`freeze_backbone`) and then unfrozen, all of it or from a
  stage on (:func:`unfreeze_backbone`).
* **Temporal stream** - :func:`build_temporal_model`: the paper's CNN-M-2048 on stacks of
  ``L`` optical-flow fields (``2L`` input channels), trained from scratch, with BatchNorm where
  the paper had local response normalisation; or a ResNet-50 with TSN's cross-modality
  initialisation (``arch="resnet50"``).

BatchNorm during fine-tuning
----------------------------
A BatchNormalization layer normalises with the statistics of the current batch while it
trains, and with its moving averages (the ImageNet statistics) at inference. Fine-tuning with
small batches of one dataset would replace those well-estimated statistics by noisy ones and
shift every feature the pretrained layers produce. So the backbone's BN layers stay frozen:
in Keras 3, ``layer.trainable = False`` on a BatchNormalization layer also makes it run in
inference mode (``BatchNormalization.call`` uses batch statistics only when ``training and
self.trainable``), and keeps its moving mean/variance and its scale/offset fixed. Only when the
backbone is trained from scratch (``weights=None``: no statistics worth keeping) should BN
train - ``unfreeze_backbone(..., train_batchnorm=True)``; such a backbone also starts with every
residual block as the identity (:func:`zero_init_residual_branches`).

All layers are stock Keras layers: checkpoints load with plain ``keras.saving.load_model``.
Under a ``mixed_float16`` policy the softmax layers compute in float32 (numerically safe
probabilities and loss).
"""
from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path

import keras
import numpy as np
from keras import layers

BACKBONE_NAME = "resnet50"                      # keras.applications.ResNet50's model name
STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")
TEMPORAL_ARCHS = ("cnn_m_2048", "resnet50")
FLOW_TO_UINT8_SCALE = 127.5
"""Flow inputs come in units of the storage bound (20 px, values in [-2, 2], typically within a
few tenths of 0); times 127.5 they are in grey levels of the stored uint8 flow images, mean
subtracted: what the paper's (and TSN's) temporal networks were fed, and the range an ImageNet
``conv1`` was trained on. Both temporal architectures start with this ``Rescaling`` layer.
(It matters for BatchNorm too: moving variances start at 1, and with inputs of variance ~1e-3
a short run would leave them far too large at inference.)"""


# ----------------------------------------------------------------------------------------
# Spatial stream
# ----------------------------------------------------------------------------------------
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"     # .weights.h5 / .h5 (Keras' own ImageNet files)
_ZIP_SIGNATURE = b"PK\x03\x04"               # a .keras archive also holds weights


def _check_weights_file(weights, what: str) -> str:
    """``weights`` as a path string, once it is known to be an HDF5 (or ``.keras``) file; else a named error."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: weights file {path} does not exist (expected 'imagenet', None, "
                                f"or the path to a .weights.h5 file saved from the same architecture)")
    if not path.name.lower().endswith((".weights.h5", ".h5", ".hdf5", ".keras")):
        raise ValueError(f"{what}: weights file {path} must be named *.weights.h5 (or *.h5 / *.keras): "
                         "Keras chooses how to read a weights file by its name")
    with open(path, "rb") as file:
        head = file.read(8)
    if head != _HDF5_SIGNATURE and not head.startswith(_ZIP_SIGNATURE):
        raise ValueError(f"{what}: {path} is not a Keras weights file (an HDF5 .weights.h5 file or a .keras "
                         f"archive; it starts with {head!r}); give a file saved with model.save_weights(...) "
                         "from the same architecture, 'imagenet' or None")
    return str(path)


def _load_weights(load, path: str, what: str):
    """``load()`` (which reads the weights file ``path``), with errors that name the file."""
    try:
        return load()
    except (ValueError, KeyError, OSError, TypeError) as error:
        raise ValueError(f"{what}: the weights in {path} do not fit this model (saved from another "
                         f"architecture, size or number of classes?): {error}") from error


def resnet50_backbone(image_size: int = 224, channels: int = 3, weights: str | os.PathLike | None = "imagenet"):
    """``keras.applications.ResNet50(include_top=False)`` for square ``image_size`` inputs.

    ``weights``: ``"imagenet"`` (downloaded by Keras once, then cached), ``None`` (random
    initialisation) or the path to a weights file saved from ``ResNet50(include_top=False)``
    (e.g. ``backbone.save_weights("resnet50_notop.weights.h5")``, or Keras' own
    ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``).
    """
    if weights not in ("imagenet", None):
        weights = _check_weights_file(weights, "ResNet50 backbone")
    if channels != 3 and weights is not None:
        raise ValueError("pretrained ResNet50 weights need 3 input channels; build with weights=None "
                         "and use cross_modality_init (see build_temporal_model(arch='resnet50'))")
    with warnings.catch_warnings():      # "usually expects 1 or 3 input channels": 2L is on purpose
        warnings.filterwarnings("ignore", message=".*input channels", category=UserWarning)
        build = functools.partial(keras.applications.ResNet50, include_top=False, weights=weights,
                                  input_shape=(image_size, image_size, channels))
        return build() if weights in ("imagenet", None) else _load_weights(build, weights, "ResNet50 backbone")


def _classifier(x, num_classes: int, dropout: float, name: str = "predictions", zero_init: bool = False):
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    return _softmax_layer(num_classes, name, zero_init)(x)


def _softmax_layer(num_classes: int, name: str = "predictions", zero_init: bool = False):
    """The classifier, in float32 so that under mixed precision the softmax and the loss stay in
    full precision. Keras' Glorot initialisation unless ``zero_init`` (the paper's Gaussian std
    0.01 slowed a small temporal network trained from scratch down by a factor of 2 or more)."""
    init = "zeros" if zero_init else "glorot_uniform"
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name=name,
                        kernel_initializer=init)


def set_batchnorm_momentum(model, momentum: float) -> int:
    """Set the moving-average momentum of every BatchNormalization layer in ``model``; returns how many.

    Keras' default 0.99 averages over ~100 steps: right for long runs, too slow for a short run
    from scratch (the moving statistics would still be mostly their initial values). 0.9
    averages over ~10 steps (PyTorch's and Caffe's usual setting).
    """
    count = 0
    for layer in _all_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = float(momentum)
            count += 1
    return count


def build_spatial_model(num_classes: int, image_size: int = 224, weights: str | os.PathLike | None = "imagenet",
                        dropout: float = 0.5, bn_momentum: float | None = None,
                        zero_init_residual: bool | None = None, zero_init_head: bool = True) -> keras.Model:
    """Spatial stream: ResNet-50 backbone + global average pooling + dropout + softmax.

    Args:
        num_classes: number of action classes (51 for HMDB51).
        image_size: side of the square RGB input (224 as in ImageNet; >= 32).
        weights: ``"imagenet"``, ``None`` (train from scratch) or a ``.weights.h5`` file of
            ``ResNet50(include_top=False)``; loaded into the backbone only (the head is new).
        dropout: dropout rate before the classifier.
        bn_momentum: if given, the backbone's BatchNorm momentum (see :func:`set_batchnorm_momentum`;
            useful with ``weights=None``); ``None`` keeps Keras' 0.99.
        zero_init_residual: start every residual block as the identity
            (:func:`zero_init_residual_branches`); ``None``: when training from scratch
            (``weights=None``) and never over loaded weights.
        zero_init_head: start the new classifier at zero (kernel and bias), so the untrained
            network says "every class equally likely" and no class starts ahead of another (as
            the ViT heads of Dosovitskiy et al. 2021). Its first update reaches the classifier
            only; the backbone learns once the head has a direction, the same spirit as the warm-up.

    Inputs are frames preprocessed like ImageNet ResNet-50's (caffe style: BGR minus the ImageNet
    mean), which :class:`utils.generators.SpatialFrames` does. The backbone is the nested layer
    ``model.get_layer("resnet50")``; the model is returned with every layer trainable - call
    :func:`freeze_backbone` / :func:`unfreeze_backbone` before compiling.
    """
    backbone = resnet50_backbone(image_size, 3, weights)
    if bn_momentum is not None:
        set_batchnorm_momentum(backbone, bn_momentum)
    if zero_init_residual is None:
        zero_init_residual = weights is None
    if zero_init_residual:
        zero_init_residual_branches(backbone)
    inputs = keras.Input((image_size, image_size, 3), name="frame")
    x = backbone(inputs)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = _classifier(x, num_classes, dropout, zero_init=zero_init_head)
    return keras.Model(inputs, outputs, name="spatial_resnet50")


def zero_init_residual_branches(backbone) -> int:
    """Set the scale (gamma) of the last BatchNorm of every residual branch to 0; returns how many.

    Each bottleneck block then starts as the identity, so a ResNet trained from scratch starts
    as a shallow network and trains faster and more stably (Goyal et al. 2017, "Accurate,
    large minibatch SGD"; torchvision's ``zero_init_residual``). Meant for a randomly
    initialised backbone: on pretrained weights it would undo the pretraining.
    """
    count = 0
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization) and re.fullmatch(r"conv\d_block\d+_3_bn", layer.name):
            layer.gamma.assign(keras.ops.zeros(layer.gamma.shape, layer.gamma.dtype))   # zeros_like fails on JAX
            count += 1
    if count == 0:
        raise ValueError(f"zero_init_residual_branches: {backbone.name!r} has no 'convN_blockM_3_bn' layers")
    return count


# ----------------------------------------------------------------------------------------
# Freezing and unfreezing
# ----------------------------------------------------------------------------------------
def _all_layers(model):
    """Every layer of ``model``, nested models flattened (depth first)."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def get_backbone(model) -> keras.Model:
    """The nested ResNet-50 (layer ``"resnet50"``) of a spatial or ResNet temporal model."""
    try:
        return model.get_layer(BACKBONE_NAME)
    except ValueError:
        raise ValueError(f"model {model.name!r} has no nested backbone layer named {BACKBONE_NAME!r}; "
                         f"its layers: {[layer.name for layer in model.layers]}") from None


def layer_stage(layer_name: str) -> int:
    """ResNet stage (1-5) of a ``keras.applications.ResNet50`` layer, from its name.

    ``conv1_*`` and ``pool1_*`` are stage 1, ``conv2_block1_*`` stage 2, ... ``conv5_*`` stage 5;
    the input layer counts as stage 0.
    """
    prefix = layer_name.split("_", 1)[0]
    if prefix in ("conv1", "pool1"):
        return 1
    if len(prefix) == 5 and prefix.startswith("conv") and prefix[4].isdigit():
        return int(prefix[4])
    return 0


def freeze_backbone(model) -> keras.Model:
    """Freeze the whole backbone (weights and BatchNorm statistics): only the head trains.

    Takes effect at the next ``model.compile``.
    """
    get_backbone(model).trainable = False
    return model


def unfreeze_backbone(model, from_stage: str = "conv1", train_batchnorm: bool = False) -> keras.Model:
    """Make the backbone trainable from stage ``from_stage`` (``"conv1"`` = all of it) on.

    Layers of earlier stages stay frozen. BatchNormalization layers stay frozen - in inference
    mode, with fixed moving statistics, scale and offset - unless ``train_batchnorm=True``
    (then those of the unfrozen stages train, with batch statistics). Takes effect at the next
    ``model.compile``.
    """
    if from_stage not in STAGES:
        raise ValueError(f"from_stage must be one of {STAGES}, got {from_stage!r}")
    first = STAGES.index(from_stage) + 1
    backbone = get_backbone(model)
    backbone.trainable = True
    for layer in backbone.layers:
        if not layer.weights:
            continue                      # input, padding, activation, pooling, add: nothing to train
        trainable = layer_stage(layer.name) >= first
        if isinstance(layer, layers.BatchNormalization) and not train_batchnorm:
            trainable = False
        layer.trainable = trainable
    return model


def batchnorm_modes_agree(layer, probe: np.ndarray) -> dict[bool, bool]:
    """``{trainable: output in training mode == output in inference mode}`` of a BatchNormalization layer.

    Shows that a frozen BN layer (``trainable=False``) always normalises with its moving statistics.
    It runs on a *copy* of ``layer``: calling a trainable BN layer in training mode updates its
    moving mean and variance, which must not happen to a model that is about to be trained.
    """
    copy = type(layer).from_config(layer.get_config())
    copy.build(probe.shape)
    copy.set_weights(layer.get_weights())
    agree = {}
    for trainable in (False, True):
        copy.trainable = trainable
        training_mode = keras.ops.convert_to_numpy(copy(probe, training=True))
        inference_mode = keras.ops.convert_to_numpy(copy(probe, training=False))
        agree[trainable] = bool(np.allclose(training_mode, inference_mode, atol=1e-5))
    return agree


def trainable_summary(model) -> dict[str, int]:
    """Counts of trainable / frozen parameters and of BN layers in training mode, for a quick check."""
    count = lambda variables: int(sum(np.prod(v.shape) for v in variables))
    bn = [layer for layer in _all_layers(model) if isinstance(layer, layers.BatchNormalization)]
    return {"trainable_params": count(model.trainable_weights),
            "frozen_params": count(model.non_trainable_weights),
            "bn_layers": len(bn), "bn_layers_training": sum(layer.trainable for layer in bn)}


# ----------------------------------------------------------------------------------------
# Temporal stream
# ----------------------------------------------------------------------------------------
def _scaled(n: int, width: float) -> int:
    return max(8, int(round(n * width)))


def _cnn_m_2048(inputs, width: float, dropout: float, bn_momentum: float):
    """CNN-M-2048 (Chatfield et al. 2014) as used for the temporal stream, BN instead of LRN.

    'same' padding throughout, so any input side >= 32 works; at 224 the last feature map is
    7x7x512 (Caffe's original padding gave 6x6).
    """
    def conv(x, filters, kernel, stride, name, norm):
        x = layers.Conv2D(_scaled(filters, width), kernel, strides=stride, padding="same",
                          use_bias=not norm, name=f"{name}_conv")(x)
        if norm:
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)

    def pool(x, name):
        return layers.MaxPooling2D(3, strides=2, padding="same", name=name)(x)

    x = pool(conv(inputs, 96, 7, 2, "conv1", norm=True), "pool1")
    x = pool(conv(x, 256, 5, 2, "conv2", norm=True), "pool2")
    x = conv(x, 512, 3, 1, "conv3", norm=False)
    x = conv(x, 512, 3, 1, "conv4", norm=False)
    x = pool(conv(x, 512, 3, 1, "conv5", norm=False), "pool5")
    x = layers.Flatten(name="flatten")(x)
    for name, units in (("fc6", 4096), ("fc7", 2048)):
        x = layers.Dense(_scaled(units, width), activation="relu", name=name)(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def cross_modality_init(model, source) -> None:
    """TSN's cross-modality initialisation of a ResNet-50 with ``2L`` input channels.

    Every layer of ``model``'s backbone gets the weights of the same-named layer of ``source``
    (a 3-channel ResNet-50, e.g. ImageNet's), except ``conv1_conv``: its RGB kernel is averaged
    over the 3 input channels and the average replicated to every one of the ``2L`` channels.
    """
    target = get_backbone(model) if any(l.name == BACKBONE_NAME for l in model.layers) else model
    copied = 0
    for layer in source.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        destination = target.get_layer(layer.name)
        if layer.name == "conv1_conv":
            kernel, *rest = weights                                  # kernel [7, 7, 3, 64]
            channels = destination.get_weights()[0].shape[2]
            mean = kernel.mean(axis=2, keepdims=True)
            weights = [np.repeat(mean, channels, axis=2), *rest]
        destination.set_weights(weights)
        copied += 1
    if copied == 0:
        raise ValueError(f"cross_modality_init: source model {source.name!r} has no weights to copy")


def build_temporal_model(num_classes: int, image_size: int = 224, stack_length: int = 10,
                         arch: str = "cnn_m_2048", width: float = 1.0, dropout: float = 0.9,
                         weights: str | os.PathLike | None = None, bn_momentum: float = 0.9) -> keras.Model:
    """Temporal stream on ``image_size x image_size x 2L`` flow stacks (channels x1, y1, ..., xL, yL).

    Args:
        num_classes: number of action classes.
        image_size: side of the square input (224 in the paper; >= 32).
        stack_length: ``L``, flow fields per stack (10 in the paper).
        arch: ``"cnn_m_2048"`` (the paper's network, trained from scratch: conv1 7x7/96 stride 2,
            BN, pool; conv2 5x5/256 stride 2, BN, pool; conv3-5 3x3/512; pool; fc6 4096, fc7 2048,
            each followed by dropout; softmax) or ``"resnet50"`` (ResNet-50, global average
            pooling, dropout, softmax).
        width: multiplies every channel count and fc size of ``cnn_m_2048`` (1.0 = the paper;
            e.g. 0.25 for a CPU demo). Ignored by ``"resnet50"``.
        dropout: dropout after fc6 and fc7 (0.9 in the paper: strong regularisation, since a
            network trained from scratch on HMDB51's ~3.5k clips overfits fast); before the
            classifier for ``"resnet50"``.
        weights: ``cnn_m_2048``: ``None`` or a ``.weights.h5`` file saved from the same model.
            ``resnet50``: ``None`` (random init), ``"imagenet"`` or a ``.weights.h5`` file of a
            3-channel ``ResNet50(include_top=False)``, copied in by :func:`cross_modality_init`.
            Every layer of this ResNet trains, BatchNorm included (statistics of flow are not
            those of RGB images, so the ImageNet ones are only a starting point).
        bn_momentum: momentum of the BatchNorm moving averages (0.9, see :func:`set_batchnorm_momentum`).
    """
    if arch not in TEMPORAL_ARCHS:
        raise ValueError(f"arch must be one of {TEMPORAL_ARCHS}, got {arch!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    channels = 2 * int(stack_length)
    inputs = keras.Input((image_size, image_size, channels), name="flow_stack")
    scaled = layers.Rescaling(FLOW_TO_UINT8_SCALE, name="flow_to_uint8_range")(inputs)
    if arch == "cnn_m_2048":
        if weights == "imagenet":
            raise ValueError("there are no ImageNet weights for cnn_m_2048 (it is trained from scratch); "
                             "use weights=None, or arch='resnet50' for cross-modality initialisation")
        x = _cnn_m_2048(scaled, width, dropout, bn_momentum)
        outputs = _softmax_layer(num_classes)(x)
        model = keras.Model(inputs, outputs, name=f"temporal_cnn_m_2048_w{width:g}")
        if weights is not None:
            path = _check_weights_file(weights, "cnn_m_2048 temporal stream")
            _load_weights(lambda: model.load_weights(path), path, "cnn_m_2048 temporal stream")
        return model

    backbone = resnet50_backbone(image_size, channels, weights=None)
    set_batchnorm_momentum(backbone, bn_momentum)
    x = backbone(scaled)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = _classifier(x, num_classes, dropout)
    model = keras.Model(inputs, outputs, name="temporal_resnet50")
    if weights is not None:
        source = resnet50_backbone(image_size, 3, weights)
        cross_modality_init(model, source)
    return model
