"""Training loops for the two streams: ``model.fit`` with Keras callbacks, resumable.

Both :func:`train_temporal` and :func:`train_spatial` write into one folder (``cfg.stream_dir(stream)``):

* ``best.keras`` - the model of the epoch with the best validation accuracy (``ModelCheckpoint``);
* ``last.keras`` - the model after the last finished epoch, *with its optimizer state*;
* ``history.csv`` - one row per epoch (``CSVLogger``, appended): losses, accuracies, top-5,
  learning rate, seconds per epoch, and the training ``phase``;
* ``state.json`` - how many epochs are finished, the phase, whether early stopping fired.

Every file is written to a temporary name and renamed, so none is ever half-written; ``state.json``
is written last, after ``last.keras``. Calling the same function again **resumes**: the model
gets the weights *and optimizer state* (momentum, iteration counter) of ``last.keras``, the epoch
counter continues (``fit(initial_epoch=...)``), the data generators jump to that epoch's draws,
and ``history.csv`` keeps each epoch exactly once. Asking for more epochs than before extends
the run; a run that early stopping ended stays finished (pass ``resume=False`` to start over).

Choices (and why)
-----------------
* **Optimizer: SGD with momentum 0.9** and weight decay 5e-4 - the recipe of the paper (and of
  TSN) for both streams, so its published learning rates (1e-2 from scratch, 1e-3 for
  fine-tuning) apply as they are, and the rate means one thing (a step size) in both phases.
  ``optimizer="adamw"`` is available: on tiny from-scratch problems it converges in fewer steps
  (the overfit test in tests/test_training.py memorises 20 flow stacks in ~12 AdamW steps at
  1e-3, against ~25 SGD steps), at the price of rates that do not transfer from the papers.
* **Learning-rate schedule: cosine decay per epoch** (``LearningRateScheduler``), from the given
  rate to 1 % of it over each phase. It is a pure function of the epoch number, so a resumed run
  gets exactly the rates an uninterrupted run would (``ReduceLROnPlateau`` keeps counters that a
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

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from utils import models

HISTORY_FILE = "history.csv"
STATE_FILE = "state.json"
BEST_FILE = "best.keras"
LAST_FILE = "last.keras"
OPTIMIZERS = ("sgd", "adamw")
MIN_LR_FRACTION = 0.01      # cosine decay ends at 1 % of the phase's learning rate

# Settings per dataset, used by the notebooks for every parameter left at None.
# demo: CPU, minutes (see DEMO_SETTINGS for the input size); hmdb51 (and any other path): a GPU.
SPATIAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "demo": dict(image_size=56, batch_size=16, frames_per_video=4, warmup_epochs=2, finetune_epochs=2,
                 head_learning_rate=0.01, finetune_learning_rate=0.001, unfreeze_from="conv1",
                 dropout=0.5, optimizer="sgd", patience=None),
    "hmdb51": dict(image_size=224, batch_size=32, frames_per_video=4, warmup_epochs=2, finetune_epochs=15,
                   head_learning_rate=0.01, finetune_learning_rate=0.001, unfreeze_from="conv1",
                   dropout=0.5, optimizer="sgd", patience=5),
}
# Changes to SPATIAL_DEFAULTS for a backbone trained from scratch (weights=None): no warm-up
# (nothing pretrained to protect) and the rate of a from-scratch run. On the demo: AdamW, which
# gets a from-scratch ResNet-50 going in the few dozen steps a CPU affords (SGD at 1e-2 or 1e-3
# stayed near chance there), and more frames per epoch.
SPATIAL_FROM_SCRATCH: dict[str, dict[str, Any]] = {
    "demo": dict(warmup_epochs=0, frames_per_video=8, finetune_learning_rate=0.001, optimizer="adamw"),
    "hmdb51": dict(warmup_epochs=0, finetune_learning_rate=0.01),
}
TEMPORAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "demo": dict(image_size=56, stack_length=10, batch_size=16, stacks_per_video=4, epochs=30,
                 learning_rate=0.01, arch="cnn_m_2048", width=0.25, dropout=0.5, optimizer="sgd",
                 patience=None),
    "hmdb51": dict(image_size=224, stack_length=10, batch_size=64, stacks_per_video=8, epochs=60,
                   learning_rate=0.01, arch="cnn_m_2048", width=1.0, dropout=0.9, optimizer="sgd",
                   patience=15),
}


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
            number, and a dataset whose last batch is too (NumPy ``(x, y)`` tuples given to the
            training functions are cut to whole batches; a PyDataset's last, smaller batch is
            not, and raises an ``IndivisibleError``).
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
# Pieces
# ----------------------------------------------------------------------------------------
def make_optimizer(name: str = "sgd", learning_rate: float = 0.01, weight_decay: float = 5e-4):
    """SGD with momentum 0.9 (``"sgd"``) or AdamW (``"adamw"``), with (decoupled) weight decay."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, weight_decay=weight_decay or None)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def compile_model(model, optimizer: str = "sgd", learning_rate: float = 0.01, weight_decay: float = 5e-4,
                  jit_compile: bool | str = "auto", run_eagerly: bool = False):
    """Compile with sparse categorical cross-entropy, top-1 ``accuracy`` and ``top5_accuracy``."""
    num_classes = int(model.output_shape[-1])
    k = min(5, num_classes)
    model.compile(optimizer=make_optimizer(optimizer, learning_rate, weight_decay),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                           keras.metrics.SparseTopKCategoricalAccuracy(k=k, name=f"top{k}_accuracy")],
                  jit_compile=jit_compile, run_eagerly=run_eagerly)
    return model


