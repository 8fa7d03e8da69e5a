"""Fit stage: training throughput of both streams with the real generators feeding ``model.fit``,
against the model alone (``fit`` on one batch in memory), in the same run: do the generators keep
up? Networks, batch and optimiser of the hmdb51 preset (224 px; unless ``--presets`` leaves it
out). In the device check (no models stage) it also writes the models stage's training rows."""
from __future__ import annotations

import gc
import math
import time

import numpy as np

from utils.bench.context import Bench
from utils.bench.machine import gpu_names
from utils.bench.models import build_model, describe, model_batch, policy_suffix, preset_classes, training_preset, training_rows
from utils.bench.rows import DERIVED, NOT_MEASURED, row


class _BatchTimes:
    """Keras callback: the time at the end of every training batch."""

    def __init__(self):
        import keras
        self.callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: self.ends.append(
            time.perf_counter()))
        self.ends: list[float] = []


def stage_fit(bench: Bench) -> None:
    import keras
    gpus = gpu_names()
    device = f"GPU ({gpus[0]})" if gpus else "CPU"
    index = bench.rawframes_index(bench.s.stack_length)
    try:
        for policy in bench.s.policies:
            keras.mixed_precision.set_global_policy(policy)
            for stream in bench.s.streams:
                if bench.time_left("fit") < 60:
                    bench.log(f"fit: no time left for {stream}, {policy}")
                    bench.add(row("fit", stream, f"{policy}", "fit_samples_per_s", None, device=device,
                                  status=NOT_MEASURED, note="the run's time budget ran out"))
                    continue
                _fit_stream(bench, index, stream, policy, device, bool(gpus))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _same_batch(x, y, n: int):
    """A PyDataset of ``n`` copies of one batch in memory: the model alone, through ``fit``."""
    import keras

    class SameBatch(keras.utils.PyDataset):
        def __len__(self):
            return n

        def __getitem__(self, index):
            return x, y
    return SameBatch()


def _fit_rate(model, data, steps: int, batch: int) -> tuple[float, float]:
    """Samples/s of ``model.fit`` over ``steps`` batches after a first one; and the first one's seconds."""
    times = _BatchTimes()
    started = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps + 1, verbose=0, callbacks=[times.callback])
    return steps * batch / (times.ends[-1] - times.ends[0]), times.ends[0] - started


def _fit_stream(bench: Bench, index, stream: str, policy: str, device: str, on_gpu: bool) -> None:
    """The model alone (the same batch again and again) and with its generator, both through
    ``model.fit``, which compiles the training step once for both."""
    import keras
    from utils.generators import FlowStacks, SpatialFrames
    preset = "hmdb51" if "hmdb51" in bench.s.presets else bench.s.presets[0]
    keras.mixed_precision.set_global_policy(policy)      # again: clear_session() resets it
    cfg = training_preset(stream, preset)
    size = bench.s.size or cfg["image_size"]
    batch = model_batch(bench, cfg, on_gpu)
    classes = preset_classes(preset)
    model = build_model(stream, size, cfg, classes, bench.s.stack_length)
    channels = 3 if stream == "spatial" else 2 * bench.s.stack_length
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, channels), dtype=np.float32)
    y = rng.integers(0, classes, batch).astype("int32")
    # Steps: about min_time at the model's rate (from a first short run, which also compiles).
    model_rate, compile_s = _fit_rate(model, _same_batch(x, y, 3), 2, batch)
    steps = max(4, math.ceil(model_rate * bench.s.min_time / batch))
    model_rate, _ = _fit_rate(model, _same_batch(x, y, steps + 1), steps, batch)
    workers = bench.s.fit_workers or bench.cores
    per_video = math.ceil((steps + 2) * batch / len(index))
    # One batch in flight per worker thread (Keras' queue bounds them): a 256-stack batch is 1 GB.
    common = dict(training=True, image_size=size, batch_size=batch, workers=workers, max_queue_size=workers)
    data = (SpatialFrames(index, frames_per_video=per_video, **common) if stream == "spatial" else
            FlowStacks(index, stack_length=bench.s.stack_length, stacks_per_video=per_video, **common))
    fit_rate, _ = _fit_rate(model, data, steps, batch)
    setting = f"{preset} preset: {size}x{size}, batch {batch}{policy_suffix(policy)}"
    bench.log(f"  fit: {stream}, {policy}: compiled in {compile_s:.1f} s; {steps} steps of each")
    if bench.s.device:          # the device check has no models stage: these are its training figures
        training_rows(bench, preset, stream, setting, model_rate, device,
                      describe(stream, cfg, model, classes) + "; model.fit on one batch in memory")
        bench.add(row("models", stream, setting, "compile_seconds", compile_s, device=device,
                      note="first training step of fit (tracing/compilation)"))
    bench.add(row("fit", stream, setting, "fit_samples_per_s", fit_rate, device=device,
                  note=f"model.fit on {type(data).__name__}, {workers} worker threads, {len(index)} extracted "
                       "clips; the first batch left out"),
              row("fit", stream, setting, "train_samples_per_s", model_rate, device=device,
                  note="model.fit on one batch in memory: the model alone"),
              row("fit", stream, setting, "generator_keeps_up", fit_rate / model_rate, status=DERIVED,
                  device=device, note="fit with the generator / the model alone; >= 0.9: the generator keeps up"))
    del model, data
    keras.backend.clear_session()
    gc.collect()
