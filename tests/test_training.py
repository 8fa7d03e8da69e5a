"""utils.training: checkpoints, resuming (epochs and optimizer state), the two spatial phases, overfitting real clips.

Small models and in-memory arrays wherever possible; ResNet-50 steps run eagerly (cheaper on a
CPU than tracing them). The overfit test extracts a few real HMDB51 clips (tests/data/hmdb51_clips)
with a fast flow method once per session.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import keras

from utils import models, training
from utils.config import REPO_ROOT

CLIPS = REPO_ROOT / "tests" / "data" / "hmdb51_clips"


def _arrays(n=8, size=32, channels=4, classes=3, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    return rng.normal(0, scale, (n, size, size, channels)).astype("float32"), np.arange(n) % classes


def _tiny_temporal(seed=0):
    keras.utils.set_random_seed(seed)
    return models.build_temporal_model(3, image_size=32, stack_length=2, width=0.125, dropout=0.0)


def _numpy(variables):
    return [keras.ops.convert_to_numpy(v) for v in variables]


# ----------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------
@pytest.mark.backend_smoke
def test_resume_continues_epochs_and_optimizer_state(tmp_path):
    train, val = _arrays(8), _arrays(4, seed=1)
    kw = dict(learning_rate=0.05, batch_size=4, verbose=0, patience=None)
    steps = 2                                                       # 8 samples / batch 4

    history = training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=1, **kw)
    assert history["epoch"].tolist() == [0]
    assert training.read_state(tmp_path)["epochs_done"] == 1
    assert {p.name for p in tmp_path.iterdir()} == {"best.keras", "last.keras", "history.csv", "state.json"}

    # The checkpoint holds the optimizer state, and restore_checkpoint puts exactly that into a new model.
    saved = keras.saving.load_model(tmp_path / "last.keras")
    assert int(keras.ops.convert_to_numpy(saved.optimizer.iterations)) == steps
    fresh = training.compile_model(_tiny_temporal(seed=1), "sgd", 0.05)
    training.restore_checkpoint(fresh, tmp_path / "last.keras")
    saved_opt, fresh_opt = _numpy(saved.optimizer.variables), _numpy(fresh.optimizer.variables)
    assert len(saved_opt) == len(fresh_opt) > 2
    for a, b in zip(saved_opt, fresh_opt):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(v).sum() > 0 for v in saved_opt[2:])        # momentum slots are not all zero
    for a, b in zip(saved.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)

    # "Crash" after the CSV row of epoch 1 but before its checkpoint: that row must not survive.
    pd.concat([history, history.assign(epoch=1)]).to_csv(tmp_path / "history.csv", index=False)
    # The best score so far survives too: with an impossible one, nothing may overwrite best.keras.
    state = json.loads((tmp_path / "state.json").read_text())
    (tmp_path / "state.json").write_text(json.dumps({**state, "best": 2.0}))
    best_written = (tmp_path / "best.keras").stat().st_mtime_ns

    resumed = _tiny_temporal(seed=2)
    history = training.train_temporal(resumed, train, val, tmp_path, epochs=2, **{**kw, "verbose": 2})
    assert history["epoch"].tolist() == [0, 1]
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 2 * steps
    assert training.read_state(tmp_path)["epochs_done"] == 2
    assert (tmp_path / "best.keras").stat().st_mtime_ns == best_written
    assert not list(tmp_path.glob("*.tmp*"))
    assert (history["phase"] == "train").all() and np.isfinite(history["loss"]).all()
    lr = history["learning_rate"].to_numpy()
    np.testing.assert_allclose(lr, [training.cosine_schedule(0.05, 0, 2)(e) for e in (0, 1)], rtol=1e-5)

    # Asking again for the same total does nothing but load the model.
    again = _tiny_temporal(seed=3)
    history = training.train_temporal(again, train, val, tmp_path, epochs=2, **kw)
    assert history["epoch"].tolist() == [0, 1]
    assert int(keras.ops.convert_to_numpy(again.optimizer.iterations)) == 2 * steps
    for a, b in zip(again.get_weights(), keras.saving.load_model(tmp_path / "last.keras").get_weights()):
        np.testing.assert_array_equal(a, b)

    # resume=False starts over.
    history = training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=1, resume=False, **kw)
    assert history["epoch"].tolist() == [0]


# ----------------------------------------------------------------------------------------
# Spatial: warm-up then fine-tuning
# ----------------------------------------------------------------------------------------
def _backbone_arrays(model):
    backbone = models.get_backbone(model)
    return {f"{layer.name}/{i}": np.array(w) for layer in backbone.layers
            for i, w in enumerate(layer.get_weights())}


def test_spatial_warmup_keeps_backbone_and_finetune_changes_it(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.build_spatial_model(3, image_size=32, weights=None, dropout=0.0)
    train, val = _arrays(4, channels=3, scale=1.0), _arrays(4, channels=3, seed=1, scale=1.0)
    kw = dict(head_learning_rate=0.01, finetune_learning_rate=0.01, batch_size=4, run_eagerly=True,
              verbose=0, patience=None)
    start = _backbone_arrays(model)
    head_start = model.get_layer("predictions").get_weights()[0].copy()

    # Phase 1 only: the head moves, nothing in the backbone does (weights, BN statistics).
    history = training.train_spatial(model, train, val, tmp_path, warmup_epochs=1, finetune_epochs=0, **kw)
    assert history["phase"].tolist() == ["warmup"]
    warm = _backbone_arrays(model)
    assert all(np.array_equal(start[k], warm[k]) for k in start)
    assert not np.array_equal(head_start, model.get_layer("predictions").get_weights()[0])

    # Phase 2, resumed at the boundary: conv kernels move, BatchNorm (frozen, inference mode) does not.
    history = training.train_spatial(model, train, val, tmp_path, warmup_epochs=1, finetune_epochs=1, **kw)
    assert history["epoch"].tolist() == [0, 1] and history["phase"].tolist() == ["warmup", "finetune"]
    assert np.isfinite(history["loss"]).all()
    tuned = _backbone_arrays(model)
    backbone = models.get_backbone(model)
    conv_kernels = [f"{l.name}/0" for l in backbone.layers if isinstance(l, keras.layers.Conv2D)]
    bn_arrays = [k for k in tuned if isinstance(backbone.get_layer(k.split("/")[0]), keras.layers.BatchNormalization)]
    assert len(conv_kernels) == 53 and len(bn_arrays) == 4 * 53
    assert all(not np.array_equal(warm[k], tuned[k]) for k in conv_kernels)
    assert all(np.array_equal(warm[k], tuned[k]) for k in bn_arrays)
    # a fresh optimizer for phase 2: it has taken phase 2's single step only
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1
    state = training.read_state(tmp_path)
    assert state["epochs_done"] == 2 and state["phase"] == "finetune"


# ----------------------------------------------------------------------------------------
# Overfitting a handful of real clips
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def real_rawframes(tmp_path_factory):
    """Five real HMDB51 clips extracted (first 24 frames, short side 64, DIS fast flow) once per session."""
    extract = pytest.importorskip("utils.extract")
    videos = sorted(CLIPS.glob("*/*.avi"))[:5]
    if len(videos) < 5:
        pytest.skip(f"needs 5 clips in {CLIPS}")
    out = tmp_path_factory.mktemp("rawframes")
    summary = extract.extract_dataset(CLIPS, out, method="dis-fast", workers=1, videos=videos,
                                      short_side=64, max_frames=24, progress=False)
    assert summary.failed == 0, summary.failures
    rows = []
    for label, video in enumerate(videos):
        folder = out / video.parent.name / video.stem
        rows.append(dict(frames_path=folder, label=label, subset="train",
                         n_frames=len(list(folder.glob("img_*.jpg"))),
                         n_flows=len(list(folder.glob("flow_x_*.jpg")))))
    return pd.DataFrame(rows)


def test_small_temporal_model_overfits_real_clips(real_rawframes, tmp_path):
    generators = pytest.importorskip("utils.generators")
    index = real_rawframes
    assert (index["n_flows"] >= 10).all()
    # one batch of all 20 stacks: BatchNorm's batch statistics are then those of the whole set
    data = generators.FlowStacks(index, training=False, image_size=48, stack_length=10, batch_size=20,
                                 stacks_per_video=4)
    assert len(data) == 1
    keras.utils.set_random_seed(0)
    model = models.build_temporal_model(len(index), image_size=48, stack_length=10, width=0.125, dropout=0.0)
    # AdamW memorises these 20 inputs in ~15 steps; SGD (momentum 0.9) needs ~25-30
    history = training.train_temporal(model, data, data, tmp_path, epochs=20, learning_rate=1e-3,
                                      optimizer="adamw", patience=None, verbose=0)
    shown = history[["epoch", "loss", "accuracy", "val_accuracy"]].to_string()
    assert history["accuracy"].iloc[-1] >= 0.9 - 1e-6, shown                    # training mode (batch statistics)
    _, accuracy, *_ = model.evaluate(data, verbose=0)
    assert accuracy >= 0.9 - 1e-6, shown                                        # inference mode (moving statistics)


# ----------------------------------------------------------------------------------------
# Set-up: presets, mixed precision, data parallelism
# ----------------------------------------------------------------------------------------
def test_default_settings_per_dataset():
    demo = training.default_settings("spatial", "demo")
    gpu = training.default_settings("spatial", "hmdb51", finetune_epochs=3, batch_size=None)
    assert gpu["image_size"] == 224 and gpu["finetune_epochs"] == 3 and gpu["batch_size"] == 32
    assert demo["image_size"] < 224
    assert training.default_settings("temporal", "/some/path")["width"] == 1.0
    with pytest.raises(KeyError, match="epoch"):
        training.default_settings("temporal", "demo", epoch=3)


def test_from_scratch_spatial_presets_skip_the_warm_up():
    for dataset in ("demo", "hmdb51"):
        scratch = training.default_settings("spatial", dataset, pretrained=False)
        assert scratch["warmup_epochs"] == 0
    assert training.default_settings("spatial", "hmdb51", pretrained=False)["finetune_learning_rate"] == 0.01
    assert training.default_settings("spatial", "demo", pretrained=False)["optimizer"] == "adamw"
    assert training.default_settings("spatial", "demo", pretrained=False, warmup_epochs=1)["warmup_epochs"] == 1
    assert training.default_settings("temporal", "demo", pretrained=False) == training.default_settings("temporal", "demo")


@pytest.mark.backend_smoke
def test_mixed_precision_keeps_the_softmax_in_float32():
    try:
        info = training.configure(seed=0, mixed_precision=True)
        assert info["policy"] == "mixed_float16"
        model = models.build_temporal_model(3, image_size=32, stack_length=2, width=0.125, dropout=0.0)
        assert model.get_layer("conv1_conv").compute_dtype == "float16"
        assert model.get_layer("predictions").compute_dtype == "float32"
        training.compile_model(model, run_eagerly=keras.backend.backend() != "jax")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        x, y = _arrays(4)
        loss = float(model.train_on_batch(x, y, return_dict=True)["loss"])
        assert np.isfinite(loss)
        assert np.asarray(model.predict_on_batch(x)).dtype == np.float32
    finally:
        training.configure(seed=0, mixed_precision=False)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_data_parallel_is_refused_off_jax():
    if keras.backend.backend() == "jax":
        pytest.skip("this checks the error message of the other backends")
    with pytest.raises(ValueError, match="JAX"):
        training.configure(data_parallel=True)


@pytest.mark.skipif(__import__("importlib").util.find_spec("jax") is None, reason="jax is not installed")
def test_data_parallel_trains_on_two_jax_cpu_devices(tmp_path):
    """keras.distribution.DataParallel over 2 (virtual) CPU devices, in a fresh JAX process."""
    script = textwrap.dedent(f"""
        import sys, numpy as np, keras
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from utils import models, training
        info = training.configure(seed=0, data_parallel=True)
        assert len(info["distribution"]["devices"]) == 2, info
        model = models.build_temporal_model(3, image_size=32, stack_length=2, width=0.125, dropout=0.0)
        kernel = model.get_layer("conv1_conv").kernel
        assert len(kernel.value.sharding.device_set) == 2      # replicated on both devices
        rng = np.random.default_rng(0)
        x = rng.normal(0, 0.3, (8, 32, 32, 4)).astype("float32"); y = np.arange(8) % 3
        history = training.train_temporal(model, (x, y), (x[:6], y[:6]), {str(tmp_path)!r}, epochs=1,
                                          learning_rate=0.05, batch_size=4, patience=None, verbose=0)
        assert history["epoch"].tolist() == [0] and np.isfinite(history["loss"]).all()
        print("DATA_PARALLEL_OK", info["distribution"]["devices"])
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "DATA_PARALLEL_OK" in result.stdout, result.stderr[-3000:]
