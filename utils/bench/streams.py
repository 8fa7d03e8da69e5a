"""The stream stages: the input generators (``SpatialFrames`` / ``FlowStacks`` through the enqueuer
``model.fit`` uses), the models (training with ``model.fit``, the model alone and fed by those
generators; inference), and whole-video evaluation (``utils.evaluation.score_videos``), with the
networks, optimiser and batch of the presets of ``utils.training`` on the Keras backend in use."""
from __future__ import annotations

import gc
import itertools
import math
import os
import time

import numpy as np

from utils.bench.context import (EVAL_FRAMES, HMDB51_CLASSES, HMDB51_CLIPS, HMDB51_FRAME_PAIRS, HMDB51_TEST_CLIPS,
                                 HMDB51_TRAIN_CLIPS, STACK_LENGTH, Bench)
from utils.bench.machine import keras_device, time_until, worker_grid
from utils.bench.rows import DERIVED, NOT_MEASURED, row

MODEL_METRICS = ("train_samples_per_s", "infer_samples_per_s", "fit_samples_per_s", "generator_keeps_up")


def make_dataset(index, generator: str, batch: int, batches: int, workers: int, options: dict, size: int = 224):
    """A training PyDataset of ``generator`` on ``index`` with at least ``batches`` batches."""
    from utils.generators import FlowStacks, SpatialFrames
    per_video = math.ceil(batches * batch / len(index))
    common = dict(training=True, image_size=size, batch_size=batch, workers=workers, **options)
    if generator == "SpatialFrames":
        return SpatialFrames(index, frames_per_video=per_video, **common)
    return FlowStacks(index, stack_length=STACK_LENGTH, stacks_per_video=per_video, **common)


def enqueued_rate(dataset, batches: int) -> float:
    """Samples/s of ``dataset`` through the enqueuer ``fit`` builds, the first batch (start-up) left out."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    iterator = PyDatasetAdapter(dataset, shuffle=False).get_numpy_iterator()
    items, started = 0, None
    for k, (_, y) in enumerate(iterator):
        started, items = started or time.perf_counter(), items + (len(y) if k else 0)
        if k >= batches:
            break
    seconds = time.perf_counter() - started
    for _ in iterator:      # let the enqueuer finish the epoch and stop its workers
        pass
    return items / seconds


def stage_generators(bench: Bench) -> None:
    """Threads, processes (not in the device check: forked from a process holding a GPU runtime) and
    threads with the decoded-flow cache, over the worker grid; and one thread's CPU time per sample."""
    index = bench.rawframes_index(STACK_LENGTH)
    batch, flow = bench.s.generator_batch, f"FlowStacks (L={STACK_LENGTH})"
    grid = list(bench.s.workers) or (sorted({1, bench.cores}) if bench.s.device else worker_grid(bench.cores))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    for generator, loader, options in [
            ("SpatialFrames", "threads", {}), ("SpatialFrames", "processes", {"use_multiprocessing": True}),
            (flow, "threads", {}), (flow, "processes", {"use_multiprocessing": True}),
            (flow, "threads, flow cache", {"flow_cache": bench.workdir / "flow-cache"})]:
        if loader == "processes" and bench.s.device and not bench.s.quick:
            continue
        if loader != "processes":                   # one thread's CPU time: robust to other work on the machine
            data = make_dataset(index, generator, batch, 4, 1, options)
            for b in range(len(data) if "flow_cache" in options else 1):      # warm-up; fills the cache
                data[b]
            started = time.thread_time()
            items = sum(len(data[b][1]) for b in range(1, len(data)))
            bench.writer("generators", generator, f"1 thread, {loader.replace('threads', 'serial')}, 224x224")(
                "samples_per_cpu_second", items / (time.thread_time() - started))
        for workers in grid:
            batches = max(3 * workers, math.ceil(50 * workers * bench.s.min_time / batch))
            rate = enqueued_rate(make_dataset(index, generator, batch, batches + 2, workers,
                                              dict(options, max_queue_size=max(4, 2 * workers))), batches)
            bench.writer("generators", generator, f"{workers} worker {loader}, 224x224, batch {batch}")(
                "samples_per_s", rate, note=f"load average {load}")


def build_model(stream: str, size: int, cfg: dict, num_classes: int):
    """A stream's network as the notebooks build it (random weights), compiled as training compiles it;
    the spatial stream in its fine-tuning phase (whole backbone trainable): the slower phase."""
    from utils import models
    from utils.training import compile_model
    if stream == "spatial":
        model = models.build_spatial_model(num_classes, image_size=size, weights=None, dropout=cfg["dropout"])
        models.unfreeze_backbone(model, cfg.get("unfreeze_from", "conv1"))
    else:
        model = models.build_temporal_model(num_classes, image_size=size, stack_length=STACK_LENGTH,
                                            **{k: cfg[k] for k in ("arch", "width", "dropout") if k in cfg})
    return compile_model(model)


def fit_rate(model, data, steps: int, batch: int) -> tuple[float, float]:
    """Samples/s of ``model.fit`` over ``steps`` batches after a first one; the first one's seconds."""
    import keras
    ends: list[float] = []
    started = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps + 1, verbose=0, shuffle=False, callbacks=[
        keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()))])
    return steps * batch / (ends[-1] - ends[0]), ends[0] - started


