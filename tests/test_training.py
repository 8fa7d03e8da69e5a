"""utils.training: checkpoints, resuming (epochs and optimizer state), the two spatial phases, overfitting real clips.

Small models and in-memory arrays wherever possible; ResNet-50 steps run eagerly (cheaper on a
CPU than tracing them). The overfit test extracts a few real HMDB51 clips (tests/data/hmdb51_clips)
with a fast flow method once per session.
"""
import json
import os
import re
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


class _Killed(Exception):
    """A run stopped from outside (a crash, a kill) right after an epoch was committed."""


def _kill_after(monkeypatch, epochs: int) -> None:
    """Make training stop like a killed process once ``epochs`` epochs are on disk (checkpoint, state)."""
    commit = training._Commit.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        commit(self, epoch, logs)
        if epoch + 1 == epochs:
            raise _Killed(f"killed after epoch {epochs}")
    monkeypatch.setattr(training._Commit, "on_epoch_end", on_epoch_end)


class _InOrder(keras.utils.PyDataset):
    """``(x, y)`` arrays in fixed batches, the same every epoch (only dropout is random then)."""

    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, i):
        batch = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[batch], self.y[batch]


# ----------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------
@pytest.mark.backend_smoke
def test_resume_continues_epochs_and_optimizer_state(tmp_path, monkeypatch):
    train, val = _arrays(8), _arrays(4, seed=1)
    kw = dict(learning_rate=0.05, batch_size=4, verbose=0, patience=None)
    steps = 2                                                       # 8 samples / batch 4

    _kill_after(monkeypatch, 1)
    with pytest.raises(_Killed):
        training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=2, **kw)
    monkeypatch.undo()
    history = training.read_history(tmp_path)
    assert history["epoch"].tolist() == [0]
    assert training.read_state(tmp_path)["epochs_done"] == 1
    assert {p.name for p in tmp_path.iterdir()} == {"best.keras", "last.keras", "history.csv", "state.json",
                                                    ".lock"}          # utils.writers: one run per folder
    # The best epoch so far (the only one): best.keras is that epoch's last.keras, saved once.
    assert (tmp_path / "best.keras").read_bytes() == (tmp_path / "last.keras").read_bytes()

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
    # Replacing last.keras left best.keras (once the same file) as it was.
    assert (tmp_path / "best.keras").read_bytes() != (tmp_path / "last.keras").read_bytes()
    assert int(keras.ops.convert_to_numpy(keras.saving.load_model(tmp_path / "best.keras").optimizer.iterations)) == steps
    assert not list(tmp_path.glob("*.tmp*"))
    assert (history["phase"] == "train").all() and np.isfinite(history["loss"]).all()
    # The resumed epoch has the rate it had in the plan of the uninterrupted run.
    lr = history["learning_rate"].to_numpy()
    np.testing.assert_allclose(lr, [training.cosine_schedule(0.05, 0, 2)(e) for e in range(2)], rtol=1e-5)

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


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function's tracing")
def test_the_train_step_is_traced_once_per_fit(tmp_path):
    """The optimizer is built before ``fit``: on TensorFlow, one built inside the first trace makes
    ``tf.function`` trace the whole train step twice (24 s of the demo's spatial stream)."""
    model = _tiny_temporal()
    traces = []
    original = model.train_step
    model.train_step = lambda data: traces.append(1) or original(data)   # Python runs only while tracing
    training.train_temporal(model, _arrays(8), None, tmp_path, epochs=2, learning_rate=0.05, batch_size=4,
                            verbose=0, patience=None, optimizer="adamw")
    assert model.optimizer.built
    assert len(traces) == 1, f"the train step was traced {len(traces)} times"


