"""Eval stage: whole-video evaluation (``utils.evaluation.score_videos``), videos per second."""
from __future__ import annotations

import gc
import time

import numpy as np

from utils.bench.context import HMDB51_CLASSES, HMDB51_TEST_CLIPS, Bench, per_clip_inputs
from utils.bench.machine import keras_device
from utils.bench.models import build_model, training_preset
from utils.bench.rows import DERIVED, row


def stage_eval(bench: Bench) -> None:
    import keras
    from utils.evaluation import score_videos
    index = bench.rawframes_index(bench.s.stack_length).head(bench.s.eval_videos)
    cap = bench.s.eval_max_frames
    index = index.assign(n_frames=index.n_frames.clip(upper=cap), n_flows=index.n_flows.clip(upper=cap - 1))
    device = keras_device()
    size, batch = bench.s.eval_size, bench.s.batch_size or 32
    bench.log(f"eval: whole-video protocol, {len(index)} clip(s) of <= {cap} frames, {size}x{size}, {device}")
    for stream in bench.s.streams:
        model = build_model(stream, size, training_preset(stream, "hmdb51"), HMDB51_CLASSES, bench.s.stack_length)
        channels = 3 if stream == "spatial" else 2 * bench.s.stack_length
        model.predict_on_batch(np.zeros((batch, size, size, channels), np.float32))   # warm-up (tracing)
        runs, inputs, started = 0, 0, time.perf_counter()
        while True:
            _, n_inputs = score_videos(model, index, stream, "whole_video", n_classes=HMDB51_CLASSES,
                                       image_size=size, stack_length=bench.s.stack_length, batch_size=batch)
            runs += 1
            inputs += int(np.sum(n_inputs))
            seconds = time.perf_counter() - started
            if seconds >= bench.s.min_time:
                break
        inputs_rate = inputs / seconds
        per_clip = per_clip_inputs(stream, bench.s.stack_length)
        setting = f"{size}x{size}, batch {batch}, clips of {index.n_frames.mean():.0f} frames"
        bench.add(
            row("eval", stream, setting, "videos_per_s", runs * len(index) / seconds, device=device),
            row("eval", stream, setting, "inputs_per_s", inputs_rate, device=device,
                note="reading + preprocessing + inference"),
            row("eval", stream, setting, "videos_per_s_hmdb51_clip", inputs_rate / per_clip, status=DERIVED,
                device=device, note=f"{per_clip:.0f} inputs per mean HMDB51 clip"),
            row("eval", stream, setting, "hours_test_split", HMDB51_TEST_CLIPS * per_clip / inputs_rate / 3600,
                status=DERIVED, device=device),
        )
        del model
        keras.backend.clear_session()
        gc.collect()
