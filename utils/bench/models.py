"""Models stage: training and inference samples/s of both streams, as ``utils.training`` builds them."""
from __future__ import annotations

import gc
import time

import numpy as np

from utils.bench.context import HMDB51_CLASSES, HMDB51_TRAIN_CLIPS_NO_VAL, Bench
from utils.bench.machine import gpu_names, time_until
from utils.bench.rows import DERIVED, NOT_MEASURED, row


def training_preset(stream: str, preset: str) -> dict:
    """The training settings the notebooks use for ``stream`` on ``preset`` ("hmdb51" or "demo")."""
    from utils.training import default_settings
    if stream not in ("spatial", "temporal"):
        raise ValueError(f"unknown stream {stream!r}; use spatial or temporal")
    if preset not in ("hmdb51", "demo"):
        raise ValueError(f"unknown model preset {preset!r}; use hmdb51 or demo")
    return default_settings(stream, preset)


def preset_classes(preset: str) -> int:
    if preset == "demo":
        from utils.demo_data import DEMO_CLASSES
        return len(DEMO_CLASSES)
    return HMDB51_CLASSES


def build_model(stream: str, size: int, cfg: dict, num_classes: int, stack_length: int = 10):
    """A stream's network as training builds it (random weights), compiled as training compiles it.

    The spatial stream is in its fine-tuning phase (whole backbone trainable): the slower phase.
    """
    from utils import models
    from utils.training import compile_model
    if stream == "spatial":
        model = models.build_spatial_model(num_classes, image_size=size, weights=None, dropout=cfg.get("dropout", 0.5))
        models.unfreeze_backbone(model, cfg.get("unfreeze_from", "conv1"))
    elif stream == "temporal":
        options = {k: cfg[k] for k in ("arch", "width", "dropout") if k in cfg}
        model = models.build_temporal_model(num_classes, image_size=size, stack_length=stack_length, **options)
    else:
        raise ValueError(f"unknown stream {stream!r}; use spatial or temporal")
    return compile_model(model)


def model_batch(bench: Bench, cfg: dict, on_gpu: bool) -> int:
    """The preset's batch on a GPU; on a CPU at most 16 (the same samples/s, less memory)."""
    return bench.s.batch_size or (cfg["batch_size"] if on_gpu else min(cfg["batch_size"], 16))


def policy_suffix(policy: str) -> str:
    return "" if policy == "float32" else f", {policy}"


def stage_models(bench: Bench) -> None:
    import keras
    gpus = gpu_names()
    device = f"GPU ({gpus[0]})" if gpus else "CPU"
    try:
        for policy in bench.s.policies:
            bench.log(f"models: Keras {keras.__version__}, backend {keras.backend.backend()}, on {device}, "
                      f"policy {policy}")
            for preset in bench.s.presets:
                for stream in bench.s.streams:
                    keras.mixed_precision.set_global_policy(policy)     # each time: clear_session() resets it
                    time_model(bench, preset, stream, device, bool(gpus))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def describe(stream: str, cfg: dict, model, classes: int) -> str:
    what = ("ResNet-50, whole backbone trainable but BatchNorm frozen (fine-tuning phase)" if stream == "spatial"
            else f"{cfg.get('arch', 'cnn_m_2048')} width {cfg.get('width', 1.0):g}, from scratch")
    return f"{what}; {model.count_params() / 1e6:.1f} M parameters, {classes} classes"


def training_rows(bench: Bench, preset: str, stream: str, setting: str, train_rate: float, device: str,
                  note: str) -> None:
    """The training samples/s of a stream and, for the hmdb51 preset, its epoch and schedule times."""
    cfg = training_preset(stream, preset)
    bench.add(row("models", stream, setting, "train_samples_per_s", train_rate, device=device, note=note))
    if preset == "hmdb51":
        per_clip = cfg.get("frames_per_video") or cfg.get("stacks_per_video") or 1
        epochs = cfg.get("epochs") or cfg.get("warmup_epochs", 0) + cfg.get("finetune_epochs", 0)
        samples = HMDB51_TRAIN_CLIPS_NO_VAL * per_clip
        bench.add(row("models", stream, setting, "epoch_minutes", samples / train_rate / 60, status=DERIVED,
                      device=device, note=f"{samples} samples ({HMDB51_TRAIN_CLIPS_NO_VAL} clips x {per_clip}); "
                                          "model time only, no validation"),
                  row("models", stream, setting, "schedule_hours", epochs * samples / train_rate / 3600,
                      status=DERIVED, device=device, note=f"{epochs} epochs of the preset"))


def time_model(bench: Bench, preset: str, stream: str, device: str, on_gpu: bool) -> float:
    """Add the rows of one stream/preset under the current precision policy; returns training samples/s."""
    import keras
    cfg = training_preset(stream, preset)
    size = bench.s.size or cfg["image_size"]
    batch = model_batch(bench, cfg, on_gpu)
    classes = preset_classes(preset)
    model = build_model(stream, size, cfg, classes, bench.s.stack_length)
    channels = 3 if stream == "spatial" else 2 * bench.s.stack_length
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, channels), dtype=np.float32)
    y = rng.integers(0, classes, batch).astype("int32")

    def train_step():
        model.train_on_batch(x, y)
        return batch

    def infer_step():
        model.predict_on_batch(x)
        return batch

    started = time.perf_counter()
    train_step()                                        # traces / compiles the training step
    first_train = time.perf_counter() - started
    train, train_s = time_until(train_step, bench.s.min_time, 2, warmup=0)
    started = time.perf_counter()
    infer_step()
    first_infer = time.perf_counter() - started
    infer, infer_s = time_until(infer_step, bench.s.min_time, 2, warmup=0)
    policy = keras.mixed_precision.global_policy().name
    setting = f"{preset} preset: {size}x{size}, batch {batch}{policy_suffix(policy)}"
    note = describe(stream, cfg, model, classes)
    train_rate = train / train_s
    training_rows(bench, preset, stream, setting, train_rate, device, note)
    bench.add(row("models", stream, setting, "infer_samples_per_s", infer / infer_s, device=device, note=note),
              row("models", stream, setting, "compile_seconds", first_train + first_infer, device=device,
                  note="first training step + first inference (tracing/compilation)"))
    del model
    keras.backend.clear_session()
    gc.collect()
    if not on_gpu:
        gpu_batch = bench.s.batch_size or cfg["batch_size"]
        gpu_setting = f"{preset} preset: {size}x{size}, batch {gpu_batch}{policy_suffix(policy)}"
        for metric in ("train_samples_per_s", "infer_samples_per_s") + (
                ("epoch_minutes", "schedule_hours") if preset == "hmdb51" else ()):
            bench.add(row("models", stream, gpu_setting, metric, None, device="GPU", status=NOT_MEASURED,
                          note="no GPU visible to Keras in this run"))
    return train_rate