def test_extending_a_finished_run_is_refused_or_an_explicit_warm_restart(tmp_path):
    """Before: 3 epochs extended to 6 trained epochs 4-6 at the floor rate (0.1, .0753, .0258, .001, .001, .001)."""
    train, val = _arrays(8), _arrays(4, seed=1)
    kw = dict(learning_rate=0.1, batch_size=4, verbose=0, patience=None)
    training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=3, **kw)
    files = {name: (tmp_path / name).read_bytes() for name in ("last.keras", "state.json", "history.csv")}
    with pytest.raises(ValueError, match=r"(?s)planned to end after epoch 3.*epochs 4-6 would all train at its "
                                         r"floor rate 0\.001.*resume=False.*warm_restart=True"):
        training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=6, **kw)
    assert files == {name: (tmp_path / name).read_bytes() for name in files}     # nothing was touched

    history = training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=6, warm_restart=True, **kw)
    cosine = [training.cosine_schedule(0.1, 0, 3)(e) for e in range(3)] + \
             [training.cosine_schedule(0.1, 3, 3)(e) for e in range(3, 6)]
    np.testing.assert_allclose(history["learning_rate"], cosine, rtol=1e-5)      # 0.1 again at epoch 4
    state = training.read_state(tmp_path)
    assert [(s["first_epoch"], s["end_epoch"], s.get("warm_restart", False)) for s in state["schedule"]] == \
        [(0, 3, False), (3, 6, True)]
    # the same plan again (a plain resume) adds nothing; fewer epochs than done only loads the model
    training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=6, **kw)
    training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=4, **kw)
    assert len(training.read_state(tmp_path)["schedule"]) == 2 and len(training.read_history(tmp_path)) == 6


def test_a_resumed_run_draws_the_dropout_masks_of_an_uninterrupted_one(tmp_path, monkeypatch):
    x, y = _arrays(8)
    data, val = _InOrder(x, y, 4), _arrays(4, seed=1)
    kw = dict(learning_rate=0.05, verbose=0, patience=None)

    def model(seed):
        keras.utils.set_random_seed(seed)
        return models.build_temporal_model(3, image_size=32, stack_length=2, width=0.125, dropout=0.5)

    straight = model(0)
    training.train_temporal(straight, data, val, tmp_path / "straight", epochs=3, **kw)
    _kill_after(monkeypatch, 1)
    with pytest.raises(_Killed):
        training.train_temporal(model(0), data, val, tmp_path / "resumed", epochs=3, **kw)
    monkeypatch.undo()
    resumed = model(5)                       # other initial weights and dropout seeds: all must come back
    training.train_temporal(resumed, data, val, tmp_path / "resumed", epochs=3, **kw)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):   # before: up to 0.08 apart
        np.testing.assert_array_equal(a, b)


def test_resume_with_other_settings_is_refused(tmp_path):
    train, val = _arrays(8), _arrays(4, seed=1)
    kw = dict(batch_size=4, verbose=0, patience=None)
    training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=1, learning_rate=0.05, **kw)
    before = (tmp_path / "last.keras").read_bytes()
    with pytest.raises(ValueError, match=r"other settings \(learning_rate: 0.05 there, 0.1 now\).*resume=False"):
        training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=2, learning_rate=0.1, **kw)
    with pytest.raises(ValueError, match="train_data.fingerprint"):
        training.train_temporal(_tiny_temporal(), _arrays(8, seed=5), val, tmp_path, epochs=2,
                                learning_rate=0.05, **kw)
    with pytest.raises(ValueError, match="model.parameters"):
        wider = models.build_temporal_model(3, image_size=32, stack_length=2, width=0.25, dropout=0.0)
        training.train_temporal(wider, train, val, tmp_path, epochs=2, learning_rate=0.05, **kw)
    with pytest.raises(ValueError, match="run_info.flow_method: 'tvl1' there, 'dis' now"):
        training.train_temporal(_tiny_temporal(), train, val, tmp_path / "b", epochs=1, learning_rate=0.05,
                                run_info={"flow_method": "tvl1"}, **kw)
        training.train_temporal(_tiny_temporal(), train, val, tmp_path / "b", epochs=2, learning_rate=0.05,
                                run_info={"flow_method": "dis"}, **kw)
    # What the run's data pipeline and numerics are: batch size (arrays), steps per epoch, precision.
    with pytest.raises(ValueError, match="batch_size: 4 there, 2 now"):
        training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=2, learning_rate=0.05,
                                **{**kw, "batch_size": 2})
    with pytest.raises(ValueError, match="steps_per_epoch: None there, 1 now"):
        training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=2, learning_rate=0.05,
                                steps_per_epoch=1, **kw)
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        with pytest.raises(ValueError, match="policy: 'float32' there, 'mixed_float16' now"):
            training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=2, learning_rate=0.05, **kw)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert (tmp_path / "last.keras").read_bytes() == before           # nothing was touched
    history = training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=1, learning_rate=0.1,
                                      resume=False, **kw)
    assert history["epoch"].tolist() == [0]


