"""Keras fitting shared by a fold's trainers: compiling for a stage, the progress callback, the epoch kept.

A fold is stopped only by ``should_stop``: the progress callback ends ``fit`` at the next batch, and
:func:`fit_stages` then raises :class:`~engine.training.progress.Cancelled`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from engine.training import compiled_models
from engine.training.plan import FoldPlan
from engine.training.progress import Cancelled, Progress, ProgressFn, StopFn
from engine.training.protocols import Protocol

PROGRESS_EVERY_S = 2.0


def progress_callback(
    plan: FoldPlan,
    *,
    on_progress: ProgressFn | None,
    should_stop: StopFn | None,
    epochs: int,
    phase: str = "train",
    start: float = 0.0,
    end: float = 1.0,
):
    """Progress of ``epochs`` epochs of one phase: ``"head"`` for a head warmed up on cached features (seconds),
    then ``"train"`` for the epochs on images (minutes), from ``start`` to ``end`` of the fold's bar.

    When ``should_stop`` says so, the callback ends ``fit`` and ``raise_if_stopped`` raises ``Cancelled``.
    """
    import keras

    backbone, fold, batch_size = plan.backbone, plan.fold, plan.protocol.batch_size

    class ProgressCallback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.stopped = False

        def on_train_begin(self, logs=None):
            self.last = 0.0
            self.epoch = 0
            self.started = time.monotonic()
            self.seen = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def _send(self, batch: int, logs: dict, batches: int) -> None:
            if on_progress is None:
                return
            elapsed = time.monotonic() - self.started
            rate = self.seen / elapsed if elapsed > 0 else None
            clean = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v) or np.ndim(v) == 0}
            on_progress(Progress(backbone, fold, phase, self.epoch, epochs, batch, batches, clean, rate, start, end))
            self.last = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            self.seen += batch_size
            if should_stop and should_stop():
                self.stopped = True
                self.model.stop_training = True
            if time.monotonic() - self.last >= PROGRESS_EVERY_S:
                self._send(batch + 1, logs or {}, self.params.get("steps") or 0)

        def on_epoch_end(self, epoch, logs=None):
            steps = self.params.get("steps") or 0
            self.epoch = epoch + 1
            self._send(0, logs or {}, steps)
            self.epoch = epoch

        def raise_if_stopped(self) -> None:
            if self.stopped:
                raise Cancelled(f"{backbone} fold {fold}: cancelled")

    return ProgressCallback()


def _optimizer(protocol: Protocol, stage, steps_per_epoch: int):
    import keras

    rate = stage.learning_rate
    if stage.schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=stage.epochs * steps_per_epoch, alpha=0.01)
    return keras.optimizers.Adam(learning_rate=rate, beta_1=protocol.beta_1, beta_2=protocol.beta_2)


def _loss(protocol: Protocol):
    """Cross-entropy on class indices, or on one-hot targets when the labels are smoothed."""
    import keras

    if protocol.label_smoothing:
        return keras.losses.CategoricalCrossentropy(label_smoothing=protocol.label_smoothing)
    return "sparse_categorical_crossentropy"


def _set_trainable(layer, *, trainable: bool, batchnorm: str) -> None:
    """``layer`` (the backbone) trainable or not; with ``batchnorm="inference"`` its BatchNorm layers stay frozen.

    A Keras 3 BatchNormalization layer that is not trainable normalises with its moving statistics
    even while the model trains (a ``training=False`` call inside a functional model does not
    survive ``fit``, which passes ``training=True`` to every layer).
    """
    import keras

    layer.trainable = trainable
    if trainable and batchnorm == "inference":
        for inner in layer.layers:
            if isinstance(inner, keras.layers.BatchNormalization):
                inner.trainable = False


def _compile(model, protocol: Protocol, stage, trainable_layers, steps_per_epoch: int) -> None:
    """Compile ``model`` for ``stage`` and build its optimizer (whose fresh state a reused model goes back to)."""
    for layer in trainable_layers:
        _set_trainable(layer, trainable=stage.trainable == "all", batchnorm=protocol.batchnorm)
    model.compile(optimizer=_optimizer(protocol, stage, steps_per_epoch), loss=_loss(protocol), metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)


def program_key(protocol: Protocol, *, backbone: str, n_classes: int, input_size: int) -> str | None:
    """The key under which a fold's compiled model is kept for the next fold, or None: not kept.

    A second stage changes what is trainable, which is a new program anyway, and a cached-features
    fold trains a small head of its own.
    """
    if len(protocol.stages) != 1 or protocol.cached_features:
        return None
    return compiled_models.program_key(
        backbone=backbone, n_classes=n_classes, input_size=input_size, protocol=protocol.to_dict()
    )


@contextmanager
def compiled_model(fresh, protocol: Protocol, key: str | None, steps_per_epoch: int) -> Iterator:
    """``fresh`` compiled for the first stage, or the last fold's compiled model in ``fresh``'s state."""
    first = protocol.stages[0]

    def compile_model(model) -> None:
        _compile(model, protocol, first, [model.get_layer("backbone")], steps_per_epoch)

    with compiled_models.compiled_for(fresh, key=key, compile_model=compile_model) as model:
        if model is not fresh:
            _carry_seeds(fresh, model)
        yield model


def _carry_seeds(fresh, kept) -> None:
    """The fold's seeds into the kept model's configuration, so that it saves what a fresh model would.

    Their effect is in the variables already: the head's initial weights and the augmentation's seed state.
    """
    kept.get_layer("head").kernel_initializer = fresh.get_layer("head").kernel_initializer
    if any(layer.name == "augment" for layer in fresh.layers):
        kept.get_layer("augment").seed = fresh.get_layer("augment").seed


@dataclass(frozen=True)
class FitData:
    """What ``model.fit`` gets: a batch dataset (``y`` None) or arrays, with the validation data."""

    x: object
    validation: object
    steps_per_epoch: int
    y: np.ndarray | None = None
    sample_weight: np.ndarray | None = None


def _keep_best_epoch():
    """A callback keeping the weights of the epoch with the lowest validation loss, over every stage.

    Used only with an inner validation split: choosing the epoch on the test fold would be tuning on it.
    Weights seeded before ``fit`` (the head's warm-up) compete like any epoch and are restored the same way.
    """
    import keras

    class KeepBestEpoch(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best_loss = np.inf
            self.best_epoch: int | None = None
            self.weights: list[np.ndarray] | None = None

        def on_epoch_end(self, epoch, logs=None):
            loss = float((logs or {}).get("val_loss", np.inf))
            if loss < self.best_loss:
                self.best_loss, self.best_epoch = loss, epoch + 1
                self.weights = [np.array(w) for w in self.model.get_weights()]

        def restore(self) -> None:
            if self.weights is not None:
                self.model.set_weights(self.weights)

    return KeepBestEpoch()


def fit_stages(
    model,
    protocol: Protocol,
    data: FitData,
    *,
    progress,
    keep=None,
    trainable_layers: Sequence = (),
    compiled: bool = False,
) -> dict:
    """Fit each stage in turn, with ``progress`` (and ``keep``, the epoch keeper) as callbacks; ``compiled``:
    the model is already compiled for the first stage."""
    callbacks = [progress, *([keep] if keep else [])]
    history: dict[str, list[float]] = {}
    done = 0
    for index, stage in enumerate(protocol.stages):
        if index > 0 or not compiled:
            _compile(model, protocol, stage, trainable_layers, data.steps_per_epoch)
        arrays = {}
        if data.y is not None:
            arrays = {
                "y": data.y,
                "batch_size": protocol.batch_size,
                "shuffle": True,
                "sample_weight": data.sample_weight,
            }
        fitted = model.fit(
            data.x,
            **arrays,
            epochs=done + stage.epochs,
            initial_epoch=done,
            validation_data=data.validation,
            callbacks=callbacks,
            verbose=0,
        )
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        done += stage.epochs
        progress.raise_if_stopped()
    return history


def fit_selected(
    model,
    plan: FoldPlan,
    data: FitData,
    *,
    progress,
    trainable_layers: Sequence = (),
    compiled: bool,
    start_loss: float | None = None,
) -> tuple[dict, int | None]:
    """Fit every stage; with an inner validation split, end on the weights of its best epoch and return its
    number with the history (None: no epoch chosen, the last one's weights kept).

    ``start_loss``: the inner validation loss of the model as it is before these stages (the head's
    warm-up on cached features); those weights are a candidate too (epoch 0 of these stages).
    """
    keep = _keep_best_epoch() if plan.inner_validation else None
    if keep is not None and start_loss is not None:
        keep.best_loss, keep.best_epoch, keep.weights = start_loss, 0, [np.array(w) for w in model.get_weights()]
    history = fit_stages(
        model, plan.protocol, data, progress=progress, keep=keep, trainable_layers=trainable_layers, compiled=compiled
    )
    if keep is None:
        return history, None
    keep.restore()
    return history, keep.best_epoch
