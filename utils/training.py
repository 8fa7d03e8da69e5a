"""Training loops for the two streams: ``model.fit`` with Keras callbacks, resumable.

Both :func:`train_temporal` and :func:`train_spatial` write into one folder (``cfg.stream_dir(stream)``):

* ``last.keras`` - the model after the last finished epoch, *with its optimizer state*
  (``ModelCheckpoint``);
* ``best.keras`` - the model of the epoch with the best validation accuracy (that epoch's
  ``last.keras``, hard-linked);
* ``history.csv`` - one row per epoch (``CSVLogger``, appended): losses, accuracies, top-5,
  learning rate, seconds per epoch, and the training ``phase``;
* ``state.json`` - how many epochs are finished, the phase, whether early stopping fired (and its
  counter), the learning-rate schedule, and the **settings** of the run (model, data, hyper-parameters).

Nothing is ever replaced by a partial file: a checkpoint is written under a temporary name,
checked to be a complete ``.keras`` archive, flushed to disk and only then renamed over the old
one; temporaries left by a crash are deleted at the next start, never renamed; ``state.json`` is
written last. Calling the same function again **resumes**: the model gets the weights *and
optimizer state* (momentum, iteration counter) of ``last.keras``, the epoch counter continues
(``fit(initial_epoch=...)``), the data generators jump to that epoch's draws, early stopping gets
its counter back, dropout's random state is put back (``state.json``), and ``history.csv`` keeps
each epoch exactly once. A resume with **other settings** (another learning rate, other videos,
another model, batch size, steps per epoch, precision policy, ...) is refused with a message that
says what differs: it would be another experiment. Asking for another number of epochs than the
run was planned with is refused too, since the cosine of the plan has reached (or would skip) its
floor: start a longer run with ``resume=False``, or ask for ``warm_restart=True``, a new cosine from
the phase's rate over the added epochs, recorded in ``state.json``'s schedule (``"warm_restart":
true``) and visible in ``history.csv``'s ``learning_rate``. A run that early stopping ended stays
finished (``resume=False`` starts over).

The protocol of the paper and TSN, both of which train on *all* training clips of a split: the
validation carve-out chooses the number of epochs (the best validation epoch, :func:`refit_plan`),
then :func:`refit_spatial` / :func:`refit_temporal` train the same model again on train +
validation clips for that many epochs, at the same rate in every epoch as the validated run (its
schedule is replayed, not squeezed into fewer epochs), into ``<run>/refit/``; evaluation tests that
model whenever it is finished (:func:`refit_problem`). Starting the validated run over deletes its
``refit/`` folder: it belonged to the run that is replaced.

Choices (and why)
-----------------
* **Optimizer: SGD with momentum 0.9 and Caffe's weight decay**: an L2 term of 5e-4 *in the
  gradient* (the rule of Caffe, the framework of both papers, and of PyTorch; :class:`SGDWithL2`),
  on convolution and dense kernels only. Momentum amplifies it 10x, so it is 10x stronger than
  Keras' decoupled ``weight_decay=5e-4``. Momentum 0.9 is in both papers' text; the value 5e-4 is
  in TSN's solver files (``weight_decay: 0.0005``), neither paper's text states it. With that rule
  the published rates apply as they are: the paper's 1e-2 (from scratch and for fine-tuning alike,
  divided by 10 on a fixed schedule) and TSN's 1e-3 for fine-tuning the spatial stream.
  ``optimizer="adamw"`` is available: on tiny from-scratch problems it converges in fewer steps
  (the overfit test in tests/test_training.py memorises 20 flow stacks in ~12 AdamW steps at
  1e-3, against ~25 SGD steps), at the price of rates that do not transfer from the papers.
* **Learning-rate schedule: cosine decay per epoch** (``LearningRateScheduler``), from the given
  rate to 1 % of it over each phase. It is a pure function of the epoch number (stored in
  ``state.json``), so a resumed run gets exactly the rates an uninterrupted run would (``ReduceLROnPlateau`` keeps counters that a
  checkpoint does not save), and it needs no tuning of plateau patience for short runs.
* **Early stopping** on validation accuracy (``patience`` epochs without improvement), without
  restoring weights: ``best.keras`` already holds the best model.
* **Spatial fine-tuning in two phases**: (1) warm-up - backbone frozen, only the new head
  trains (a randomly initialised head would otherwise send large, noisy gradients into the
  pretrained layers); (2) fine-tuning - backbone unfrozen (all of it, or from a stage on) at a
  lower rate, BatchNorm layers kept frozen in inference mode (see :mod:`utils.models`). Epochs
  count on across phases, and the ``phase`` column of ``history.csv`` says which is which.
  Changing what is trainable needs a new ``compile``, and the optimizer's slots (momentum) are
  per trainable variable, so phase 2 starts with a **fresh optimizer** (the standard Keras
  recipe). To resume, the model is first put in the trainable state of the phase recorded in
  ``state.json`` and compiled for it, and only then are the weights and optimizer state of
  ``last.keras`` loaded into it: the optimizer variables match one to one, and a run resumed in
  phase 2 never repeats phase 1.

Seeds are fixed with ``keras.utils.set_random_seed``. :func:`configure` switches on mixed
precision (GPUs) and data-parallel training over several accelerators (``keras.distribution``;
JAX backend) - call it *before* building the model.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import inspect
import json
import math
import os
import shutil
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from utils import generators, memory, models, writers

HISTORY_FILE = "history.csv"
STATE_FILE = "state.json"
BEST_FILE = "best.keras"
LAST_FILE = "last.keras"
REFIT_DIR = "refit"          # <run>/refit/: the final fit on all training clips
OPTIMIZERS = ("sgd", "adamw")
MIN_LR_FRACTION = 0.01      # cosine decay ends at 1 % of the phase's learning rate

# Settings per dataset, used by the notebooks for every parameter left at None.
# demo: a CPU, minutes (input sizes from utils.demo_data.DEMO_SETTINGS); hmdb51 (and any other
# dataset, UCF101 included): a GPU. Budgets are counted the way each source counts them, and per
# training clip, since the sources trained on other numbers of clips than HMDB51 split 1 here
# (2,980 training clips once the validation carve-out of 590 is taken out; 3,570 in the refit):
#   Simonyan & Zisserman 2014, sec. 5 ("the paper"): SGD, momentum 0.9, batch 256 (one frame or
#     stack from each of 256 videos); rate 1e-2, divided by 10 on a fixed schedule: from scratch to
#     1e-3 after 50 K iterations, stop at 80 K (80 K x 256 = 20.5 M flow stacks); fine-tuning to
#     1e-3 after 14 K, stop at 20 K (5.1 M frames); dropout 0.9 (the temporal net; Table 1). One
#     schedule is given for both datasets.
#   Wang et al. 2016, TSN, sec. 4.1: batch 256 *videos*, each of 3 segments (one frame, or one
#     stack of 5 flows, per segment: a video's 3 scores are averaged before the loss); spatial rate
#     1e-3, /10 every 2 K iterations, stop at 4.5 K: 4.5 K x 256 videos x 3 segments = 3.46 M
#     frames, over UCF101's 9,537 training clips (split 1) = 362 frames per clip. Its HMDB51 solver
#     files (github.com/yjxiong/temporal-segment-networks, models/hmdb51/, last changed in c0249f1):
#     RGB 2,500 iterations at 1e-3 (/10 every 1 K), flow 7,000 at 5e-3 (/10 at 4 K and 6 K), 32
#     videos x 3 segments per GPU on 4 GPUs, iter_size 1: 2,500 x 128 x 3 = 0.96 M frames over
#     3,570 clips = 269 per clip; weight_decay 5e-4; dropout 0.8 (RGB) and 0.7 (flow).
# What TSN does that these presets do not: partial BN (its first BatchNorm layer re-estimates its
# statistics and every other one is frozen: `frozen: false` on conv1's BN only; here the spatial
# stream freezes them all, see utils.models), and gradient clipping (Caffe's clip_gradients: the
# global L2 norm of the gradient cut to 40 for RGB, 20 for flow; here no clipping).
# Departures, everywhere: cosine decay per epoch instead of step decay (resumable, no plateau
# tuning, the same peak rate); BatchNorm instead of local response normalisation in CNN-M-2048, and
# after conv2 as well, where the paper's temporal net dropped the second normalisation layer (to
# save memory) and kept only the first.
TSN_CROP_SCALES = (1.0, 0.875, 0.75, 0.66)   # = utils.generators.TRAIN_CROP_SCALES (TSN's scale jitter)
SPATIAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "demo": dict(image_size=42, batch_size=16, frames_per_video=4, warmup_epochs=2, finetune_epochs=2,
                 head_learning_rate=0.01, finetune_learning_rate=0.001, unfreeze_from="conv1",
                 dropout=0.5, optimizer="sgd", patience=None, crop_scales=TSN_CROP_SCALES,
                 label_smoothing=0.2, refit=False),    # see SPATIAL_FROM_SCRATCH; refit: see DEMO_REFIT
    "hmdb51": dict(
        image_size=224,                  # the paper and TSN
        batch_size=64,                   # TSN: 256 videos; 64 frames fit a 24 GB GPU at 224 with frozen BN
        frames_per_video=16,             # 16 random frames of each video per epoch
        warmup_epochs=1,                 # the new head alone first (Keras' fine-tuning guide); 16 x 2,980 = 48 K frames
        finetune_epochs=23,              # 23 x 16 = 368 frames per clip = TSN's 362 (3.46 M / 9,537); 1.10 M in all
        head_learning_rate=0.01,         # the paper's initial rate, for the random head only
        finetune_learning_rate=0.00025,  # TSN's 1e-3 at batch 256, scaled to batch 64 (Goyal et al. 2017)
        unfreeze_from="conv1",           # the whole backbone (TSN fine-tunes every layer)
        dropout=0.8,                     # TSN's spatial dropout (the paper's best fine-tuning: 0.9)
        optimizer="sgd",                 # momentum 0.9 (both papers), L2 5e-4 in the gradient (TSN's solver files)
        patience=None,                   # a fixed schedule, as both papers; best.keras keeps the best epoch
        crop_scales=TSN_CROP_SCALES,     # TSN's corner cropping and scale jitter
        label_smoothing=0.0,             # none in either paper
        refit=True),                     # the paper and TSN train on all training clips: a final fit on 70 per class
}
# Changes to SPATIAL_DEFAULTS for a backbone trained from scratch (weights=None): no warm-up
# (nothing pretrained to protect) and the rate of a from-scratch run. On the demo: AdamW, which
# gets a from-scratch ResNet-50 going in the hundred steps a CPU affords (SGD at 5e-2 to 2e-1
# diverged there, at 1e-2 or 1e-3 it stayed near chance), more frames per epoch, and a third epoch
# in which the falling rate lets the scores of the three motions of a colour settle to equal (after
# two, one motion kept up to 0.56 of a colour's mass, and average fusion reached 83-86 % against
# 100 % after three). Label smoothing 0.2 (both demo presets) keeps a stream from running away to
# one class among those it cannot tell apart: the spatial stream cannot know the motion.
SPATIAL_FROM_SCRATCH: dict[str, dict[str, Any]] = {
    "demo": dict(warmup_epochs=0, frames_per_video=8, finetune_epochs=3, finetune_learning_rate=0.001,
                 optimizer="adamw"),
    "hmdb51": dict(warmup_epochs=0, finetune_learning_rate=0.01),   # the paper's from-scratch rate
}
TEMPORAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "demo": dict(image_size=42, stack_length=10, batch_size=16, stacks_per_video=4, epochs=30,
                 learning_rate=0.01, arch="cnn_m_2048", width=0.25, dropout=0.5, optimizer="sgd",
                 patience=None, crop_scales=TSN_CROP_SCALES, label_smoothing=0.0, refit=False),
    "hmdb51": dict(
        image_size=224, stack_length=10,  # the paper: 224 x 224 x 2L, L = 10
        batch_size=256,                   # the paper
        stacks_per_video=86,              # 86 x 2,980 = 256 K stacks per epoch = 1 K of the paper's iterations
        epochs=80,                        # 80 x 256 K = 20.5 M stacks = the paper's 80 K x 256, from scratch
        learning_rate=0.01,               # the paper's initial rate (cosine to 1e-4, the paper's last rate)
        arch="cnn_m_2048", width=1.0,     # the paper's network, trained from scratch
        dropout=0.9,                      # the paper
        optimizer="sgd",                  # momentum 0.9 (the paper), L2 5e-4 in the gradient (TSN's solver files)
        patience=None,                    # the paper's fixed schedule; best.keras keeps the best epoch
        crop_scales=TSN_CROP_SCALES,      # TSN's (the paper: random 224 crops, no scale jitter)
        label_smoothing=0.0,              # none in the paper
        refit=True),                      # the paper trains on all training clips: then a final fit on 70 per class
}
"""The temporal budget is the paper's in total: 20.5 M stacks, i.e. 6,880 per clip of the 2,980 (the
paper gives one schedule for both datasets; over UCF101's 9,537 clips it is 2,147 per clip). On
HMDB51 alone (no UCF101 data) the paper's temporal net reached 46.6 % on split 1 (Table 2); its 54.6
(Table 4, mean of 3 splits) is a net trained multi-task on UCF101 + HMDB51. The budget needs 410 M
flow JPEG decodes: the GPU hours are 5,700 / (stacks per second of the GPU and the input pipeline
together, measured by ``python -m utils.bench --device``), e.g. 2.8 h at 2,000 stacks/s, plus the
final fit on 3,570 clips for the chosen number of epochs (at most 1.2 x that again)."""
DEMO_REFIT = ("The demo trains each stream once, on its training clips, and tests that model: a final fit "
              "trains it again for its best epoch count on 90 clips instead of 72 (in one demo run, 1.3 x the "
              "spatial stream's training time and 0.66 x the temporal one's), which would take README command 1 "
              "(5 min 19 s to 5 min 43 s) past its 6 minutes on 2 CPU cores")
"""Why the demo presets have ``refit=False`` (notebooks 02 and 03 print it)."""


def default_settings(stream: str, dataset_name: str, pretrained: bool = True, **given) -> dict[str, Any]:
    """The preset of ``stream`` (``"spatial"``/``"temporal"``) for a dataset, overridden by ``given``.

    ``"demo"`` gets the CPU preset, anything else the HMDB51 (GPU) one. ``pretrained=False``
    (spatial stream with ``weights=None``) applies :data:`SPATIAL_FROM_SCRATCH`. Values of
    ``given`` that are ``None`` do not override.
    """
    presets = {"spatial": SPATIAL_DEFAULTS, "temporal": TEMPORAL_DEFAULTS}
    if stream not in presets:
        raise ValueError(f"stream must be 'spatial' or 'temporal', got {stream!r}")
    preset = "demo" if dataset_name == "demo" else "hmdb51"
    settings = dict(presets[stream][preset])
    if stream == "spatial" and not pretrained:
        settings.update(SPATIAL_FROM_SCRATCH[preset])
    if dataset_name == "demo":
        from utils.demo_data import DEMO_SETTINGS
        settings["image_size"] = DEMO_SETTINGS["image_size"]
        settings["crop_scales"] = tuple(DEMO_SETTINGS["crop_scales"])
    unknown = sorted(set(given) - set(settings))
    if unknown:
        raise KeyError(f"unknown {stream} setting(s) {unknown}; known: {sorted(settings)}")
    settings.update({k: v for k, v in given.items() if v is not None})
    return settings


# ----------------------------------------------------------------------------------------
# Global set-up: seeds, mixed precision, several devices
# ----------------------------------------------------------------------------------------
def configure(seed: int | None = 0, mixed_precision: bool = False, data_parallel: bool = False,
              devices: list[str] | None = None) -> dict[str, Any]:
    """Seeds, precision policy and distribution for the models built *after* this call.

    Args:
        seed: passed to ``keras.utils.set_random_seed`` (Python, NumPy and backend RNGs).
        mixed_precision: ``True`` sets the ``"mixed_float16"`` policy (float16 compute, float32
            weights; ~2x faster on GPUs with tensor cores; on CPUs it is slower). The softmax
            layers of :mod:`utils.models` stay float32, and ``compile`` wraps the optimizer in a
            ``LossScaleOptimizer``. ``False`` restores ``"float32"``.
        data_parallel: ``True`` replicates the model on every device and splits each batch between
            them (``keras.distribution.DataParallel``). Supported on the **JAX backend** (Keras'
            TensorFlow implementation is a prototype; on TensorFlow use a
            TensorFlow MirroredStrategy scope in your own script instead). Every batch
            must split evenly over the devices: use a batch size that is a multiple of their
            number. The training functions make the last batch full too: NumPy ``(x, y)`` tuples
            are cut to whole batches, and this package's PyDatasets are switched by
            :func:`utils.generators.even_batches` (training drops its last smaller batch,
            validation pads it with zero-weighted repeats). Another PyDataset's last, smaller
            batch raises an ``IndivisibleError``.
        devices: the devices for ``data_parallel`` (default: ``keras.distribution.list_devices()``).

    Returns a dict saying what was set.
    """
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    info: dict[str, Any] = {"seed": seed, "policy": keras.mixed_precision.global_policy().name,
                            "backend": keras.backend.backend(), "distribution": None}
    if data_parallel:
        if keras.backend.backend() != "jax":
            raise ValueError(f"data_parallel=True needs the JAX backend (KERAS_BACKEND=jax); this is "
                             f"{keras.backend.backend()!r}")
        devices = list(devices or keras.distribution.list_devices())
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        info["distribution"] = {"type": "DataParallel", "devices": devices}
    else:
        keras.distribution.set_distribution(None)
    return info


# ----------------------------------------------------------------------------------------
# Optimizers: the paper's weight decay
# ----------------------------------------------------------------------------------------
def decays(variable) -> bool:
    """Whether weight decay applies to a variable: convolution and dense kernels only.

    Biases and BatchNorm scales/offsets are left alone (decaying a BatchNorm scale only changes
    the effective learning rate of the layer before it; common practice since Goyal et al. 2017).
    """
    return str(variable.name).endswith("kernel")


@keras.saving.register_keras_serializable(package="two_stream")
class SGDWithL2(keras.optimizers.SGD):
    """SGD with momentum whose weight decay is an L2 term *in the gradient*: the rule of Caffe
    (the paper's framework) and of PyTorch's ``SGD(weight_decay=...)``.

    Per step, for each kernel ``w``: ``g <- g + l2 * w``; ``m <- momentum * m - lr * g``;
    ``w <- w + m``. Momentum then amplifies the decay by ``1 / (1 - momentum)`` (10x at 0.9).
    Keras' own ``SGD(weight_decay=...)`` is *decoupled* (``w -= lr * wd * w`` outside the
    momentum): with the paper's 5e-4 it decays 10x less than the paper did.
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2=5e-4, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.l2 = float(l2)

    def apply(self, grads, trainable_variables=None):
        if self.l2 and (trainable_variables is not None or self.built):
            variables = self._trainable_variables if trainable_variables is None else list(trainable_variables)
            grads = [g if g is None or not decays(v) else keras.ops.add(g, keras.ops.multiply(self.l2, v))
                     for g, v in zip(grads, variables)]
        return super().apply(grads, trainable_variables)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def make_optimizer(name: str = "sgd", learning_rate: float = 0.01, weight_decay: float = 5e-4):
    """The optimizer of a stream; weight decay acts on kernels only (:func:`decays`).

    ``"sgd"``: :class:`SGDWithL2`, momentum 0.9, ``weight_decay`` as the paper's L2 coefficient
    (5e-4). ``"adamw"``: Keras' AdamW, whose ``weight_decay`` is decoupled (Loshchilov & Hutter 2019).
    """
    if name == "sgd":
        return SGDWithL2(learning_rate, momentum=0.9, l2=weight_decay or 0.0)
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        return optimizer
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


