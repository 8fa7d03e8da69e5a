"""A 3D-CNN baseline: C3D-style networks (Tran et al., ICCV 2015) on clips of RGB frames or of flow.

A 2D network sees one frame (the spatial stream) or a stack of flows whose time axis its first layer
collapses into channels (the temporal stream). A 3D network convolves over time as well as space
(``keras.layers.Conv3D``, kernels 3x3x3), so a clip of ``T`` RGB frames gives it colour *and*
motion at once, learned from the pixels, with no optical flow. Input ``(T, S, S, C)``: time first,
channels last (:class:`utils.generators.Clips`); ``C = 3`` for RGB clips, ``C = 2`` (x, y) for flow.

Two sizes (:data:`C3D_SIZES`), both trained from scratch:

* ``"large"`` - C3D itself (Tran et al. 2015, sec. 3.3 and Fig. 3): eight 3x3x3 convolutions
  (64; 128; 256, 256; 512, 512; 512, 512 filters), five max-poolings (the first 1x2x2, so that
  time is not merged at once; the others 2x2x2), fc6 and fc7 of 4096 units with dropout 0.5,
  softmax. About 78 M parameters at 16 x 112 x 112, most in fc6. C3D was trained on Sports-1M
  (1.1 M videos) and used as a feature extractor.
* ``"small"`` (the default) - the network Tran et al. trained *from scratch on UCF101* to choose the
  kernel depth (sec. 3.2): five 3x3x3 convolutions (64, 128, 256, 256, 256), each followed by a
  max-pooling (the first 1x2x2), fc6 and fc7 of 2048 units; about 17 M parameters at 16 x 112 x 112.
  Why it is the default: HMDB51 has about 3,000 training clips, fewer than UCF101's 9,500 and a
  thousandth of Sports-1M, and a network trained from scratch on so few overfits in proportion to
  its size; a C3D-like network trained from scratch on HMDB51 reached only 24.3 % (Carreira &
  Zisserman 2017, Table 2, split 1), far below the two streams' 59.4 %. An earlier project behind
  this repository trained both sizes and found the smaller one better.

Both put BatchNorm after every convolution (as the C3D-like network of Carreira & Zisserman 2017;
the original had none): it makes training from scratch with small batches work. ``width`` scales
every filter and unit count (0.25 for the CPU demo). Inputs keep the units of the two streams:
RGB as the spatial stream's (caffe-style, BGR minus the ImageNet mean), flow in grey levels of
the stored flow images (units of 20 px x :data:`utils.models.FLOW_TO_UINT8_SCALE`).

The presets (:data:`C3D_DEFAULTS`) follow C3D's training recipe for HMDB51 and a CPU setting for
the demo; notebook 07 trains and evaluates them (:func:`utils.evaluation.evaluate_clips`).
"""
from __future__ import annotations

from typing import Any

import keras
from keras import layers

from utils.models import FLOW_TO_UINT8_SCALE

C3D_SIZES = ("small", "large")
C3D_MODALITIES = ("rgb", "flow")
CHANNELS = {"rgb": 3, "flow": 2}
C3D_LAYOUT = {
    # blocks of 3x3x3 convolutions (filters), each block followed by a max-pooling; fully connected units
    "large": dict(blocks=((64,), (128,), (256, 256), (512, 512), (512, 512)), fc=(4096, 4096)),
    "small": dict(blocks=((64,), (128,), (256,), (256,), (256,)), fc=(2048, 2048)),
}
"""Tran et al. 2015: ``"large"`` = C3D (sec. 3.3, Fig. 3); ``"small"`` = the from-scratch UCF101 network
of the kernel-depth search (sec. 3.2)."""

# Settings per dataset (notebook 07), each number with its source. demo: a CPU, minutes.
# hmdb51 (and any other dataset): a GPU, C3D's recipe (Tran et al. 2015, sec. 3.2-3.3): clips of 16
# frames, 112 x 112 crops (of frames resized to 128 x 171 there; here TSN-style crops of the short side),
# SGD with momentum, batches of 30, rate 0.003 divided by 10 every 4 epochs for 16 epochs (sec. 3.2,
# from scratch on UCF101). Departures: cosine decay per epoch instead of steps (resumable, the same
# peak rate); BatchNorm; the repository's L2 5e-4 in the gradient (utils.training.SGDWithL2).
C3D_DEFAULTS: dict[str, dict[str, Any]] = {
    "demo": dict(size="small", width=0.25, clip_length=8, image_size=32, batch_size=16, clips_per_video=4,
                 epochs=20, learning_rate=0.001, optimizer="adamw", dropout=0.0, patience=None,
                 crop_scales=(1.0, 0.875), label_smoothing=0.0),
    "hmdb51": dict(
        size="small",                    # see the module docstring: the from-scratch network of sec. 3.2
        width=1.0,                       # the paper's filter counts
        clip_length=16,                  # C3D: 16-frame clips
        image_size=112,                  # C3D: 112 x 112 crops
        batch_size=30,                   # C3D sec. 3.2: mini-batches of 30 clips
        clips_per_video=4,               # 4 random clips of each of ~2,980 training videos per epoch
        epochs=16,                       # C3D sec. 3.2: stopped after 16 epochs
        learning_rate=0.003,             # C3D sec. 3.2: initial rate 0.003 (cosine instead of /10 every 4 epochs)
        optimizer="sgd",                 # momentum 0.9 (C3D's Caffe solver), L2 5e-4 in the gradient
        dropout=0.5,                     # C3D: dropout 0.5 after fc6 and fc7
        patience=None,                   # a fixed schedule; best.keras keeps the best validation epoch
        crop_scales=(1.0, 0.875, 0.75, 0.66),   # TSN's scale jitter, as the two streams (C3D: random crops)
        label_smoothing=0.0),            # none in the paper
}