def test_early_stopping_resumes_with_its_counter(tmp_path, monkeypatch):
    train, val = _arrays(8), _arrays(4, seed=1)
    kw = dict(learning_rate=0.05, batch_size=4, verbose=0, patience=3)
    _kill_after(monkeypatch, 2)
    with pytest.raises(_Killed):
        training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=6, **kw)
    monkeypatch.undo()
    state = training.read_state(tmp_path)
    assert state["early_stopping"]["phase"] == "train" and state["early_stopping"]["wait"] in (0, 1)
    # Two epochs without improvement so far, against a best no epoch can beat: one more ends the run.
    state["early_stopping"].update(wait=2, best=2.0)
    (tmp_path / "state.json").write_text(json.dumps(state))
    history = training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=6, **kw)
    assert history["epoch"].tolist() == [0, 1, 2], history     # a fresh counter would have run to epoch 5
    assert training.read_state(tmp_path)["stopped_early"]


def test_a_crash_while_saving_never_replaces_a_good_checkpoint(tmp_path, monkeypatch):
    train, val = _arrays(8), _arrays(4, seed=1)
    kw = dict(learning_rate=0.05, batch_size=4, verbose=0, patience=None, epochs=3)
    _kill_after(monkeypatch, 1)
    with pytest.raises(_Killed):
        training.train_temporal(_tiny_temporal(), train, val, tmp_path, **kw)
    monkeypatch.undo()
    best, last = (tmp_path / "best.keras").read_bytes(), (tmp_path / "last.keras").read_bytes()

    # A run killed while writing best.tmp.keras left 19,647 bytes of it; the next epoch saves no best.
    (tmp_path / "best.tmp.keras").write_bytes(best[:19_647])
    state = json.loads((tmp_path / "state.json").read_text())
    (tmp_path / "state.json").write_text(json.dumps({**state, "best": 2.0}))
    _kill_after(monkeypatch, 2)
    with pytest.raises(_Killed):
        training.train_temporal(_tiny_temporal(), train, val, tmp_path, **kw)
    monkeypatch.undo()
    assert (tmp_path / "best.keras").read_bytes() == best          # before: the truncated file became best.keras
    assert not list(tmp_path.glob("*.tmp*"))
    keras.saving.load_model(tmp_path / "best.keras")

    # A write cut short in this run (disk full): the commit refuses it and keeps the good files.
    last = (tmp_path / "last.keras").read_bytes()
    real_save = keras.Model.save

    def truncated_save(model, filepath, *args, **kwargs):
        real_save(model, filepath, *args, **kwargs)
        Path(filepath).write_bytes(Path(filepath).read_bytes()[:5000])

    monkeypatch.setattr(keras.Model, "save", truncated_save)
    with pytest.raises(RuntimeError, match=r"last.tmp.keras is not a complete Keras checkpoint.*left as it was"):
        training.train_temporal(_tiny_temporal(), train, val, tmp_path, **kw)
    monkeypatch.undo()
    assert (tmp_path / "last.keras").read_bytes() == last
    assert training.read_state(tmp_path)["epochs_done"] == 2
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(ValueError, match="not a complete Keras checkpoint"):
        training.check_keras_file(tmp_path / "history.csv")


