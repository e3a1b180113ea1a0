"""Keras 3 on the PyTorch backend, for real: a Keras model trained through batchsage (recommend and
fit), then ``model.fit`` with the recommended arguments reaching the target; the Keras settings
(accumulation, warmup), the noise-scale callback and the Keras Tuner hypermodel."""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import numpy as np
import pytest
import torch

# Under make test (BATCHSAGE_REQUIRE_EXTRAS=1) the extras are installed: a missing one fails here.
# (Importing the integration before Keras selects Keras's torch backend.)
REQUIRED = os.environ.get("BATCHSAGE_REQUIRE_EXTRAS") == "1"
if not REQUIRED:
    pytest.importorskip("batchsage.integrations.keras")

import batchsage  # noqa: E402
from batchsage.integrations import keras as bk  # noqa: E402
from batchsage.live import fit  # noqa: E402
from batchsage.task import TaskError  # noqa: E402

keras = bk.keras

TARGET = 0.88
# Keras Tuner 1.4 calls threading.currentThread(); Keras 3.15's torch variables predate NumPy 2's copy=.
pytestmark = [pytest.mark.filterwarnings("ignore:currentThread\\(\\) is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:getName\\(\\) is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]


def blobs(seed: int = 7) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Four Gaussian classes in 16 dimensions: about 92 % reachable; the base lr needs hundreds of
    steps to 88 %, a well-chosen one a few dozen."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, 16)) * 0.8

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 4, n)
        return (centers[labels] + rng.normal(size=(n, 16))).astype("float32"), labels

    return draw(4096), draw(1024)


(X, Y), (X_VAL, Y_VAL) = blobs()


def build_model(units: int = 32, lr: float = 0.0005) -> keras.Model:
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


class StopAtTarget(keras.callbacks.Callback):
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None and logs["val_accuracy"] >= TARGET:
            self.model.stop_training = True


@pytest.fixture(scope="module")
def task() -> batchsage.Task:
    torch.set_num_threads(1)
    return bk.task_from_keras(build_model, X, Y, validation_data=(X_VAL, Y_VAL), metric="accuracy",
                              target=TARGET, batch_size=16, max_epochs=50, eval_every_samples=512)


def test_the_task_mirrors_the_keras_model(task: batchsage.Task) -> None:
    assert task.base_lr == 0.0005 and task.base_batch_size == 16
    assert task.higher_is_better and task.metric_name == "accuracy"
    assert task.max_samples == 50 * 4096
    assert task.resolved_lr_scaling() == "linear"  # SGD's twin
    model = task.make_model()
    optimizer = task.make_optimizer(model.parameters(), 0.1)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == pytest.approx(0.9)
    # The metric is Keras's sparse categorical accuracy of the model's logits.
    keras_net = bk.keras_model(model)
    expected = float(np.mean(np.argmax(keras.ops.convert_to_numpy(keras_net(X_VAL)), axis=1) == Y_VAL))
    assert task.metric_fn(model, task.val_data) == pytest.approx(expected)


def test_recommend_then_model_fit_with_its_arguments_reaches_the_target(task: batchsage.Task) -> None:
    rec = batchsage.recommend(task, device="cpu", budget_seconds=2, progress=False)
    model = build_model()
    arguments = bk.apply_recommendation(model, rec)
    assert arguments == {"batch_size": rec.micro_batch_size}
    config = model.optimizer.get_config()
    lr = config["learning_rate"]["config"]["lr"] if rec.warmup_steps else config["learning_rate"]
    assert lr == pytest.approx(rec.lr, rel=1e-6)
    accumulation = rec.accumulation_steps if rec.accumulation_steps > 1 else None
    assert config["gradient_accumulation_steps"] == accumulation
    # A budget of optimiser updates, not epochs: at a large batch an epoch is a handful of updates.
    epochs = math.ceil(300 * rec.batch_size / len(X))
    history = model.fit(X, Y, epochs=epochs, validation_data=(X_VAL, Y_VAL), verbose=0,
                        callbacks=[StopAtTarget()], **arguments)
    assert max(history.history["val_accuracy"]) >= TARGET, (rec, history.history["val_accuracy"])


def test_batchsage_fit_trains_the_keras_model_to_the_target(task: batchsage.Task, tmp_path: Any) -> None:
    result = fit(task, device="cpu", out=tmp_path, progress=False)
    assert result.reached_target, result
    trained = bk.keras_model(result.model)
    accuracy = trained.evaluate(X_VAL, Y_VAL, verbose=0, return_dict=True)["accuracy"]
    assert accuracy == pytest.approx(result.final_metric, abs=1e-6)
    # The weights file is a plain state_dict with stable names: it loads into a fresh model.
    fresh = task.make_model()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt"))
    assert task.metric_fn(fresh, task.val_data) == pytest.approx(result.final_metric, abs=1e-6)


def test_a_copy_is_a_new_keras_model_with_the_same_weights(task: batchsage.Task) -> None:
    original = task.make_model()
    twin = copy.deepcopy(original)
    assert bk.keras_model(twin) is not bk.keras_model(original)
    assert list(twin.state_dict()) == list(original.state_dict()) == [f"weights.{i}" for i in range(4)]
    x = torch.from_numpy(X[:8])
    assert torch.equal(twin(x), original(x))
    with torch.no_grad():
        next(iter(twin.parameters())).add_(1.0)
    assert not torch.equal(twin(x), original(x))


def test_models_are_seeded_by_torch_and_leave_python_random_alone(task: batchsage.Task) -> None:
    import random

    state = random.getstate()
    torch.manual_seed(3)
    first = task.make_model()
    torch.manual_seed(3)
    second = task.make_model()
    assert random.getstate() == state
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))