def default_c3d_settings(dataset_name: str, **given) -> dict[str, Any]:
    """The preset for a dataset (``"demo"``: the CPU one; anything else: HMDB51's), overridden by the
    non-None values of ``given``; unknown names are an error."""
    settings = dict(C3D_DEFAULTS["demo" if dataset_name == "demo" else "hmdb51"])
    unknown = sorted(set(given) - set(settings))
    if unknown:
        raise KeyError(f"unknown 3D-CNN setting(s) {unknown}; known: {sorted(settings)}")
    settings.update({k: v for k, v in given.items() if v is not None})
    return settings


def _scaled(n: int, width: float) -> int:
    return max(8, int(round(n * width)))


def build_c3d_model(num_classes: int, clip_length: int = 16, image_size: int = 112, modality: str = "rgb",
                    size: str = "small", width: float = 1.0, dropout: float = 0.5,
                    bn_momentum: float = 0.9) -> keras.Model:
    """A C3D-style network on clips ``(clip_length, image_size, image_size, C)``, from scratch.

    Args:
        num_classes: number of action classes.
        clip_length: ``T``, frames (or flows) per clip (16 in C3D).
        image_size: side of the square crops (112 in C3D; >= 16).
        modality: ``"rgb"`` (3 channels, preprocessed as the spatial stream's frames) or ``"flow"``
            (2 channels x, y in units of 20 px, as the temporal stream's flows).
        size: ``"small"`` (Tran et al. sec. 3.2, the default) or ``"large"`` (C3D, sec. 3.3); see the
            module docstring.
        width: multiplies every filter and unit count (1.0 = the paper's).
        dropout: after fc6 and fc7 (C3D: 0.5).
        bn_momentum: of the BatchNorm moving averages (0.9, as :func:`utils.models.build_temporal_model`).

    Every convolution is 3x3x3, stride 1, 'same' padding, then BatchNorm and ReLU; the first pooling is
    1x2x2 (space only), the others 2x2x2 with 'same' padding, so short clips and small crops work
    (a size of 1 stays 1).
    """
    if size not in C3D_SIZES:
        raise ValueError(f"size must be one of {C3D_SIZES}, got {size!r}")
    if modality not in C3D_MODALITIES:
        raise ValueError(f"modality must be one of {C3D_MODALITIES}, got {modality!r}")
    if clip_length < 1 or image_size < 16:
        raise ValueError(f"need clip_length >= 1 and image_size >= 16, got {clip_length}, {image_size}")
    layout = C3D_LAYOUT[size]
    inputs = keras.Input((clip_length, image_size, image_size, CHANNELS[modality]), name=f"{modality}_clip")
    x = layers.Rescaling(FLOW_TO_UINT8_SCALE, name="flow_to_uint8_range")(inputs) if modality == "flow" else inputs
    for b, block in enumerate(layout["blocks"], start=1):
        for c, filters in enumerate(block):
            name = f"conv{b}{'ab'[c] if len(block) > 1 else 'a'}"
            x = layers.Conv3D(_scaled(filters, width), 3, padding="same", use_bias=False, name=name)(x)
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
            x = layers.Activation("relu", name=f"{name}_relu")(x)
        x = layers.MaxPooling3D((1, 2, 2) if b == 1 else (2, 2, 2), padding="same", name=f"pool{b}")(x)
    x = layers.Flatten(name="flatten")(x)
    for name, units in zip(("fc6", "fc7"), layout["fc"]):
        x = layers.Dense(_scaled(units, width), activation="relu", name=name)(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"c3d_{size}_{modality}_w{width:g}")


def parameter_counts(num_classes: int, clip_length: int = 16, image_size: int = 112,
                     modality: str = "rgb", width: float = 1.0) -> dict[str, int]:
    """``{size: parameters}`` of both sizes for the same input (for the notebook's comparison)."""
    return {size: int(build_c3d_model(num_classes, clip_length, image_size, modality, size, width).count_params())
            for size in C3D_SIZES}