def stage_models(bench: Bench) -> None:
    import keras
    from utils.training import default_settings
    device = keras_device()
    try:
        for policy, preset, stream in itertools.product(bench.s.policies, bench.s.presets, bench.s.streams):
            cfg = default_settings(stream, preset)
            size = bench.s.size or cfg["image_size"]
            batch = bench.s.batch_size or (cfg["batch_size"] if device != "CPU" else min(cfg["batch_size"], 16))
            setting = f"{preset} preset: {size}x{size}, batch {batch}{'' if policy == 'float32' else ', ' + policy}"
            if bench.time_left("models") < 60:
                bench.skip("models", stream, setting, MODEL_METRICS, device, "the run's time budget ran out")
                continue
            keras.mixed_precision.set_global_policy(policy)     # each time: clear_session() resets it
            time_stream(bench, preset, stream, cfg, size, batch, setting, device)
            if device == "CPU":
                gpu = setting.replace(f"batch {batch}", f"batch {bench.s.batch_size or cfg['batch_size']}")
                bench.add(*(row("models", stream, gpu, m, None, device="GPU", status=NOT_MEASURED,
                                note="no GPU visible to Keras in this run")
                            for m in MODEL_METRICS[:2] + (("schedule_hours",) if preset == "hmdb51" else ())))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def time_stream(bench: Bench, preset: str, stream: str, cfg: dict, size: int, batch: int, setting: str,
                device: str) -> None:
    """The rows of one stream and preset under the current precision policy."""
    import keras
    from utils.demo_data import DEMO_CLASSES
    classes = HMDB51_CLASSES if preset == "hmdb51" else len(DEMO_CLASSES)
    model = build_model(stream, size, cfg, classes)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, 3 if stream == "spatial" else 2 * STACK_LENGTH), np.float32)
    y = rng.integers(0, classes, batch).astype("int32")
    rate, compile_s = fit_rate(model, ((x, y) for _ in itertools.count()), 2, batch)   # compiles; then ~min_time
    steps = max(4, math.ceil(rate * bench.s.min_time / batch))
    rate, _ = fit_rate(model, ((x, y) for _ in itertools.count()), steps, batch)
    model.predict_on_batch(x)
    infer, infer_s = time_until(lambda: len(model.predict_on_batch(x)), bench.s.min_time, 2, warmup=0)
    note = (f"{model.count_params() / 1e6:.1f} M parameters, {classes} classes; "
            + ("ResNet-50, backbone trainable" if stream == "spatial" else f"{cfg['arch']} width {cfg['width']:g}"))
    put = bench.writer("models", stream, setting, device)
    put("train_samples_per_s", rate, note=note + "; one batch")
    put("infer_samples_per_s", infer / infer_s, note=note)
    put("compile_seconds", compile_s, note="first training step of fit (tracing, compilation)")
    slowest = rate
    if bench.s.fit:                                 # the real generators feeding fit, one worker thread per core
        data = make_dataset(bench.rawframes_index(STACK_LENGTH), "SpatialFrames" if stream == "spatial"
                            else "FlowStacks", batch, steps + 2, bench.cores, {"max_queue_size": bench.cores}, size)
        fed, _ = fit_rate(model, data, steps, batch)
        slowest = min(rate, fed)
        put("fit_samples_per_s", fed, note=f"{type(data).__name__}, {bench.cores} worker threads; first batch left out")
        put("generator_keeps_up", fed / rate, DERIVED, note=">= 0.9: the generator keeps up")
    if preset == "hmdb51":
        per_clip = cfg.get("frames_per_video") or cfg.get("stacks_per_video") or 1
        epochs = cfg.get("epochs") or cfg.get("warmup_epochs", 0) + cfg.get("finetune_epochs", 0)
        put("schedule_hours", epochs * HMDB51_TRAIN_CLIPS * per_clip / slowest / 3600, DERIVED,
            note=f"{epochs} epochs of {HMDB51_TRAIN_CLIPS} clips x {per_clip} at the slower of the model and its "
                 "generator; no validation")
    keras.backend.clear_session()       # the model goes with this function's frame
    gc.collect()


def stage_eval(bench: Bench) -> None:
    """Network inputs per second of the whole-video protocol, projected to a test split."""
    import keras
    from utils.evaluation import score_videos
    from utils.training import default_settings
    cap = min(EVAL_FRAMES, bench.s.max_frames or EVAL_FRAMES)
    index = bench.rawframes_index(STACK_LENGTH).head(bench.s.max_videos or 4)
    index = index.assign(n_frames=index.n_frames.clip(upper=cap), n_flows=index.n_flows.clip(upper=cap - 1))
    device, size, batch = keras_device(), bench.s.eval_size, bench.s.batch_size or 32
    for stream in bench.s.streams:
        model = build_model(stream, size, default_settings(stream, "hmdb51"), HMDB51_CLASSES)
        model.predict_on_batch(np.zeros((batch, size, size, 3 if stream == "spatial" else 2 * STACK_LENGTH), "float32"))
        runs, inputs, started = 0, 0, time.perf_counter()
        while not runs or time.perf_counter() - started < bench.s.min_time:
            _, n_inputs = score_videos(model, index, stream, "whole_video", n_classes=HMDB51_CLASSES, image_size=size,
                                       stack_length=STACK_LENGTH, batch_size=batch)
            runs, inputs = runs + 1, inputs + int(np.sum(n_inputs))
        rate = inputs / (time.perf_counter() - started)
        per_clip = HMDB51_FRAME_PAIRS / HMDB51_CLIPS + (1 if stream == "spatial" else 1 - STACK_LENGTH)
        setting = f"{size}x{size}, batch {batch}, {len(index)} clips of {index.n_frames.mean():.0f} frames"
        put = bench.writer("eval", stream, setting, device)
        put("inputs_per_s", rate, note="reading + preprocessing + inference")
        put("hours_test_split", HMDB51_TEST_CLIPS * per_clip / rate / 3600, DERIVED,
            note=f"{per_clip:.0f} inputs per mean HMDB51 clip")
        del model
        keras.backend.clear_session()
        gc.collect()