def cosine_schedule(learning_rate: float, first_epoch: int, n_epochs: int,
                    min_fraction: float = MIN_LR_FRACTION):
    """``epoch -> rate``: cosine decay from ``learning_rate`` at ``first_epoch`` towards
    ``min_fraction * learning_rate`` at ``first_epoch + n_epochs``."""
    def schedule(epoch, current_lr=None):
        progress = min(max((epoch - first_epoch) / max(n_epochs, 1), 0.0), 1.0)
        floor = learning_rate * min_fraction
        return float(floor + (learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return schedule


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
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"cannot resume from {path}: it does not match this model ({error}). Build the same "
                         f"model as the saved run, or start over with resume=False.") from error


def load_weights_only(model, path) -> None:
    """Copy the weights (not the optimizer state) of a ``.keras`` file into ``model`` (same architecture)."""
    saved = keras.saving.load_model(path, compile=False)
    model.set_weights(saved.get_weights())


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_state(out_dir) -> dict[str, Any] | None:
    """The ``state.json`` of a training folder, or ``None`` if training never finished an epoch."""
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it to start the run over") from error


def read_history(out_dir) -> pd.DataFrame:
    """``history.csv`` of a training folder (empty DataFrame if there is none)."""
    path = Path(out_dir) / HISTORY_FILE
    return pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame()


def _trim_history(out_dir: Path, epochs_done: int) -> pd.DataFrame:
    """Drop rows of epochs that are not in ``last.keras`` (a crash between the CSV row and the checkpoint)."""
    history = read_history(out_dir)
    if len(history) and (history["epoch"] >= epochs_done).any():
        history = history[history["epoch"] < epochs_done]
        tmp = out_dir / f".{HISTORY_FILE}.tmp"
        history.to_csv(tmp, index=False)
        os.replace(tmp, out_dir / HISTORY_FILE)
    return history


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


class _Commit(keras.callbacks.Callback):
    """After the checkpoints and the CSV row: rename the fresh checkpoints into place, then write state.json.

    Runs after ``CSVLogger`` and before Keras' own ``History``/progress bar (appended by ``fit``).
    """

    def __init__(self, out_dir: Path, phase: str, monitor: str):
        super().__init__()
        self.out_dir, self.phase, self.monitor = out_dir, phase, monitor

    def on_epoch_end(self, epoch, logs=None):
        for name in (BEST_FILE, LAST_FILE):
            tmp = self.out_dir / _tmp_name(name)
            if tmp.is_file():
                os.replace(tmp, self.out_dir / name)
        state = read_state(self.out_dir) or {}
        value = (logs or {}).get(self.monitor)
        best = state.get("best")
        if value is not None and (best is None or float(value) > best):
            best = float(value)
        state.update(epochs_done=int(epoch) + 1, phase=self.phase, best=best, monitor=self.monitor,
                     stopped_early=bool(getattr(self.model, "stop_training", False)),
                     backend=keras.backend.backend())
        _write_atomically(self.out_dir / STATE_FILE, json.dumps(state, indent=1))
        if logs is not None:
            logs.pop("phase", None)       # written to history.csv; the progress bar only averages numbers


def _tmp_name(name: str) -> str:
    return name.replace(".keras", ".tmp.keras")


def _callbacks(out_dir: Path, phase: str, schedule, patience: int | None, best_so_far: float | None,
               monitor: str = "val_accuracy") -> list:
    callbacks = [
        _EpochInfo(phase),
        keras.callbacks.LearningRateScheduler(schedule),
    ]
    if patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=int(patience),
                                                       restore_best_weights=False))
    callbacks += [
        keras.callbacks.ModelCheckpoint(out_dir / _tmp_name(BEST_FILE), monitor=monitor, mode="max",
                                        save_best_only=True, initial_value_threshold=best_so_far),
        keras.callbacks.ModelCheckpoint(out_dir / _tmp_name(LAST_FILE), save_best_only=False),
        keras.callbacks.CSVLogger(str(out_dir / HISTORY_FILE), append=True),
        _Commit(out_dir, phase, monitor),
    ]
    return callbacks