def test_best_checkpoint_is_copied_where_hard_links_fail(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(95, "Operation not supported")
    monkeypatch.setattr(training.os, "link", no_links)
    training.train_temporal(_tiny_temporal(), _arrays(8), _arrays(4, seed=1), tmp_path, epochs=1,
                            learning_rate=0.05, batch_size=4, verbose=0, patience=None)
    best, last = tmp_path / "best.keras", tmp_path / "last.keras"
    assert best.read_bytes() == last.read_bytes() and not best.samefile(last)


def _choose_epoch(run_dir, best_epoch: int) -> None:
    """Make epoch ``best_epoch`` (1-based) the best on validation, as a run's outcome could be."""
    history = training.read_history(run_dir)
    history["val_accuracy"] = np.where(history["epoch"] == best_epoch - 1, 0.9, 0.1)
    history.to_csv(Path(run_dir) / training.HISTORY_FILE, index=False)


def test_the_final_fit_repeats_the_validated_rates_and_is_the_model_evaluation_tests(tmp_path, monkeypatch, capsys):
    from utils import config as config_module
    from utils import evaluation as ev
    from utils.config import Config

    monkeypatch.setattr(config_module, "MODELS_DIR", tmp_path)
    cfg = Config(dataset="demo")
    run = cfg.stream_dir("temporal")
    train, val = _arrays(8), _arrays(4, seed=1)
    both = (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
    kw = dict(learning_rate=0.1, batch_size=4, verbose=0)
    history = training.train_temporal(_tiny_temporal(), train, val, run, epochs=4, patience=None, **kw)
    assert ev.choose_checkpoint(cfg, "temporal") == "best"              # no final fit (yet)
    _choose_epoch(run, 2)
    assert training.refit_plan(run)["epochs"] == 2

    refit = training.refit_temporal(_tiny_temporal(), both, run, **kw)
    # Epochs 1-2 at the rates the validated run had there (before: a new cosine over 2 epochs, 0.1 and 0.0505).
    np.testing.assert_allclose(refit["learning_rate"], history["learning_rate"][:2], rtol=1e-6)
    assert refit["epoch"].tolist() == [0, 1] and refit["val_accuracy"].isna().all()
    refit_dir = run / training.REFIT_DIR
    assert (refit_dir / "last.keras").is_file() and not (refit_dir / "best.keras").exists()
    settings = training.read_state(refit_dir)["settings"]
    assert settings["val_data"] is None and settings["train_data"]["arrays"][0] == 12
    assert settings["run_info"]["refit"] == {"epochs": 2}
    # The default of notebooks 04/05 (checkpoint=None) tests it; the fusion weight stays with best.keras.
    assert training.refit_problem(run) is None
    assert ev.choose_checkpoint(cfg, "temporal") == "refit" == ev.choose_checkpoint(cfg, "temporal", "refit")
    assert ev.checkpoint_path(cfg, "temporal", "refit") == refit_dir / "last.keras"
    assert ev.choose_checkpoint(cfg, "temporal", "last") == "last"
    assert ev.validation_checkpoint("refit") == "best" and ev.validation_checkpoint("last") == "last"

    # Another epoch count chosen (the validated run changed): the final fit trains again, it never extends.
    _choose_epoch(run, 3)
    assert "another plan (2 epochs" in training.refit_problem(run)
    assert ev.choose_checkpoint(cfg, "temporal") == "best" and "testing best.keras instead" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="another plan"):
        ev.choose_checkpoint(cfg, "temporal", "refit")
    refit = training.refit_temporal(_tiny_temporal(), both, run, **kw)
    assert "trains again from its first epoch" in capsys.readouterr().out
    np.testing.assert_allclose(refit["learning_rate"], history["learning_rate"][:3], rtol=1e-6)
    assert training.read_state(refit_dir)["settings"]["run_info"]["refit"] == {"epochs": 3}
    assert ev.choose_checkpoint(cfg, "temporal") == "refit"

    # An unfinished validated run has nothing to refit; starting it over removes the old final fit.
    state = training.read_state(run)
    (run / training.STATE_FILE).write_text(json.dumps({**state, "epochs_done": 3}))
    with pytest.raises(ValueError, match="done 3 of its 4 epochs; finish it first"):
        training.refit_plan(run)
    assert ev.choose_checkpoint(cfg, "temporal") == "best"
    training.train_temporal(_tiny_temporal(), train, val, run, epochs=1, patience=None, resume=False, **kw)
    assert not refit_dir.exists()
    with pytest.raises(ValueError, match="early stopping needs val_ds"):
        training.train_temporal(_tiny_temporal(), both, None, tmp_path / "x", epochs=1, patience=2, **kw)


def test_hmdb51_and_ucf101_refit_by_default_and_the_demo_says_why_not():
    """The paper's protocol is the default run: notebooks 02/03 refit by preset, 04/05 test the final fit."""
    for stream in ("spatial", "temporal"):
        assert training.default_settings(stream, "hmdb51")["refit"] is True
        assert training.default_settings(stream, "ucf101")["refit"] is True
        assert training.default_settings(stream, "demo")["refit"] is False
        assert training.default_settings(stream, "hmdb51", refit=False)["refit"] is False
    assert "6 minutes" in training.DEMO_REFIT
    notebooks = REPO_ROOT / "notebooks"

    def parameters(name):
        cells = json.loads((notebooks / name).read_text())["cells"]
        cell = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
        return "".join(cell["source"]), "".join("".join(c["source"]) for c in cells)

    for name, call in (("02_spatial_stream_resnet50.ipynb", "training.refit_spatial("),
                       ("03_temporal_stream.ipynb", "training.refit_temporal(")):
        params, code = parameters(name)
        assert re.search(r"^refit = None\b", params, re.M) and "refit=refit)" in code and call in code, name
        assert 'if s["refit"]:' in code and "training.DEMO_REFIT" in code, name
    for name in ("04_fusion_one_frame.ipynb", "05_fusion_whole_video.ipynb"):
        params, code = parameters(name)
        assert re.search(r"^checkpoint = None\b", params, re.M), name
        assert "ev.choose_checkpoint(cfg, stream, checkpoint)" in code and "checkpoint=checkpoints[stream]" in code


def _dense_with_bn(seed=0):
    """Dense + BatchNorm with every trainable variable non-zero: a decayed bias or offset would show."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, name="fc", bias_initializer=keras.initializers.Constant(0.5))(
        keras.layers.BatchNormalization(name="bn", beta_initializer=keras.initializers.Constant(0.3),
                                        gamma_initializer=keras.initializers.Constant(1.5))(inputs))
    return keras.Model(inputs, outputs)


def _decayed(kernel: np.ndarray, steps: int, lr: float = 0.01, l2: float = 5e-4, momentum: float = 0.9):
    """The paper's update with a zero data gradient: m <- 0.9 m - lr * 5e-4 w; w <- w + m."""
    w, m = kernel.astype(np.float64), 0.0
    for _ in range(steps):
        m = momentum * m - lr * l2 * w
        w = w + m
    return w


def _check_only_kernels_decayed(model, start: dict, steps: int) -> None:
    kernel = keras.ops.convert_to_numpy(model.get_layer("fc").kernel)
    np.testing.assert_allclose(kernel, _decayed(start["fc/kernel"], steps), rtol=1e-4)
    for path in ("fc/bias", "bn/gamma", "bn/beta"):                      # never decayed
        value = next(v for v in model.trainable_variables if v.path == path)
        assert np.abs(start[path]).min() > 0.2, path                     # a decay would move it
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(value), start[path])


