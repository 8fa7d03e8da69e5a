"""The memory estimate made before training (issue 22, case 13): a batch that cannot fit is refused
before the first step, with the figures and a batch that fits, instead of an out-of-memory kill."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from utils import memory, models, training

GIB = 1024 ** 3


class Batches(keras.utils.PyDataset):
    """Stands for a generator: only its batch size and loader settings matter to the estimate."""

    def __init__(self, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.batch_size = batch_size

    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise AssertionError("the estimate must not draw a batch")


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend the CPU has ``GiB`` available."""
    def set_available(gib):
        monkeypatch.setattr(memory, "training_devices", lambda: ("CPU", 1))
        monkeypatch.setattr(memory, "host_memory_available", lambda: (int(gib * GIB), "test machine"))
    return set_available


def compiled(model):
    training.compile_model(model, "sgd", 0.01, 5e-4, False, False)
    training.build_optimizer(model)
    return model


def test_the_papers_temporal_stream_at_batch_256_does_not_fit_24_gib(cpu_with):
    cpu_with(22.8)                       # what this 24 GiB machine has available when idle
    model = compiled(models.build_temporal_model(51, image_size=224, stack_length=10))
    data = Batches(256, workers=2)
    with pytest.raises(memory.BatchTooLarge) as refused:
        memory.check_training_fits(model, data)
    message = str(refused.value)
    assert "temporal_cnn_m_2048_w1: a training step at batch 256 needs about 26.2 GiB on the CPU" in message
    assert "and it has 22.8 GiB (test machine): it does not fit; train with batch" in message
    assert "-p temporal_batch_size=" in message and memory.SKIP_VARIABLE in message
    estimate = memory.estimate_training_memory(model, 256, data)
    largest = estimate.largest_batch()
    assert 128 <= largest < 256 and largest % 8 == 0
    assert estimate.fits(largest) and not estimate.fits(largest + 8)
    assert memory.optimizer_slots(model) == pytest.approx(1.0)          # SGD: one momentum per weight
    assert estimate.batches_held == 10 + 2 + 2                           # the loader's queue, its workers, two in use


def test_the_estimate_follows_the_model(cpu_with):
    """Parameters (weights, gradients, slots), twice the layer outputs, and the input batches held."""
    cpu_with(1000)
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)           # 8*8*4 = 256 values
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(hidden))  # 256 + 2
    model = compiled(keras.Model(inputs, outputs))
    assert memory.layer_output_values(model) == 256 + 256 + 2
    estimate = memory.estimate_training_memory(model, 10, (np.zeros((10, 8, 8, 3)), np.zeros(10)))
    params = model.count_params()
    assert estimate.parameter_bytes == params * 4 * 3                     # weights, gradients, momentum
    assert estimate.activation_bytes_per_input == (256 + 256 + 2) * 4 * 2
    assert estimate.input_bytes_per_batch == 10 * 8 * 8 * 3 * 4 and estimate.batches_held == 2
    assert estimate.device_need() == params * 4 * 2 + 10 * (514 * 8) + 2 * 10 * 192 * 4   # weights already there


def test_training_refuses_a_batch_that_does_not_fit_before_the_first_epoch(tmp_path, cpu_with, monkeypatch):
    cpu_with(0.001)                                                   # 1 MiB
    model = models.build_temporal_model(2, image_size=32, stack_length=2, width=0.125)
    x, y = np.zeros((8, 32, 32, 4), np.float32), np.zeros(8, np.int32)
    with pytest.raises(memory.BatchTooLarge, match=r"temporal_cnn_m_2048_w0.125: a training step at batch 4 needs"):
        training.train_temporal(model, (x, y), None, tmp_path, epochs=1, patience=None, batch_size=4, verbose=0)
    assert not (tmp_path / training.LAST_FILE).exists() and not (tmp_path / training.HISTORY_FILE).exists()
    monkeypatch.setenv(memory.SKIP_VARIABLE, "1")                     # the way round the estimate
    training.train_temporal(model, (x, y), None, tmp_path, epochs=1, patience=None, batch_size=4, verbose=0)
    assert (tmp_path / training.LAST_FILE).is_file()


def test_the_demo_presets_fit_a_small_machine(cpu_with):
    cpu_with(4)
    demo = training.default_settings("temporal", "demo")
    model = compiled(models.build_temporal_model(9, image_size=demo["image_size"], stack_length=10, width=0.25))
    assert memory.check_training_fits(model, Batches(demo["batch_size"], workers=2)).fits()


def test_available_memory_is_read_from_this_machine():
    available, source = memory.host_memory_available()
    assert available is None or available > 0 and source != "unknown"