def _whole_batches(arrays: tuple, batch_size: int | None) -> tuple:
    """Under a distribution (DataParallel), cut ``(x, y)`` to whole batches: each batch must split evenly."""
    x, y = arrays
    if keras.distribution.distribution() is None or not batch_size or len(x) < batch_size:
        return x, y
    keep = len(x) // batch_size * batch_size
    return x[:keep], y[:keep]


def _fit(model, train_ds, val_ds, *, initial_epoch: int, epochs: int, callbacks, batch_size: int | None,
         steps_per_epoch: int | None, verbose):
    """``model.fit`` on PyDatasets (or ``(x, y)`` arrays), the generators moved to ``initial_epoch``."""
    if hasattr(train_ds, "set_epoch"):
        train_ds.set_epoch(initial_epoch)      # the same draws as an uninterrupted run (utils.generators)
    if isinstance(train_ds, tuple):
        x, y = _whole_batches(train_ds, batch_size)
        val_ds = _whole_batches(val_ds, batch_size) if isinstance(val_ds, tuple) else val_ds
        kwargs = dict(x=x, y=y, batch_size=batch_size, shuffle=True)
    else:
        kwargs = dict(x=train_ds, shuffle=False)   # the generators shuffle per epoch themselves
    return model.fit(**kwargs, validation_data=val_ds, initial_epoch=initial_epoch, epochs=epochs,
                     steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=verbose)