def test_accumulation_in_keras_equals_one_large_batch() -> None:
    """``batch_size`` = micro-batch and ``gradient_accumulation_steps`` = accumulation make the same
    update as the whole batch at once (what batchsage measured)."""
    answer = {"recommended": {"batch_size": 32, "micro_batch_size": 8, "accumulation_steps": 4, "lr": 0.05,
                              "warmup_steps": 0}}
    whole = {"recommended": {**answer["recommended"], "micro_batch_size": 32, "accumulation_steps": 1}}
    accumulated, single = build_model(), build_model()
    single.set_weights(accumulated.get_weights())
    for model, rec in ((accumulated, answer), (single, whole)):
        arguments = bk.apply_recommendation(model, rec)
        model.fit(X[:64], Y[:64], epochs=1, shuffle=False, verbose=0, **arguments)
    assert accumulated.optimizer.gradient_accumulation_steps == 4
    for a, b in zip(accumulated.get_weights(), single.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_warmup_schedule_counts_optimizer_updates() -> None:
    schedule = bk.WarmupSchedule(0.8, warmup_steps=4, accumulation_steps=2)
    values = [float(keras.ops.convert_to_numpy(schedule(step))) for step in range(10)]
    expected = [0.8 * min(1.0, (step // 2 + 1) / 4) for step in range(10)]
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    optimizer = bk.recommended_optimizer(
        {"micro_batch_size": 8, "accumulation_steps": 2, "lr": 0.8, "warmup_steps": 4}, "adam")
    config = optimizer.get_config()
    assert isinstance(optimizer, keras.optimizers.Adam) and config["gradient_accumulation_steps"] == 2
    assert config["learning_rate"]["class_name"] == "WarmupSchedule"
    assert config["learning_rate"]["config"] == {"lr": 0.8, "warmup_steps": 4, "accumulation_steps": 2}
    rebuilt = keras.optimizers.Adam.from_config(config)  # serialisable: saved models load it
    assert rebuilt.get_config()["learning_rate"]["config"] == {"lr": 0.8, "warmup_steps": 4,
                                                              "accumulation_steps": 2}


def test_the_optimizer_twins() -> None:
    adam = bk.torch_optimizer_for(keras.optimizers.Adam(beta_1=0.8, epsilon=1e-6, weight_decay=0.01))
    made = adam([torch.nn.Parameter(torch.zeros(1))], 0.01)
    assert isinstance(made, torch.optim.AdamW)
    assert made.defaults["betas"] == (pytest.approx(0.8), pytest.approx(0.999))
    assert made.defaults["eps"] == pytest.approx(1e-6)
    assert made.defaults["weight_decay"] == pytest.approx(0.01)
    nesterov = bk.torch_optimizer_for(keras.optimizers.SGD(momentum=0.5, nesterov=True))
    assert nesterov([torch.nn.Parameter(torch.zeros(1))], 0.1).defaults["nesterov"] is True
    with pytest.raises(TaskError, match="no PyTorch twin of the Keras optimizer Ftrl: pass torch_optimizer="):
        bk.torch_optimizer_for(keras.optimizers.Ftrl())


@pytest.mark.parametrize(("arguments", "needle"), [
    ({"build_model": lambda: keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])},
     "the model is not compiled: compile it with a loss, or pass loss="),
    ({"metric": "poisson_or_not"}, "unknown Keras metric"),
    ({"metric": keras.metrics.MeanIoU(num_classes=4, name="custom_score")},
     "cannot tell whether a higher 'custom_score' is better: pass higher_is_better="),
    ({"x": X[:10]}, "inputs and targets have different numbers of samples"),
    ({"x": keras.utils.PyDataset(), "y": None}, "a keras.utils.PyDataset yields whole batches"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
])
def test_bad_keras_inputs_are_one_line_errors(arguments: dict[str, Any], needle: str) -> None:
    base: dict[str, Any] = {"build_model": build_model, "x": X, "y": Y, "validation_data": (X_VAL, Y_VAL),
                            "metric": "accuracy", "target": TARGET}
    with pytest.raises(TaskError, match=needle) as caught:
        bk.task_from_keras(**{**base, **arguments})
    assert "\n" not in str(caught.value)


def test_loss_as_metric_is_lower_is_better() -> None:
    task = bk.task_from_keras(build_model, X[:256], Y[:256], validation_data=(X_VAL[:128], Y_VAL[:128]),
                              target=0.3)
    assert task.metric_name == "val_loss" and not task.higher_is_better
    model = task.make_model()
    keras_net = bk.keras_model(model)
    expected = keras_net.evaluate(X_VAL[:128], Y_VAL[:128], verbose=0, return_dict=True)["loss"]
    assert task.metric_fn(model, task.val_data) == pytest.approx(expected, rel=1e-5)


# ---- the noise scale during model.fit --------------------------------------------------------------


def _bn_model() -> keras.Model:
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def test_noise_callback_measures_without_changing_training() -> None:
    plain, watched = _bn_model(), _bn_model()
    watched.set_weights(plain.get_weights())
    callback = bk.NoiseScaleCallback(every=2, micro_batches=4, report_every=4)
    plain.fit(X[:1024], Y[:1024], batch_size=64, epochs=2, shuffle=False, verbose=0)
    history = watched.fit(X[:1024], Y[:1024], batch_size=64, epochs=2, shuffle=False, verbose=0,
                          callbacks=[callback])
    # Same weights, BatchNorm statistics included: the measuring passes leave training as it was.
    for a, b in zip(plain.get_weights(), watched.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    estimate = callback.estimate()
    assert estimate is not None and estimate.measurements == 16  # every other step of 32
    assert estimate.batch_size == 64 and estimate.micro_batch_size == 16
    assert math.isfinite(estimate.b_simple) and estimate.b_simple > 0
    assert len(history.history["noise_scale"]) == 2
    assert history.history["noise_scale"][-1] == estimate.b_simple
    assert len(callback.trajectory) == 4
    assert "train_step" not in watched.__dict__  # the wrapper is gone after fit


# ---- Keras Tuner ------------------------------------------------------------------------------------


def test_hypermodel_trials_use_the_recommended_batch_and_lr(tmp_path: Any) -> None:
    if not REQUIRED:
        pytest.importorskip("keras_tuner")
    import keras_tuner

    rec = {"recommended": {"batch_size": 64, "micro_batch_size": 32, "accumulation_steps": 2, "lr": 0.02,
                           "warmup_steps": 3}}
    seen: list[tuple[int, float, int]] = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if batch == 0:
                config = self.model.optimizer.get_config()
                seen.append((self.params["steps"], config["learning_rate"]["config"]["lr"],
                             config["gradient_accumulation_steps"]))

    hypermodel = bk.BatchsageHyperModel(lambda hp: build_model(units=hp.Int("units", 8, 32, step=8)), rec)
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy", max_trials=2,
                                     directory=str(tmp_path), project_name="search", seed=0)
    tuner.search(X[:512], Y[:512], epochs=1, batch_size=7, validation_data=(X_VAL[:256], Y_VAL[:256]),
                 verbose=0, callbacks=[Record()])
    assert seen == [(16, 0.02, 2)] * 2  # 512 samples in micro-batches of 32, whatever batch_size was passed
    assert set(tuner.get_best_hyperparameters()[0].values) == {"units"}


def test_an_uncompiled_model_takes_loss_and_optimizer() -> None:
    binary = (Y[:256] == 0).astype("float32")[:, None]

    def build() -> keras.Model:
        return keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, activation="relu"),
                                 keras.layers.Dense(1, activation="sigmoid")])

    task = bk.task_from_keras(build, X[:256], binary, validation_data=(X[:256], binary),
                              loss="binary_crossentropy", optimizer=keras.optimizers.Adam(0.003),
                              metric="val_accuracy", target=0.9)
    assert task.metric_name == "accuracy" and task.higher_is_better
    assert task.base_lr == 0.003 and task.resolved_lr_scaling() == "sqrt"  # Adam's twin
    model = task.make_model()
    predictions = keras.ops.convert_to_numpy(bk.keras_model(model)(X[:256]))
    expected = float(np.mean((predictions > 0.5) == (binary > 0.5)))  # binary accuracy, as compile() picks
    assert task.metric_fn(model, task.val_data) == pytest.approx(expected)