@keras.saving.register_keras_serializable(package="two_stream")
class SparseCrossentropyWithSmoothing(keras.losses.Loss):
    """Cross-entropy against integer labels smoothed towards uniform (Szegedy et al. 2016): the target
    is ``1 - s + s/K`` for the labelled class and ``s/K`` for each of the others.

    A network can then not drive any class's probability to zero, so on inputs that cannot tell some
    classes apart it cannot run away to one of them (Keras' ``SparseCategoricalCrossentropy`` has no
    smoothing; ``CategoricalCrossentropy(label_smoothing=...)`` needs one-hot labels).
    """

    def __init__(self, label_smoothing: float = 0.1, name: str = "smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        n_classes = keras.ops.shape(y_pred)[-1]
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        target = keras.ops.one_hot(labels, n_classes, dtype=y_pred.dtype)
        target = target * (1.0 - self.label_smoothing) + self.label_smoothing / keras.ops.cast(n_classes, y_pred.dtype)
        return keras.losses.categorical_crossentropy(target, y_pred)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def compile_model(model, optimizer: str = "sgd", learning_rate: float = 0.01, weight_decay: float = 5e-4,
                  jit_compile: bool | str = "auto", run_eagerly: bool = False, label_smoothing: float = 0.0):
    """Compile with (optionally label-smoothed) cross-entropy, top-1 ``accuracy`` and ``top5_accuracy``."""
    num_classes = int(model.output_shape[-1])
    k = min(5, num_classes)
    loss = (SparseCrossentropyWithSmoothing(label_smoothing) if label_smoothing
            else keras.losses.SparseCategoricalCrossentropy())
    model.compile(optimizer=make_optimizer(optimizer, learning_rate, weight_decay),
                  loss=loss,
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                           keras.metrics.SparseTopKCategoricalAccuracy(k=k, name=f"top{k}_accuracy")],
                  jit_compile=jit_compile, run_eagerly=run_eagerly)
    return model