def _start(out_dir, resume: bool) -> tuple[Path, dict | None]:
    """Create the folder; with ``resume=False`` forget a previous run (its files are overwritten)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        for name in (STATE_FILE, HISTORY_FILE):
            (out_dir / name).unlink(missing_ok=True)
        return out_dir, None
    state = read_state(out_dir)
    if state is not None:
        if not (out_dir / LAST_FILE).is_file():
            raise FileNotFoundError(f"{out_dir / STATE_FILE} says {state['epochs_done']} epoch(s) are done "
                                    f"but {out_dir / LAST_FILE} is missing; pass resume=False to start over")
        _trim_history(out_dir, state["epochs_done"])
    else:
        (out_dir / HISTORY_FILE).unlink(missing_ok=True)   # rows without a checkpoint behind them
    return out_dir, state


def _check_validation(val_ds) -> None:
    if val_ds is None:
        raise ValueError("val_ds is required: the best checkpoint, early stopping and the curves use it")


# ----------------------------------------------------------------------------------------
# Temporal stream: one phase, from scratch
# ----------------------------------------------------------------------------------------
def train_temporal(model, train_ds, val_ds, out_dir, epochs: int, learning_rate: float = 0.01, *,
                   optimizer: str = "sgd", weight_decay: float = 5e-4, patience: int | None = 10,
                   resume: bool = True, seed: int | None = 0, batch_size: int | None = None,
                   steps_per_epoch: int | None = None, jit_compile: bool | str = "auto",
                   run_eagerly: bool = False, verbose=2) -> pd.DataFrame:
    """Train the temporal stream for ``epochs`` epochs in total (resuming a previous run in ``out_dir``).

    Args:
        model: from :func:`utils.models.build_temporal_model` (compiled here).
        train_ds, val_ds: ``keras.utils.PyDataset`` yielding ``(x, integer y)`` (e.g.
            :class:`utils.generators.FlowStacks`), or ``(x, y)`` NumPy tuples (then ``batch_size``).
        out_dir: where ``best.keras``, ``last.keras``, ``history.csv``, ``state.json`` go.
        epochs: total number of epochs (not "more epochs": a resumed run stops at the same total).
        learning_rate: initial rate of the cosine schedule.
        optimizer, weight_decay: see :func:`make_optimizer`.
        patience: early-stopping patience in epochs (``None``: no early stopping).
        resume: continue from ``last.keras`` if ``out_dir`` holds a run; ``False`` starts over.
        seed: ``keras.utils.set_random_seed`` before training (``None``: leave the RNGs alone).
        jit_compile, run_eagerly: passed to ``compile`` (XLA is used by default on GPUs).
        verbose: ``fit``'s verbosity (2: one line per epoch, good for notebooks and logs).

    Returns ``history.csv`` as a DataFrame (all epochs so far, resumed ones included).
    """
    _check_validation(val_ds)
    out_dir, state = _start(out_dir, resume)
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    compile_model(model, optimizer, learning_rate, weight_decay, jit_compile, run_eagerly)
    done = 0
    if state is not None:
        restore_checkpoint(model, out_dir / LAST_FILE)
        done = int(state["epochs_done"])
        if state.get("stopped_early") or done >= epochs:
            why = "early stopping ended it" if state.get("stopped_early") else "all epochs are done"
            print(f"{out_dir}: {why} after {done} epochs; model loaded from {LAST_FILE} "
                  f"(resume=False starts over)")
            return read_history(out_dir)
    if done < epochs:
        if done:
            print(f"resuming {out_dir} at epoch {done + 1}/{epochs}")
        callbacks = _callbacks(out_dir, "train", cosine_schedule(learning_rate, 0, epochs), patience,
                               None if state is None else state.get("best"))
        _fit(model, train_ds, val_ds, initial_epoch=done, epochs=epochs, callbacks=callbacks,
             batch_size=batch_size, steps_per_epoch=steps_per_epoch, verbose=verbose)
    return read_history(out_dir)


# ----------------------------------------------------------------------------------------
# Spatial stream: warm-up of the head, then fine-tuning of the backbone
# ----------------------------------------------------------------------------------------
def train_spatial(model, train_ds, val_ds, out_dir, warmup_epochs: int = 2, finetune_epochs: int = 10,
                  head_learning_rate: float = 0.01, finetune_learning_rate: float = 0.001,
                  unfreeze_from: str = "conv1", *, train_batchnorm: bool = False, optimizer: str = "sgd",
                  weight_decay: float = 5e-4, patience: int | None = 5, resume: bool = True,
                  seed: int | None = 0, batch_size: int | None = None, steps_per_epoch: int | None = None,
                  jit_compile: bool | str = "auto", run_eagerly: bool = False, verbose=2) -> pd.DataFrame:
    """Fine-tune the spatial stream: ``warmup_epochs`` of the head alone, then ``finetune_epochs`` of more.

    Phase ``"warmup"`` (epochs ``0 .. warmup_epochs-1``): backbone frozen, head trained at
    ``head_learning_rate``. Phase ``"finetune"`` (the next ``finetune_epochs``): backbone unfrozen
    from stage ``unfreeze_from`` (``"conv1"``: all of it), a fresh optimizer at
    ``finetune_learning_rate``, BatchNorm kept in inference mode unless ``train_batchnorm``
    (set it when the backbone was not pretrained). Each phase has its own cosine schedule;
    early stopping (``patience``) only acts in the fine-tuning phase. Resumes like
    :func:`train_temporal`, across the phase boundary. Other arguments as there.
    """
    _check_validation(val_ds)
    if warmup_epochs < 0 or finetune_epochs < 0:
        raise ValueError("warmup_epochs and finetune_epochs must be >= 0")
    out_dir, state = _start(out_dir, resume)
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    total = warmup_epochs + finetune_epochs
    done = 0 if state is None else int(state["epochs_done"])
    best = None if state is None else state.get("best")
    if state is not None and (done >= total or state.get("stopped_early")):
        _restore_for_phase(model, out_dir, state, unfreeze_from, train_batchnorm, optimizer, weight_decay,
                           head_learning_rate, finetune_learning_rate, jit_compile, run_eagerly)
        why = "early stopping ended it" if state.get("stopped_early") else "all epochs are done"
        print(f"{out_dir}: {why} after {done} epochs; model loaded from {LAST_FILE} (resume=False starts over)")
        return read_history(out_dir)
    if state is not None and state.get("phase") == "finetune" and done < warmup_epochs:
        raise ValueError(f"{out_dir / STATE_FILE}: the run is already fine-tuning after {done} epochs, but "
                         f"warmup_epochs={warmup_epochs}; resume with the same warmup_epochs or resume=False")
    fit = dict(batch_size=batch_size, steps_per_epoch=steps_per_epoch, verbose=verbose)

    # Phase 1: the head alone.
    warmed_up_here = done < warmup_epochs
    if warmed_up_here:
        models.freeze_backbone(model)
        compile_model(model, optimizer, head_learning_rate, weight_decay, jit_compile, run_eagerly)
        if done:
            restore_checkpoint(model, out_dir / LAST_FILE)
            print(f"resuming {out_dir} in the warm-up at epoch {done + 1}/{total}")
        callbacks = _callbacks(out_dir, "warmup", cosine_schedule(head_learning_rate, 0, warmup_epochs),
                               None, best)
        _fit(model, train_ds, val_ds, initial_epoch=done, epochs=warmup_epochs, callbacks=callbacks, **fit)
        state = read_state(out_dir)
        done, best = int(state["epochs_done"]), state.get("best")

    # Phase 2: fine-tuning. A fresh optimizer at the boundary; the saved one when resuming inside.
    models.unfreeze_backbone(model, unfreeze_from, train_batchnorm=train_batchnorm)
    compile_model(model, optimizer, finetune_learning_rate, weight_decay, jit_compile, run_eagerly)
    if state is not None and state.get("phase") == "finetune":
        restore_checkpoint(model, out_dir / LAST_FILE)
        print(f"resuming {out_dir} in the fine-tuning at epoch {done + 1}/{total}")
    elif state is not None and not warmed_up_here:   # the warm-up ended in an earlier call
        load_weights_only(model, out_dir / LAST_FILE)
        print(f"resuming {out_dir}: warm-up done, fine-tuning from epoch {done + 1}/{total}")
    if done < total:
        callbacks = _callbacks(out_dir, "finetune",
                               cosine_schedule(finetune_learning_rate, warmup_epochs, finetune_epochs),
                               patience, best)
        _fit(model, train_ds, val_ds, initial_epoch=done, epochs=total, callbacks=callbacks, **fit)
    return read_history(out_dir)


def _restore_for_phase(model, out_dir, state, unfreeze_from, train_batchnorm, optimizer, weight_decay,
                       head_learning_rate, finetune_learning_rate, jit_compile, run_eagerly) -> None:
    """Put ``model`` in the trainable state of the saved phase and load ``last.keras`` into it."""
    if state.get("phase") == "warmup":
        models.freeze_backbone(model)
        rate = head_learning_rate
    else:
        models.unfreeze_backbone(model, unfreeze_from, train_batchnorm=train_batchnorm)
        rate = finetune_learning_rate
    compile_model(model, optimizer, rate, weight_decay, jit_compile, run_eagerly)
    restore_checkpoint(model, Path(out_dir) / LAST_FILE)


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