def test_weight_decay_follows_the_papers_rule():
    """L2 5e-4 in the gradient, through momentum 0.9 (Caffe/PyTorch), on kernels only."""
    model = _dense_with_bn()
    optimizer = training.make_optimizer("sgd", learning_rate=0.01, weight_decay=5e-4)
    variables = model.trainable_variables
    optimizer.build(variables)
    start = {v.path: keras.ops.convert_to_numpy(v).copy() for v in variables}
    zeros = [keras.ops.zeros(v.shape) for v in variables]
    for _ in range(1000):
        optimizer.apply(zeros, variables)
    _check_only_kernels_decayed(model, start, 1000)
    kernel = keras.ops.convert_to_numpy(model.get_layer("fc").kernel)
    assert 0.950 < float(np.mean(kernel / start["fc/kernel"])) < 0.953   # Keras' decoupled 5e-4: 0.995
    config = optimizer.get_config()
    assert config["l2"] == 5e-4 and not config.get("weight_decay")
    assert isinstance(training.SGDWithL2.from_config(config), training.SGDWithL2)


@pytest.mark.backend_smoke
def test_weight_decay_acts_inside_fit():
    """The same rule through ``model.fit``, whose JAX trainer calls ``apply(grads)`` without the variables
    (TensorFlow's passes them): a loss with zero gradient leaves only the decay to move the weights."""
    model = _dense_with_bn()
    model.compile(optimizer=training.make_optimizer("sgd", learning_rate=0.01, weight_decay=5e-4),
                  loss=lambda y_true, y_pred: 0.0 * keras.ops.sum(y_pred))
    start = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    model.fit(x, np.zeros((40, 3), "float32"), batch_size=4, epochs=2, shuffle=False, verbose=0)   # 20 steps
    _check_only_kernels_decayed(model, start, 20)
    assert np.abs(keras.ops.convert_to_numpy(model.get_layer("fc").kernel) - start["fc/kernel"]).max() > 1e-5


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
    assert gpu["image_size"] == 224 and gpu["finetune_epochs"] == 3 and gpu["batch_size"] == training.SPATIAL_DEFAULTS["hmdb51"]["batch_size"]
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