# ----------------------------------------------------------------------------------------
# Learning-rate schedules that survive resuming and extending
# ----------------------------------------------------------------------------------------
def cosine_schedule(learning_rate: float, first_epoch: int, n_epochs: int,
                    min_fraction: float = MIN_LR_FRACTION):
    """``epoch -> rate``: cosine decay from ``learning_rate`` at ``first_epoch`` towards
    ``min_fraction * learning_rate`` at ``first_epoch + n_epochs``."""
    return segment_schedule([{"first_epoch": first_epoch, "end_epoch": first_epoch + n_epochs,
                              "rate": learning_rate, "floor": learning_rate * min_fraction}])


def segment_schedule(segments: list[dict]):
    """``epoch -> rate`` of a list of cosine segments (each from ``rate`` at ``first_epoch`` down to
    ``floor`` at ``end_epoch``); an epoch uses the last segment that starts at or before it."""
    def schedule(epoch, current_lr=None):
        segment = [s for s in segments if s["first_epoch"] <= epoch][-1]
        span = max(segment["end_epoch"] - segment["first_epoch"], 1)
        progress = min(max((epoch - segment["first_epoch"]) / span, 0.0), 1.0)
        rate, floor = segment["rate"], segment["floor"]
        return float(floor + (rate - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return schedule


def _phase_segments(state: dict | None, phase: str, learning_rate: float, first_epoch: int, end_epoch: int,
                    done: int, out_dir: Path, warm_restart: bool = False) -> list[dict]:
    """The schedule segments of ``phase`` for a run ending at ``end_epoch``.

    A new phase (or one none of whose epochs has run yet) gets one cosine from ``learning_rate`` to
    1 % of it. A run whose planned end changes after epochs of the phase ran is refused (the epochs
    added to a finished cosine would all train at its floor rate, and a changed end would change the
    rates of the epochs still to run), unless ``warm_restart``: then a new segment starts at epoch
    ``done`` from ``learning_rate`` again and decays to the floor at the new end, marked
    ``"warm_restart": true`` in ``state.json``.
    """
    new = {"phase": phase, "first_epoch": first_epoch, "end_epoch": end_epoch, "rate": learning_rate,
           "floor": learning_rate * MIN_LR_FRACTION}
    old = [s for s in (state or {}).get("schedule", []) if s["phase"] == phase]
    if not old or done <= old[0]["first_epoch"]:
        return [new]
    if old[-1]["end_epoch"] == end_epoch:
        return old
    planned, floor = old[-1]["end_epoch"], old[-1]["floor"]
    if not warm_restart:
        if done >= planned:
            what = (f"epochs {planned + 1}-{end_epoch} would all train at its floor rate {floor:.3g}, where its "
                    f"cosine ended")
        else:
            what = "the epochs still to run would get other rates than the ones it was planned with"
        raise ValueError(
            f"{out_dir} holds a run whose {phase} phase was planned to end after epoch {planned} (a cosine "
            f"down to {floor:.3g}); {done} epoch(s) are done and this call asks for {end_epoch}: {what}. "
            f"For a longer run, start one: resume=False (`-p resume=False` for `python -m utils.run`; this "
            f"folder's files are replaced) or another folder. Or go on with this one from epoch {done + 1} "
            f"with a warm restart, a new cosine from {learning_rate:.3g} over epochs {done + 1}-{end_epoch}, "
            f"recorded in its state.json: warm_restart=True (`-p warm_restart=True`).")
    print(f"{out_dir}: warm restart of the {phase} phase at epoch {done + 1}: a new cosine from "
          f"{learning_rate:.3g} down to {learning_rate * MIN_LR_FRACTION:.3g} at epoch {end_epoch} (the plan "
          f"ended at epoch {planned})")
    return old + [{**new, "first_epoch": done, "warm_restart": True}]


# ----------------------------------------------------------------------------------------
# Checkpoint files: written under a temporary name, verified, then renamed
# ----------------------------------------------------------------------------------------
def restore_checkpoint(model, path) -> None:
    """Load weights *and optimizer state* of a ``.keras`` file into a compiled ``model``.

    The model must be compiled and have the same trainable variables as the saved one (same
    architecture, same frozen layers), so that the optimizer variables match one to one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path} to resume from")
    if model.optimizer is None:
        raise ValueError("restore_checkpoint needs a compiled model (its optimizer receives the saved state)")
    check_keras_file(path)
    build_optimizer(model)
    try:
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"cannot resume from {path}: it does not match this model ({error}). Build the same "
                         f"model as the saved run, or start over with resume=False.") from error


def load_weights_only(model, path) -> None:
    """Copy the weights (not the optimizer state) of a ``.keras`` file into ``model`` (same architecture)."""
    check_keras_file(path)
    try:
        saved = keras.saving.load_model(path, compile=False)
        model.set_weights(saved.get_weights())
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"cannot load the weights of {path} into {model.name!r} ({error}); "
                         f"start over with resume=False") from error


def check_keras_file(path) -> None:
    """Raise ``ValueError`` naming ``path`` unless it is a complete ``.keras`` archive (zip, CRCs right)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path} is not a complete Keras checkpoint ({error}); it may have been cut "
                         f"short by a crash or a full disk") from None
    missing = {"config.json", "model.weights.h5"} - names
    if broken or missing:
        what = f"damaged member {broken}" if broken else f"no {', '.join(sorted(missing))}"
        raise ValueError(f"{path} is not a complete Keras checkpoint ({what}); it may have been cut short "
                         f"by a crash or a full disk")


def _durable_replace(tmp: Path, final: Path) -> None:
    """``os.replace`` after the data reached the disk, so a crash leaves the old file or the new one."""
    with open(tmp, "rb") as file:
        os.fsync(file.fileno())
    os.replace(tmp, final)
    if hasattr(os, "O_DIRECTORY"):
        folder = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    _durable_replace(tmp, path)


def _tmp_name(name: str) -> str:
    return name.replace(".keras", ".tmp.keras")


def _temporary_files(out_dir: Path) -> list[Path]:
    names = [_tmp_name(BEST_FILE), _tmp_name(LAST_FILE), f".{STATE_FILE}.tmp", f".{HISTORY_FILE}.tmp"]
    return [out_dir / name for name in names if (out_dir / name).exists()]


def read_state(out_dir) -> dict[str, Any] | None:
    """The ``state.json`` of a training folder, or ``None`` if training never finished an epoch."""
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); delete it to start the run over "
                         f"(or -p resume=False)") from error
    done = state.get("epochs_done") if isinstance(state, dict) else None
    if not isinstance(done, int) or isinstance(done, bool) or done < 0:
        raise ValueError(f"{path}: not the state of a training run (no whole number epochs_done in it: a damaged "
                         f"file?); delete it to start the run over (or -p resume=False)")
    return state


def read_history(out_dir) -> pd.DataFrame:
    """``history.csv`` of a training folder (empty DataFrame if there is none)."""
    path = Path(out_dir) / HISTORY_FILE
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame()
    try:
        history = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as error:      # pandas' ParserError is a ValueError
        history, why = None, f"{type(error).__name__}: {str(error).strip()}"
    else:
        why = "no epoch column"
    if history is None or "epoch" not in history:
        raise ValueError(f"{path}: not a training history ({why}: a damaged file?); delete it and the run's "
                         f"state.json to start the run over (or -p resume=False)")
    return history


def _trim_history(out_dir: Path, epochs_done: int) -> pd.DataFrame:
    """Keep one row per epoch that ``last.keras`` holds (a crash can leave a row, or half of one, after it)."""
    history = read_history(out_dir)
    if not len(history):
        return history
    epoch = pd.to_numeric(history["epoch"], errors="coerce")
    keep = history[(epoch < epochs_done) & history.notna().all(axis=1)]
    keep = keep.drop_duplicates(subset="epoch", keep="last")
    if len(keep) != len(history):
        tmp = out_dir / f".{HISTORY_FILE}.tmp"
        keep.to_csv(tmp, index=False)
        _durable_replace(tmp, out_dir / HISTORY_FILE)
    return keep