def test_every_hmdb51_preset_number_names_its_source():
    """Each line of the HMDB51 presets says which published schedule it follows (or why it departs)."""
    import inspect
    import re

    source = inspect.getsource(training)
    for name, preset in (("SPATIAL_DEFAULTS", training.SPATIAL_DEFAULTS), ("TEMPORAL_DEFAULTS", training.TEMPORAL_DEFAULTS)):
        block = source.split(f"{name}:", 1)[1].split('"hmdb51": dict(', 1)[1].split("\n}", 1)[0]
        commented = {}
        for line in block.splitlines():
            keys = re.findall(r"(\w+)=", line.split("#", 1)[0])
            for key in keys:
                commented[key] = "#" in line and len(line.split("#", 1)[1].strip()) > 3
        assert set(commented) == set(preset["hmdb51"]), name
        assert all(commented.values()), (name, [k for k, ok in commented.items() if not ok])
        assert "the paper" in block and ("TSN" in block or name == "TEMPORAL_DEFAULTS"), name


def test_one_short_line_per_epoch(tmp_path, capsys):
    """verbose: one EpochLog line per epoch (epoch, rate, loss, accuracy, validation, seconds), no Keras bar."""
    train, val = _arrays(8), _arrays(4, seed=1)
    training.train_temporal(_tiny_temporal(), train, val, tmp_path, epochs=3, learning_rate=0.05, batch_size=4,
                            patience=None)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 3, lines
    pattern = (r"epoch [1-3]/3  lr \d\.\de[-+]\d\d  loss \d+\.\d{3}  acc \d\.\d{3}  val_loss \d+\.\d{3}  "
               r"val_acc \d\.\d{3}  \d+\.\d s")
    for k, line in enumerate(lines, start=1):
        assert re.fullmatch(pattern, line) and line.startswith(f"epoch {k}/3"), line
    training.train_temporal(_tiny_temporal(), train, val, tmp_path / "quiet", epochs=1, learning_rate=0.05,
                            batch_size=4, patience=None, verbose=0)
    assert capsys.readouterr().out == ""