# ----------------------------------------------------------------------------------------
# The settings that shape a run (stored in state.json; a resume with other settings is refused)
# ----------------------------------------------------------------------------------------
def _fingerprint(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _model_summary(model) -> dict:
    return {"name": model.name, "input_shape": list(model.input_shape[1:]),
            "classes": int(model.output_shape[-1]), "parameters": int(model.count_params()),
            "dropout": [float(layer.rate) for layer in models._all_layers(model)
                        if isinstance(layer, keras.layers.Dropout)]}


def _data_summary(data) -> dict | None:
    """What identifies a training or validation set: its videos and labels, and how it samples them."""
    if data is None:
        return None
    if isinstance(data, tuple):
        x, y = (np.asarray(a) for a in data)
        return {"arrays": list(x.shape), "fingerprint": _fingerprint(x.tobytes().hex() + y.tobytes().hex())}
    summary = {"type": type(data).__name__}
    paths = getattr(data, "frames_paths", None)
    if paths is not None:
        videos = [f"{Path(p).parent.name}/{Path(p).name}:{int(label)}" for p, label in zip(paths, data.labels)]
        summary.update(videos=len(videos), fingerprint=_fingerprint("\n".join(sorted(videos))))
    for name in ("batch_size", "image_size", "items_per_video", "stack_length", "seed", "crop_scales",
                 "crop_positions"):
        if hasattr(data, name):
            value = getattr(data, name)
            summary[name] = list(value) if isinstance(value, tuple) else value
    return summary


def run_settings(model, train_ds, val_ds, **hyper) -> dict:
    """The settings that make a run what it is: model, data, precision policy and hyper-parameters
    (batch size and steps per epoch included; not the number of epochs)."""
    settings = {"model": _model_summary(model), "train_data": _data_summary(train_ds),
                "val_data": _data_summary(val_ds), "policy": keras.mixed_precision.global_policy().name,
                **hyper}
    return json.loads(json.dumps(settings, default=str))      # the JSON form, as stored


def _flatten(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_same_run(out_dir: Path, state: dict, settings: dict) -> None:
    """Refuse to resume a run whose stored settings differ from these (naming what differs)."""
    stored = state.get("settings")
    if stored is None:
        warnings.warn(f"{out_dir / STATE_FILE} records no settings (made by an older version); resuming "
                      f"without checking them", stacklevel=3)
        return
    old, new = _flatten(stored), _flatten(settings)
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if changed:
        shown = "; ".join(f"{key}: {old.get(key)!r} there, {new.get(key)!r} now" for key in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        raise ValueError(
            f"{out_dir} holds a run made with other settings ({shown}{more}). Resuming it would mix two "
            f"experiments. Start over in that folder with resume=False (`-p resume=False` for "
            f"`python -m utils.run`; its checkpoints are replaced), or move the folder away to keep it.")


# ----------------------------------------------------------------------------------------
# Callbacks
# ----------------------------------------------------------------------------------------
class _EpochInfo(keras.callbacks.Callback):
    """Adds ``phase`` and ``epoch_seconds`` to the logs (before CSVLogger writes them)."""

    def __init__(self, phase: str):
        super().__init__()
        self.phase = phase
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.perf_counter() - self._started, 2)
            logs["phase"] = self.phase


class EpochLog(keras.callbacks.Callback):
    """Prints one short line per epoch, e.g.
    ``epoch  3/30  lr 9.8e-03  loss 1.042  acc 0.531  val_loss 0.987  val_acc 0.556  4.1 s``.

    ``fit`` itself runs with ``verbose=0``: Keras' own log is a header line and a progress bar per
    epoch, which a saved notebook keeps as two lines (or hundreds of bar updates). The numbers are
    the epoch's logs (``learning_rate`` from ``LearningRateScheduler``, ``epoch_seconds`` from
    ``_EpochInfo`` when present), the same ones ``CSVLogger`` writes to ``history.csv``.
    """

    COLUMNS = (("learning_rate", "lr", ".1e"), ("loss", "loss", ".3f"), ("accuracy", "acc", ".3f"),
               ("val_loss", "val_loss", ".3f"), ("val_accuracy", "val_acc", ".3f"))

    def __init__(self, print_fn=print):
        super().__init__()
        self.print_fn = print_fn
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        total = (self.params or {}).get("epochs")
        width = len(str(total)) if total else 1
        parts = [f"epoch {epoch + 1:>{width}}" + (f"/{total}" if total else "")]
        parts += [f"{name} {float(logs[key]):{spec}}" for key, name, spec in self.COLUMNS if key in logs]
        seconds = logs.get("epoch_seconds", time.perf_counter() - self._started)
        parts.append(f"{float(seconds):.1f} s")
        self.print_fn("  ".join(parts))


class _ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` that starts from a saved counter and best value (``state.json``) when resuming."""

    def __init__(self, *args, resume_from: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_from = resume_from

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume_from:
            self.wait = int(self.resume_from["wait"])
            self.best = self.resume_from["best"]


class _Commit(keras.callbacks.Callback):
    """After the checkpoint and the CSV row: verify and rename *this epoch's* ``last.keras`` into
    place, make it ``best.keras`` too if the epoch is the best so far, then write state.json.

    Runs after ``CSVLogger`` and before Keras' own ``History``/progress bar (appended by ``fit``).
    At the start of each epoch it deletes temporary checkpoints, so a file it renames at the end
    was written in that epoch, complete (``check_keras_file``), never a leftover of a crash.
    A best epoch's ``best.keras`` is a hard link to its ``last.keras`` (a copy where links are not
    supported): the model is serialised once per epoch, not twice (2.5 s for the demo's ResNet-50
    with its optimizer state, 284 MB). Later epochs replace ``last.keras`` by renaming a new file
    onto the name, so the best one keeps its content.
    """

    def __init__(self, out_dir: Path, phase: str, monitor: str, settings: dict, schedule: list[dict],
                 early_stopping: _ResumableEarlyStopping | None, validated: bool = True):
        super().__init__()
        self.out_dir, self.phase, self.monitor, self.validated = out_dir, phase, monitor, validated
        self.settings, self.schedule, self.early_stopping = settings, schedule, early_stopping

    def on_epoch_begin(self, epoch, logs=None):
        for name in (BEST_FILE, LAST_FILE):
            (self.out_dir / _tmp_name(name)).unlink(missing_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        state = read_state(self.out_dir) or {}
        value = (logs or {}).get(self.monitor)
        best = state.get("best")
        improved = (self.validated and value is not None and not math.isnan(float(value))
                    and (best is None or float(value) > best))
        last_tmp, best_tmp = self.out_dir / _tmp_name(LAST_FILE), self.out_dir / _tmp_name(BEST_FILE)
        if last_tmp.is_file():
            try:
                check_keras_file(last_tmp)
            except ValueError as error:
                last_tmp.unlink(missing_ok=True)
                raise RuntimeError(f"epoch {epoch + 1}: {error}. {self.out_dir / LAST_FILE} was left as it "
                                   f"was; free some disk space and run again to resume") from None
            if improved:
                _link_or_copy(last_tmp, best_tmp)
                _durable_replace(best_tmp, self.out_dir / BEST_FILE)
            _durable_replace(last_tmp, self.out_dir / LAST_FILE)
        if improved:
            best = float(value)
        es = self.early_stopping
        state.update(epochs_done=int(epoch) + 1, phase=self.phase, best=best, monitor=self.monitor,
                     stopped_early=bool(getattr(self.model, "stop_training", False)),
                     backend=keras.backend.backend(), settings=self.settings, schedule=self.schedule,
                     seed_states=_seed_states(self.model),
                     early_stopping=None if es is None else {
                         "phase": self.phase, "wait": int(es.wait),
                         "best": None if es.best is None else float(es.best)})
        _write_atomically(self.out_dir / STATE_FILE, json.dumps(state, indent=1))
        if logs is not None:
            logs.pop("phase", None)       # written to history.csv; the progress bar only averages numbers


def _seed_states(model) -> list[list[int]]:
    """The states of the model's random seed generators (dropout's), in the model's variable order.

    They are not part of a ``.keras`` file; ``state.json`` keeps them so that a resumed run draws the
    same dropout masks as an uninterrupted one.
    """
    return [[int(x) for x in np.asarray(keras.ops.convert_to_numpy(v)).ravel()] for v in _seed_variables(model)]


def _restore_seed_states(model, states: list[list[int]] | None) -> None:
    """Put saved :func:`_seed_states` back into ``model`` (nothing to do for ``None``, from older runs)."""
    variables = _seed_variables(model)
    if states is None:
        return
    if len(states) != len(variables):
        raise ValueError(f"the run saved {len(states)} random seed state(s), this model has {len(variables)}")
    for variable, value in zip(variables, states):
        variable.assign(np.asarray(value, dtype=keras.backend.standardize_dtype(variable.dtype)))


def _seed_variables(model) -> list:
    return [v for v in model.non_trainable_variables if v.name == "seed_generator_state"]


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes a hard link to ``source``, or a copy of it where the file system has no links."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _callbacks(out_dir: Path, phase: str, state: dict | None, settings: dict, schedule: list[dict],
               patience: int | None, monitor: str = "val_accuracy", validated: bool = True) -> list:
    early_stopping = None
    callbacks = [_EpochInfo(phase), keras.callbacks.LearningRateScheduler(segment_schedule(schedule))]
    if patience is not None:
        saved = (state or {}).get("early_stopping")
        early_stopping = _ResumableEarlyStopping(
            monitor=monitor, mode="max", patience=int(patience), restore_best_weights=False,
            resume_from=saved if saved and saved.get("phase") == phase else None)
        callbacks.append(early_stopping)
    callbacks += [
        keras.callbacks.ModelCheckpoint(out_dir / _tmp_name(LAST_FILE), save_best_only=False),
        keras.callbacks.CSVLogger(str(out_dir / HISTORY_FILE), append=True),
        _Commit(out_dir, phase, monitor, settings, schedule, early_stopping, validated=validated),
    ]
    return callbacks


def _whole_batches(arrays: tuple, batch_size: int | None) -> tuple:
    """Under a distribution (DataParallel), cut ``(x, y)`` to whole batches: each batch must split evenly."""
    x, y = arrays
    if keras.distribution.distribution() is None or not batch_size or len(x) < batch_size:
        return x, y
    keep = len(x) // batch_size * batch_size
    return x[:keep], y[:keep]


def build_optimizer(model) -> None:
    """Create the compiled optimizer's variables (slots) for the model's trainable weights now.

    Keras on TensorFlow otherwise creates them inside the first trace of its train function, and
    TensorFlow then traces that function twice (once creating variables, once without). For
    the demo's ResNet-50 (batch 16, 42 px, AdamW) the first ``train_on_batch`` took 41 s that way
    and 17 s with the optimizer built first, on 2 CPU cores; later steps are unchanged.
    """
    optimizer = model.optimizer
    if optimizer is None or optimizer.built:
        return
    scope = (model.distribute_strategy.scope() if keras.backend.backend() == "tensorflow"
             else contextlib.nullcontext())
    with scope:
        optimizer.build(model.trainable_variables)


def _fit(model, train_ds, val_ds, *, initial_epoch: int, epochs: int, callbacks, batch_size: int | None,
         steps_per_epoch: int | None, verbose):
    """``model.fit`` on PyDatasets (or ``(x, y)`` arrays), the generators moved to ``initial_epoch``."""
    if hasattr(train_ds, "set_epoch"):
        train_ds.set_epoch(initial_epoch)      # the same draws as an uninterrupted run (utils.generators)
    if keras.distribution.distribution() is not None:   # DataParallel: every batch must split evenly
        generators.even_batches(train_ds, val_ds)
    build_optimizer(model)
    memory.check_training_fits(model, train_ds, batch_size)   # before the first step, not an OOM kill in it
    if isinstance(train_ds, tuple):
        x, y = _whole_batches(train_ds, batch_size)
        val_ds = _whole_batches(val_ds, batch_size) if isinstance(val_ds, tuple) else val_ds
        kwargs = dict(x=x, y=y, batch_size=batch_size, shuffle=True)
    else:
        kwargs = dict(x=train_ds, shuffle=False)   # the generators shuffle per epoch themselves
    if verbose:      # one short line per epoch (EpochLog) instead of Keras' header and bar
        callbacks = [*callbacks, EpochLog()]
    return model.fit(**kwargs, validation_data=val_ds, initial_epoch=initial_epoch, epochs=epochs,
                     steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=0)


def _start(out_dir, resume: bool, settings: dict) -> tuple[Path, dict | None]:
    """Create the folder and remove temporary files of a crashed run; with ``resume=False`` forget a
    previous run (its files are overwritten); with ``resume=True`` check that it is the same run.
    A run that starts from its first epoch removes the folder's ``refit/``: the final fit of another run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for tmp in _temporary_files(out_dir):
        print(f"removing {tmp}: an unfinished write of an interrupted run")
        tmp.unlink()
    state = read_state(out_dir) if resume else None
    if state is not None:
        if not (out_dir / LAST_FILE).is_file():
            raise FileNotFoundError(f"{out_dir / STATE_FILE} says {state['epochs_done']} epoch(s) are done "
                                    f"but {out_dir / LAST_FILE} is missing; pass resume=False to start over")
        _check_same_run(out_dir, state, settings)
        _trim_history(out_dir, state["epochs_done"])
        return out_dir, state
    for name in (STATE_FILE, HISTORY_FILE):   # resume=False, or rows without a checkpoint behind them
        (out_dir / name).unlink(missing_ok=True)
    if (out_dir / REFIT_DIR).is_dir():
        print(f"removing {out_dir / REFIT_DIR}: the final fit of an earlier run in {out_dir}")
        shutil.rmtree(out_dir / REFIT_DIR)
    return out_dir, None


class DiskFull(OSError):
    """The disk of a training folder filled up; the message names the folder and the file being written."""


def _one_run(what: str):
    """Decorator of the training functions: one run per ``out_dir`` at a time (:mod:`utils.writers`; a
    second one is refused), and a full disk named, its temporary checkpoints removed at once."""
    def decorate(train):
        signature = inspect.signature(train)

        @functools.wraps(train)
        def guarded(*args, **kwargs):
            out_dir = Path(signature.bind(*args, **kwargs).arguments["out_dir"])
            with writers.one_writer(out_dir, what):
                try:
                    return train(*args, **kwargs)
                except OSError as error:
                    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    for tmp in _temporary_files(out_dir):
                        tmp.unlink(missing_ok=True)
                    raise DiskFull(f"{error.filename or out_dir}: {error.strerror} while training into {out_dir}; "
                                   f"free some space, then run again: training resumes after the last finished "
                                   f"epoch ({LAST_FILE})") from None
        return guarded
    return decorate


def _check_validation(val_ds, patience) -> None:
    if val_ds is None and patience is not None:
        raise ValueError("early stopping needs val_ds; a final fit without validation (see refit_epochs) "
                         "takes patience=None")


# ----------------------------------------------------------------------------------------
# Temporal stream: one phase, from scratch
# ----------------------------------------------------------------------------------------
@_one_run("training run of the temporal stream")
def train_temporal(model, train_ds, val_ds, out_dir, epochs: int, learning_rate: float = 0.01, *,
                   optimizer: str = "sgd", weight_decay: float = 5e-4, patience: int | None = 10,
                   resume: bool = True, warm_restart: bool = False, seed: int | None = 0,
                   batch_size: int | None = None, steps_per_epoch: int | None = None,
                   jit_compile: bool | str = "auto", run_eagerly: bool = False, label_smoothing: float = 0.0,
                   schedule: list[dict] | None = None, run_info: dict | None = None, verbose=2) -> pd.DataFrame:
    """Train the temporal stream for ``epochs`` epochs in total (resuming a previous run in ``out_dir``).

    Args:
        model: from :func:`utils.models.build_temporal_model` (compiled here).
        train_ds, val_ds: ``keras.utils.PyDataset`` yielding ``(x, integer y)`` (e.g.
            :class:`utils.generators.FlowStacks`), or ``(x, y)`` NumPy tuples (then ``batch_size``).
        out_dir: where ``best.keras``, ``last.keras``, ``history.csv``, ``state.json`` go.
        epochs: total number of epochs (not "more epochs": a resumed run stops at the same total).
            Another total than the run was planned with is refused, unless ``warm_restart``.
        learning_rate: initial rate of the cosine schedule.
        optimizer, weight_decay: see :func:`make_optimizer`.
        patience: early-stopping patience in epochs (``None``: no early stopping).
        resume: continue from ``last.keras`` if ``out_dir`` holds a run made with the same settings
            (other settings are refused); ``False`` starts over.
        warm_restart: if ``epochs`` differs from the run's plan, go on from the epochs done with a new
            cosine from ``learning_rate`` (recorded in ``state.json``) instead of refusing.
        seed: ``keras.utils.set_random_seed`` before training (``None``: leave the RNGs alone).
        jit_compile, run_eagerly: passed to ``compile`` (XLA is used by default on GPUs).
        label_smoothing: see :class:`SparseCrossentropyWithSmoothing` (0: plain cross-entropy).
        schedule: learning-rate segments to follow instead of a cosine over ``epochs`` (those of a
            validated run, for its final fit: :func:`refit_temporal`); part of the settings.
        run_info: more settings to record and check on resume (e.g. the flow method).
        verbose: anything true prints one short line per epoch (:class:`EpochLog`); 0 prints nothing.

    Returns ``history.csv`` as a DataFrame (all epochs so far, resumed ones included).
    """
    _check_validation(val_ds, patience)
    settings = run_settings(model, train_ds, val_ds, optimizer=optimizer, learning_rate=learning_rate,
                            weight_decay=weight_decay, patience=patience, seed=seed,
                            label_smoothing=label_smoothing, batch_size=batch_size,
                            steps_per_epoch=steps_per_epoch, schedule=schedule, run_info=run_info or {})
    out_dir, state = _start(out_dir, resume, settings)
    done = 0 if state is None else int(state["epochs_done"])
    finished = state is not None and (state.get("stopped_early") or done >= epochs)
    if not finished:
        segments = (_given_segments(schedule, "train") if schedule is not None else
                    _phase_segments(state, "train", learning_rate, 0, epochs, done, out_dir, warm_restart))
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    compile_model(model, optimizer, learning_rate, weight_decay, jit_compile, run_eagerly, label_smoothing)
    if state is not None:
        restore_checkpoint(model, out_dir / LAST_FILE)
        _restore_seed_states(model, state.get("seed_states"))
        if finished:
            why = "early stopping ended it" if state.get("stopped_early") else "all epochs are done"
            print(f"{out_dir}: {why} after {done} epochs; model loaded from {LAST_FILE} "
                  f"(resume=False starts over)")
            return read_history(out_dir)
    if done:
        print(f"resuming {out_dir} at epoch {done + 1}/{epochs}")
    callbacks = _callbacks(out_dir, "train", state, settings, segments, patience, validated=val_ds is not None)
    _fit(model, train_ds, val_ds, initial_epoch=done, epochs=epochs, callbacks=callbacks,
         batch_size=batch_size, steps_per_epoch=steps_per_epoch, verbose=verbose)
    return read_history(out_dir)


def _given_segments(schedule: list[dict], phase: str) -> list[dict]:
    """The segments of ``phase`` in a given schedule (a validated run's)."""
    segments = [dict(s) for s in schedule if s["phase"] == phase]
    if not segments:
        raise ValueError(f"the given schedule has no {phase!r} segment: {schedule}")
    return segments


# ----------------------------------------------------------------------------------------
# Spatial stream: warm-up of the head, then fine-tuning of the backbone
# ----------------------------------------------------------------------------------------
@_one_run("training run of the spatial stream")
def train_spatial(model, train_ds, val_ds, out_dir, warmup_epochs: int = 2, finetune_epochs: int = 10,
                  head_learning_rate: float = 0.01, finetune_learning_rate: float = 0.001,
                  unfreeze_from: str = "conv1", *, train_batchnorm: bool = False, optimizer: str = "sgd",
                  weight_decay: float = 5e-4, patience: int | None = 5, resume: bool = True,
                  warm_restart: bool = False, seed: int | None = 0, batch_size: int | None = None,
                  steps_per_epoch: int | None = None, jit_compile: bool | str = "auto", run_eagerly: bool = False,
                  label_smoothing: float = 0.0, schedule: list[dict] | None = None, run_info: dict | None = None,
                  verbose=2) -> pd.DataFrame:
    """Fine-tune the spatial stream: ``warmup_epochs`` of the head alone, then ``finetune_epochs`` of more.

    Phase ``"warmup"`` (epochs ``0 .. warmup_epochs-1``): backbone frozen, head trained at
    ``head_learning_rate``. Phase ``"finetune"`` (the next ``finetune_epochs``): backbone unfrozen
    from stage ``unfreeze_from`` (``"conv1"``: all of it), a fresh optimizer at
    ``finetune_learning_rate``, BatchNorm kept in inference mode unless ``train_batchnorm``
    (set it when the backbone was not pretrained). Each phase has its own cosine schedule (or
    follows ``schedule``, see :func:`refit_spatial`); early stopping (``patience``) only acts in the
    fine-tuning phase. Resumes like :func:`train_temporal`, across the phase boundary; other
    ``finetune_epochs`` than planned are refused once fine-tuning has begun, unless
    ``warm_restart``. Other arguments as there (``run_info``: e.g. the backbone's initial weights).
    """
    _check_validation(val_ds, patience)
    if warmup_epochs < 0 or finetune_epochs < 0:
        raise ValueError("warmup_epochs and finetune_epochs must be >= 0")
    settings = run_settings(model, train_ds, val_ds, warmup_epochs=warmup_epochs,
                            head_learning_rate=head_learning_rate, finetune_learning_rate=finetune_learning_rate,
                            unfreeze_from=unfreeze_from, train_batchnorm=train_batchnorm, optimizer=optimizer,
                            weight_decay=weight_decay, patience=patience, seed=seed,
                            label_smoothing=label_smoothing, batch_size=batch_size,
                            steps_per_epoch=steps_per_epoch, schedule=schedule, run_info=run_info or {})
    out_dir, state = _start(out_dir, resume, settings)
    total = warmup_epochs + finetune_epochs
    done = 0 if state is None else int(state["epochs_done"])
    if state is not None and (done >= total or state.get("stopped_early")):
        if seed is not None:
            keras.utils.set_random_seed(int(seed))
        _restore_for_phase(model, out_dir, state, unfreeze_from, train_batchnorm, optimizer, weight_decay,
                           head_learning_rate, finetune_learning_rate, jit_compile, run_eagerly, label_smoothing)
        why = "early stopping ended it" if state.get("stopped_early") else "all epochs are done"
        print(f"{out_dir}: {why} after {done} epochs; model loaded from {LAST_FILE} (resume=False starts over)")
        return read_history(out_dir)
    segments = []        # the whole plan, both phases: checked (and refused if changed) before any work
    for phase, rate, first, end in (("warmup", head_learning_rate, 0, warmup_epochs),
                                    ("finetune", finetune_learning_rate, warmup_epochs, total)):
        if end > first:
            segments += (_given_segments(schedule, phase) if schedule is not None else
                         _phase_segments(state, phase, rate, first, end, done, out_dir, warm_restart))
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    fit = dict(batch_size=batch_size, steps_per_epoch=steps_per_epoch, verbose=verbose)

    # Phase 1: the head alone.
    warmed_up_here = done < warmup_epochs
    if warmed_up_here:
        models.freeze_backbone(model)
        compile_model(model, optimizer, head_learning_rate, weight_decay, jit_compile, run_eagerly, label_smoothing)
        if done:
            restore_checkpoint(model, out_dir / LAST_FILE)
            _restore_seed_states(model, state.get("seed_states"))
            print(f"resuming {out_dir} in the warm-up at epoch {done + 1}/{total}")
        callbacks = _callbacks(out_dir, "warmup", state, settings, segments, None, validated=val_ds is not None)
        _fit(model, train_ds, val_ds, initial_epoch=done, epochs=warmup_epochs, callbacks=callbacks, **fit)
        state = read_state(out_dir)
        done = int(state["epochs_done"])

    # Phase 2: fine-tuning. A fresh optimizer at the boundary; the saved one when resuming inside.
    models.unfreeze_backbone(model, unfreeze_from, train_batchnorm=train_batchnorm)
    compile_model(model, optimizer, finetune_learning_rate, weight_decay, jit_compile, run_eagerly, label_smoothing)
    if state is not None and state.get("phase") == "finetune":
        restore_checkpoint(model, out_dir / LAST_FILE)
        _restore_seed_states(model, state.get("seed_states"))
        print(f"resuming {out_dir} in the fine-tuning at epoch {done + 1}/{total}")
    elif state is not None and not warmed_up_here:   # the warm-up ended in an earlier call
        load_weights_only(model, out_dir / LAST_FILE)
        _restore_seed_states(model, state.get("seed_states"))
        print(f"resuming {out_dir}: warm-up done, fine-tuning from epoch {done + 1}/{total}")
    if done < total:
        callbacks = _callbacks(out_dir, "finetune", state, settings, segments, patience,
                               validated=val_ds is not None)
        _fit(model, train_ds, val_ds, initial_epoch=done, epochs=total, callbacks=callbacks, **fit)
    return read_history(out_dir)


def _restore_for_phase(model, out_dir, state, unfreeze_from, train_batchnorm, optimizer, weight_decay,
                       head_learning_rate, finetune_learning_rate, jit_compile, run_eagerly,
                       label_smoothing=0.0) -> None:
    """Put ``model`` in the trainable state of the saved phase and load ``last.keras`` into it."""
    if state.get("phase") == "warmup":
        models.freeze_backbone(model)
        rate = head_learning_rate
    else:
        models.unfreeze_backbone(model, unfreeze_from, train_batchnorm=train_batchnorm)
        rate = finetune_learning_rate
    compile_model(model, optimizer, rate, weight_decay, jit_compile, run_eagerly, label_smoothing)
    restore_checkpoint(model, Path(out_dir) / LAST_FILE)


# ----------------------------------------------------------------------------------------
# A final fit on all training clips
# ----------------------------------------------------------------------------------------
def refit_epochs(out_dir) -> int:
    """Epochs of the best validation epoch of a run (1-based count): the length of its final fit.

    The paper and TSN train on all training clips of a split. Here the validation carve-out
    chooses the number of epochs (and the fusion weight); a final fit then trains the same
    model and settings on train + validation clips for that many epochs, without validation,
    into ``<out_dir>/refit/`` (:func:`refit_temporal`, :func:`refit_spatial`).
    """
    history = read_history(out_dir)
    if not len(history) or "val_accuracy" not in history or history["val_accuracy"].isna().all():
        raise FileNotFoundError(f"{Path(out_dir) / HISTORY_FILE} has no validated epochs to choose from; "
                                f"train with validation first")
    return int(history.loc[history["val_accuracy"].idxmax(), "epoch"]) + 1


def refit_plan(run_dir) -> dict[str, Any]:
    """What the final fit of the finished, validated run in ``run_dir`` repeats of it.

    Returns ``{"of": run_dir, "epochs": E, "schedule": [...]}``: ``E`` is :func:`refit_epochs` and
    ``schedule`` the run's learning-rate segments that start before epoch ``E``, unchanged, so the
    final fit trains every epoch ``1..E`` at the rate the validated run had there (a cosine squeezed
    into ``E`` epochs would not be the schedule that was validated). A run still unfinished is an error.
    """
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    if state is None or not state.get("schedule"):
        raise FileNotFoundError(f"{run_dir} holds no training run to refit ({STATE_FILE} missing or without "
                                f"a schedule); train it with validation first")
    planned = max(s["end_epoch"] for s in state["schedule"])
    if state["epochs_done"] < planned and not state.get("stopped_early"):
        raise ValueError(f"{run_dir}: the validated run has done {state['epochs_done']} of its {planned} epochs; "
                         f"finish it first (train again: it resumes), then refit")
    epochs = refit_epochs(run_dir)
    return {"of": str(run_dir), "epochs": epochs,
            "schedule": [s for s in state["schedule"] if s["first_epoch"] < epochs]}


def refit_problem(run_dir) -> str | None:
    """``None`` if ``run_dir/refit/`` holds a finished final fit of the run as it is now, else why not."""
    refit_dir = Path(run_dir) / REFIT_DIR
    state = read_state(refit_dir)
    if state is None or not (refit_dir / LAST_FILE).is_file():
        return f"{refit_dir} holds no final fit"
    try:
        plan = refit_plan(run_dir)
    except (FileNotFoundError, ValueError) as error:
        return str(error)
    made_for = _refit_made_for(state)
    if made_for != _refit_record(plan):
        return (f"{refit_dir} is the final fit of another plan ({made_for['epochs']} epochs at the rates of then; "
                f"the validated run now chooses {plan['epochs']})")
    if state["epochs_done"] < plan["epochs"]:
        return f"{refit_dir} is unfinished ({state['epochs_done']} of {plan['epochs']} epochs)"
    return None


def _refit_record(plan: dict) -> dict:
    """What makes a final fit the one of ``plan``: its epoch count and schedule (both in its settings)."""
    return json.loads(json.dumps({"epochs": plan["epochs"], "schedule": plan["schedule"]}))


def _refit_made_for(state: dict | None) -> dict:
    """The :func:`_refit_record` a final fit's ``state.json`` was made for."""
    settings = (state or {}).get("settings") or {}
    return {"epochs": ((settings.get("run_info") or {}).get("refit") or {}).get("epochs"),
            "schedule": settings.get("schedule")}


def _refit_start(run_dir, plan: dict, resume: bool, run_info: dict | None) -> tuple[Path, bool, dict]:
    """The refit folder, whether to resume there (not if it holds the final fit of another plan: a
    changed epoch count trains again from the first epoch, it never extends), and the run_info."""
    refit_dir = Path(run_dir) / REFIT_DIR
    state = read_state(refit_dir) if resume else None
    if state is not None and _refit_made_for(state) != _refit_record(plan):
        print(f"{refit_dir}: made for {_refit_made_for(state)['epochs']} epochs at the rates of then; the "
              f"validated run now chooses {plan['epochs']}: the final fit trains again from its first epoch")
        resume = False
    print(f"final fit of {run_dir}: {plan['epochs']} epochs on all training clips at the validated run's rates "
          f"-> {refit_dir}")
    return refit_dir, resume, {**(run_info or {}), "refit": {"epochs": plan["epochs"]}}


def refit_temporal(model, train_ds, run_dir, *, learning_rate: float, resume: bool = True,
                   run_info: dict | None = None, **kwargs) -> pd.DataFrame:
    """The final fit of the temporal run in ``run_dir``: a fresh ``model`` trained on ``train_ds`` (all
    training clips: train + validation) for :func:`refit_plan`'s epochs at its rates, without
    validation, into ``run_dir/refit/``. ``kwargs`` as :func:`train_temporal` (the same as the run's)."""
    plan = refit_plan(run_dir)
    refit_dir, resume, run_info = _refit_start(run_dir, plan, resume, run_info)
    return train_temporal(model, train_ds, None, refit_dir, epochs=plan["epochs"], learning_rate=learning_rate,
                          patience=None, resume=resume, schedule=plan["schedule"], run_info=run_info, **kwargs)


def refit_spatial(model, train_ds, run_dir, *, resume: bool = True, run_info: dict | None = None,
                  **kwargs) -> pd.DataFrame:
    """The final fit of the spatial run in ``run_dir`` (see :func:`refit_temporal`): the run's warm-up
    (cut at the plan's epoch count), then fine-tuning up to that count, each phase at the rates the
    validated run had. ``kwargs`` as :func:`train_spatial` but the epochs (the same as the run's)."""
    plan = refit_plan(run_dir)
    refit_dir, resume, run_info = _refit_start(run_dir, plan, resume, run_info)
    warmup = min(int(read_state(run_dir)["settings"]["warmup_epochs"]), plan["epochs"])
    return train_spatial(model, train_ds, None, refit_dir, warmup_epochs=warmup,
                         finetune_epochs=plan["epochs"] - warmup, patience=None, resume=resume,
                         schedule=plan["schedule"], run_info=run_info, **kwargs)


# ----------------------------------------------------------------------------------------
# Small helpers for the notebooks
# ----------------------------------------------------------------------------------------
def predict_batches(model, dataset, max_batches: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax scores and labels of the first ``max_batches`` batches of a PyDataset."""
    n = len(dataset) if max_batches is None else min(len(dataset), max_batches)
    scores, labels = [], []
    for b in range(n):
        x, y = dataset[b]
        scores.append(np.asarray(model.predict_on_batch(x)))
        labels.append(np.asarray(y))
    return np.concatenate(scores), np.concatenate(labels)
