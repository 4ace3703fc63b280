"""Train and evaluate one (backbone, fold) of a study, and keep the result on disk.

A fresh model per fold (whose state may train on the fold before's compiled model, as
``engine.training.compiled_models`` explains); seeds set per run; the run is looked up before any work, so
a finished fold is loaded, never trained again. Progress and cancellation go through two plain
callables, which is all the background worker needs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.data.datasets import Dataset
from engine.data.splits import inner_split, train_indices
from engine.evaluation.metrics import fold_metrics
from engine.models import builders
from engine.models.backbones import get_backbone, weights_identity
from engine.models.inference import OOD_FILE
from engine.results import artifacts, atomic
from engine.training import compilation, compiled_models
from engine.training.protocols import Protocol

FEATURE_BATCH = 64
PROGRESS_EVERY_S = 2.0


class Cancelled(Exception):
    """Raised when ``should_stop`` asked the training of a fold to stop."""


PHASES_ON_CACHED_FEATURES = ("features", "head")
"""Phases of a fold on cached features: seconds to minutes, the first tenth of its bar, timed on their own
(they say nothing of the epochs on images)."""


@dataclass
class Progress:
    """A snapshot of one fold's training, sent at least once per epoch and every few seconds."""

    backbone: str
    fold: int
    phase: str
    epoch: int
    epochs: int
    batch: int
    batches: int
    logs: dict[str, float] = field(default_factory=dict)
    images_per_second: float | None = None
    start: float = 0.0

    @property
    def phase_fraction(self) -> float:
        """Fraction of this phase done: of its batches for feature extraction, else of its epochs."""
        if self.phase == "features":
            return self.batch / max(1, self.batches)
        return min(1.0, (self.epoch + self.batch / max(1, self.batches)) / max(1, self.epochs))

    @property
    def fraction(self) -> float:
        """Fraction of this fold done: feature extraction, when cached, and a head warmed up on cached
        features (``phase="head"``, seconds) count as the first tenth; a phase begins at ``start``."""
        if self.phase in PHASES_ON_CACHED_FEATURES:
            return 0.1 * self.phase_fraction
        return self.start + (1.0 - self.start) * self.phase_fraction

    def to_dict(self) -> dict:
        return {**asdict(self), "fraction": self.fraction}


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]


def _seed(study: dict, fold: int) -> int:
    return int(study["seed"]) * 1000 + fold


def classifier(
    backbone_name: str,
    *,
    n_classes: int,
    input_size: int,
    weights: str | None,
    protocol: Protocol,
    seed: int | None = None,
):
    """``engine.models.builders.classifier`` with the augmentation, harmonisation, pooling and head L2 of
    ``protocol``."""
    return builders.classifier(
        backbone_name,
        n_classes=n_classes,
        input_size=input_size,
        weights=weights,
        augmentation=None if protocol.augmentation is None else protocol.augmentation.in_graph(),
        preprocessing=protocol.preprocessing(),
        pooling=protocol.pooling,
        head_l2=protocol.head_l2,
        seed=seed,
    )


def _own_base(model, plan: FoldPlan) -> None:
    """With ``weights=None``, the fold model's random base replaced by the one its cached features came from,
    so that the saved model computes the features its head was fitted on (ImageNet bases are the same file)."""
    import keras

    if plan.study["weights"] is not None:
        return
    extractor = builders.feature_extractor(
        plan.backbone, plan.dataset.input_size, None, plan.protocol.pooling, _harmonise_key(plan.protocol)
    )
    model.get_layer("backbone").set_weights(extractor.get_layer("backbone").get_weights())
    keras.utils.set_random_seed(plan.seed)


def _harmonise_key(protocol: Protocol) -> tuple[tuple[str, object], ...]:
    """The protocol's harmonisation as a hashable key (empty without one)."""
    return tuple(sorted(protocol.preprocessing().items()))


VIEWS = ("identity", "flip_lr", "flip_ud", "flip_both")


def _view(batch: np.ndarray, view: str) -> np.ndarray:
    if view == "flip_lr":
        return batch[:, :, ::-1]
    if view == "flip_ud":
        return batch[:, ::-1, :]
    if view == "flip_both":
        return batch[:, ::-1, ::-1]
    return batch


def cached_features(
    dataset: Dataset,
    backbone_name: str,
    *,
    weights: str | None,
    views: int,
    artifacts_root,
    on_batch: Callable[[int, int], None] | None = None,
    should_stop: StopFn | None = None,
    pooling: str = "average",
    harmonise: tuple[tuple[str, object], ...] = (),
) -> np.ndarray:
    """Pooled features, shape (N, views, D), computed once per (dataset, backbone, size, weights, pooling,
    harmonisation)."""
    spec = get_backbone(backbone_name)
    identity = weights_identity(spec, input_size=dataset.input_size, weights=weights)
    inputs = {
        "dataset": dataset.fingerprint,
        "backbone": backbone_name,
        "input_size": dataset.input_size,
        "weights": identity,
        "views": VIEWS[: max(1, views)],
    }
    if pooling != "average":
        inputs["pooling"] = pooling
    if harmonise:
        inputs["harmonise"] = dict(harmonise)
    key = artifacts.canonical_hash(inputs)
    path = artifacts_root / "features" / f"{backbone_name}-{dataset.input_size}-{key}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    extractor = builders.feature_extractor(backbone_name, dataset.input_size, weights, pooling, harmonise)
    chosen = VIEWS[: max(1, views)]
    n = len(dataset)
    steps = -(-n // FEATURE_BATCH) * len(chosen)
    out = None
    step = 0
    for v, view in enumerate(chosen):
        for start in range(0, n, FEATURE_BATCH):
            if should_stop and should_stop():
                raise Cancelled(f"{backbone_name}: cancelled during feature extraction")
            batch = _view(np.asarray(dataset.images[start : start + FEATURE_BATCH]), view)[..., None]
            feats = np.asarray(extractor.predict_on_batch(batch.astype("float32")))
            if out is None:
                out = np.empty((n, len(chosen), feats.shape[-1]), dtype=np.float32)
            out[start : start + len(batch), v] = feats
            step += 1
            if on_batch:
                on_batch(step, steps)
    atomic.save_npy(path, out)
    return out


def _progress_callback(plan: FoldPlan, hooks: FoldHooks, *, epochs: int, phase: str = "train", start: float = 0.0):
    """Progress of ``epochs`` epochs of one phase: ``"head"`` for a head warmed up on cached features (seconds),
    then ``"train"`` for the epochs on images (minutes), which begin at ``start`` of the fold's bar."""
    import keras

    backbone, fold, batch_size = plan.backbone, plan.fold, plan.protocol.batch_size
    on_progress, should_stop, cancelled = hooks.on_progress, hooks.should_stop, hooks.cancelled

    class ProgressCallback(keras.callbacks.Callback):
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
            on_progress(Progress(backbone, fold, phase, self.epoch, epochs, batch, batches, clean, rate, start))
            self.last = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            self.seen += batch_size
            if should_stop and should_stop():
                cancelled.append(True)
                self.model.stop_training = True
            if time.monotonic() - self.last >= PROGRESS_EVERY_S:
                self._send(batch + 1, logs or {}, self.params.get("steps") or 0)

        def on_epoch_end(self, epoch, logs=None):
            steps = self.params.get("steps") or 0
            self.epoch = epoch + 1
            self._send(0, logs or {}, steps)
            self.epoch = epoch

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


def _fit_stages(
    model, protocol: Protocol, data: FitData, callbacks: list, trainable_layers, cancelled, *, compiled: bool = False
) -> dict:
    """Fit each stage in turn; ``compiled``: the model is already compiled for the first stage."""
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
        if cancelled:
            break
    return history


@dataclass(frozen=True)
class FoldPlan:
    """What one (backbone, fold) trains on, checked before any work."""

    study: dict
    dataset: Dataset
    backbone: str
    fold: int
    protocol: Protocol
    seed: int
    train: np.ndarray
    test: np.ndarray
    validation: np.ndarray
    groups: np.ndarray | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    @property
    def inner_validation(self) -> bool:
        return len(self.validation) > 0

    @property
    def validation_rows(self) -> np.ndarray:
        """What is validated on each epoch: the inner split, or (the paper's way) the test fold."""
        return self.validation if self.inner_validation else self.test

    def targets(self) -> np.ndarray:
        """Every dataset row's target: its class index, or a one-hot row when the loss smooths labels."""
        labels = self.dataset.labels
        return np.eye(len(self.classes), dtype=np.float32)[labels] if self.protocol.label_smoothing else labels

    def sample_weights(self) -> np.ndarray | None:
        """Per dataset row, ``n / (classes x n_class)`` over the rows it trains on; None when not weighted."""
        if self.protocol.class_weight == "none":
            return None
        counts = np.bincount(self.dataset.labels[self.train], minlength=len(self.classes))
        per_class = len(self.train) / (len(self.classes) * np.maximum(counts, 1))
        return per_class[self.dataset.labels].astype(np.float32)


def plan_fold(dataset: Dataset, study: dict, backbone: str, fold: int) -> FoldPlan:
    """The fold's split, protocol and seed; refuses a dataset that is not the study's."""
    if dataset.fingerprint != study["dataset"]["fingerprint"]:
        raise ValueError(
            f"dataset {dataset.fingerprint} is not the one of study {study['study_id']} "
            f"({study['dataset']['fingerprint']})"
        )
    protocol = Protocol.from_dict(study["protocol"])
    seed = _seed(study, fold)
    train = train_indices(study["folds"][fold], len(dataset))
    validation = np.zeros(0, dtype=np.int64)
    by_patient = study.get("split", {}).get("level") == "patient"
    groups = np.asarray(dataset.patients.patients) if by_patient else None
    if protocol.selection == "best-inner-validation":
        train, validation = inner_split(
            train, dataset.labels, fraction=protocol.validation_fraction, seed=seed, groups=groups
        )
    return FoldPlan(
        study=study,
        dataset=dataset,
        backbone=backbone,
        fold=fold,
        protocol=protocol,
        seed=seed,
        train=train,
        test=np.asarray(study["folds"][fold], dtype=np.int64),
        validation=validation,
        groups=groups,
    )


def _fresh_model(plan: FoldPlan):
    return classifier(
        plan.backbone,
        n_classes=len(plan.classes),
        input_size=plan.dataset.input_size,
        weights=plan.study["weights"],
        protocol=plan.protocol,
        seed=plan.seed,
    )


@dataclass
class FoldHooks:
    """How a fold reports progress and learns it should stop; ``cancelled`` fills when it did."""

    on_progress: ProgressFn | None
    should_stop: StopFn | None
    callback: object = None
    cancelled: list[bool] = field(default_factory=list)
    selected_epoch: int | None = None
    head_choice: dict | None = None


def _train_head_on_cached_features(model, plan: FoldPlan, hooks: FoldHooks, artifacts_root):
    """Frozen base: its pooled features once per dataset, then only the head trains on them."""
    import keras

    def on_batch(step: int, steps: int) -> None:
        if hooks.on_progress:
            hooks.on_progress(Progress(plan.backbone, plan.fold, "features", 0, plan.protocol.epochs, step, steps))

    feats = cached_features(
        plan.dataset,
        plan.backbone,
        weights=plan.study["weights"],
        views=plan.protocol.feature_views,
        artifacts_root=artifacts_root,
        on_batch=on_batch,
        should_stop=hooks.should_stop,
        pooling=plan.protocol.pooling,
        harmonise=_harmonise_key(plan.protocol),
    )
    _own_base(model, plan)
    if plan.protocol.head == "logistic-regression":
        return _fit_logistic_head(model, plan, hooks, np.asarray(feats[:, 0]))
    views = feats.shape[1]
    targets, weights = plan.targets(), plan.sample_weights()
    head_in = keras.Input((feats.shape[-1],))
    head = keras.Model(head_in, model.get_layer("head")(head_in))
    data = FitData(
        x=np.asarray(feats[plan.train]).reshape(len(plan.train) * views, -1),
        y=np.repeat(targets[plan.train], views, axis=0),
        sample_weight=None if weights is None else np.repeat(weights[plan.train], views),
        validation=(np.asarray(feats[plan.validation_rows, 0]), targets[plan.validation_rows]),
        steps_per_epoch=-(-len(plan.train) * views // plan.protocol.batch_size),
    )
    history = _fit_selected(head, plan, data, hooks, [], compiled=False)
    proba = None if hooks.cancelled else head.predict(np.asarray(feats[plan.test, 0]), batch_size=256, verbose=0)
    return model, history, proba


def _fit_logistic_head(model, plan: FoldPlan, hooks: FoldHooks, feats: np.ndarray):
    """The head as a multinomial logistic regression of the standardised cached features, its ``C`` chosen
    by inner cross-validation on the training folds; the fitted scaling folds into the Dense head's weights."""
    from engine.training.linear_head import fit_linear_head

    head, weights, segments = model.get_layer("head"), plan.sample_weights(), _segments(model)
    if hooks.on_progress:
        hooks.on_progress(Progress(plan.backbone, plan.fold, "head", 0, 1, 0, 1))
    fitted = fit_linear_head(
        feats[plan.train],
        plan.dataset.labels[plan.train],
        segments=segments,
        grid=plan.protocol.head_c,
        inner_folds=plan.protocol.inner_folds,
        sample_weight=None if weights is None else weights[plan.train],
        n_classes=len(plan.classes),
        seed=plan.seed,
        should_stop=hooks.should_stop,
        groups=None if plan.groups is None else plan.groups[plan.train],
    )
    if fitted is None:
        hooks.cancelled.append(True)
        return model, {}, None
    bias = fitted.bias
    if segments is None:
        bias = bias - fitted.center @ fitted.kernel
    else:
        model.get_layer("pool").set_weights([fitted.center.astype(np.float32)])
    head.set_weights([fitted.kernel.astype(np.float32), bias.astype(np.float32)])
    hooks.head_choice = fitted.choice
    if hooks.on_progress:
        hooks.on_progress(Progress(plan.backbone, plan.fold, "head", 1, 1, 1, 1, logs=dict(fitted.history_logs)))
    history = {key: [value] for key, value in fitted.history_logs.items()}
    proba = fitted.predict_proba(feats[plan.test])
    return model, history, proba


def _segments(model) -> list[int] | None:
    """Lengths of the pooled vector's parts (each block's means, then its standard deviations), or None
    for one average-pooled map."""
    from engine.models.layers import BlockStatisticsPool

    pool = model.get_layer("pool")
    if not isinstance(pool, BlockStatisticsPool):
        return None
    return BlockStatisticsPool.segments([int(o.shape[-1]) for o in model.get_layer("backbone").outputs])


def _fit_selected(
    model, plan: FoldPlan, data: FitData, hooks: FoldHooks, layers, *, compiled: bool, start_loss: float | None = None
) -> dict:
    """Fit every stage; with an inner validation split, end on the weights of its best epoch.

    ``start_loss``: the inner validation loss of the model as it is before these stages (the head's
    warm-up on cached features); those weights are a candidate too (epoch 0 of these stages).
    """
    keep = _keep_best_epoch() if plan.inner_validation else None
    if keep is not None and start_loss is not None:
        keep.best_loss, keep.best_epoch, keep.weights = start_loss, 0, [np.array(w) for w in model.get_weights()]
    callbacks = [hooks.callback, *([keep] if keep else [])]
    history = _fit_stages(model, plan.protocol, data, callbacks, layers, hooks.cancelled, compiled=compiled)
    if keep:
        keep.restore()
        hooks.selected_epoch = keep.best_epoch
    return history


def _warm_head(model, plan: FoldPlan, hooks: FoldHooks, artifacts_root) -> dict:
    """The protocol's leading stages ``on="cached-features"``: the head trained on the frozen base's pooled features."""
    import keras

    warm = tuple(stage for stage in plan.protocol.stages if stage.on == "cached-features")
    if not warm:
        return {}
    on_images = plan.protocol.epochs - sum(stage.epochs for stage in warm)
    hooks.callback = _progress_callback(plan, hooks, epochs=sum(stage.epochs for stage in warm), phase="head")
    feats = cached_features(
        plan.dataset,
        plan.backbone,
        weights=plan.study["weights"],
        views=1,
        artifacts_root=artifacts_root,
        harmonise=_harmonise_key(plan.protocol),
    )
    targets, weights = plan.targets(), plan.sample_weights()
    head_in = keras.Input((feats.shape[-1],))
    head = keras.Model(head_in, model.get_layer("head")(head_in))
    data = FitData(
        x=np.asarray(feats[plan.train, 0]),
        y=targets[plan.train],
        sample_weight=None if weights is None else weights[plan.train],
        validation=(np.asarray(feats[plan.validation_rows, 0]), targets[plan.validation_rows]),
        steps_per_epoch=-(-len(plan.train) // plan.protocol.batch_size),
    )
    history = _fit_stages(
        head, dataclasses.replace(plan.protocol, stages=warm), data, [hooks.callback], [], hooks.cancelled
    )
    hooks.callback = _progress_callback(plan, hooks, epochs=on_images, start=0.1)
    return history


def _train_on_images(model, plan: FoldPlan, hooks: FoldHooks, stack: ExitStack, key: str | None, artifacts_root):
    """Every image batch through the whole model (augmentation in the graph), stage after stage, after any
    warm-up of the head on cached features."""
    from engine.training.batches import ImageBatches

    warm_history = _warm_head(model, plan, hooks, artifacts_root)
    images, batch_size = plan.dataset.images, plan.protocol.batch_size
    targets, weights = plan.targets(), plan.sample_weights()
    data = FitData(
        x=ImageBatches(
            images,
            targets,
            plan.train,
            batch_size=batch_size,
            seed=plan.seed,
            weights=weights,
            jpeg=plan.protocol.augmentation.jpeg if plan.protocol.augmentation else 0,
        ),
        validation=ImageBatches(images, targets, plan.validation_rows, batch_size=batch_size),
        steps_per_epoch=-(-len(plan.train) // batch_size),
    )
    on_images = dataclasses.replace(plan, protocol=plan.protocol.on_images())
    model = stack.enter_context(compiled_model(model, on_images.protocol, key, data.steps_per_epoch))
    warm_loss = warm_history["val_loss"][-1] if warm_history else None
    trained = _fit_selected(
        model, on_images, data, hooks, [model.get_layer("backbone")], compiled=True, start_loss=warm_loss
    )
    history = {k: warm_history.get(k, []) + trained.get(k, []) for k in {*warm_history, *trained}}
    if hooks.selected_epoch is not None:
        hooks.selected_epoch += len(warm_history.get("loss", []))
    test = ImageBatches(images, None, plan.test, batch_size=batch_size)
    proba = None if hooks.cancelled else model.predict(test, verbose=0)
    return model, history, proba


def batchnorm_momenta(model) -> list[float]:
    """The distinct momenta of the backbone's BatchNorm layers: how fast fine-tuning replaces ImageNet statistics."""
    import keras

    layers = model.get_layer("backbone").layers
    return sorted({float(layer.momentum) for layer in layers if isinstance(layer, keras.layers.BatchNormalization)})


def _detector(plan: FoldPlan, model):
    """The fold model's OOD detector, fitted on the features of the images it trained on (never its test fold).

    None when there are too few of them for its cross-fitted threshold (a toy study).
    """
    from engine.models.inference import Classifier, fit_detector
    from engine.models.ood import MIN_FIT_ROWS
    from engine.models.serving import serving_model

    if len(plan.train) < MIN_FIT_ROWS:
        return None
    graph = Classifier(serving_model([model]), classes=plan.classes, input_size=plan.dataset.input_size, info={})
    return fit_detector(graph, plan.dataset.images[plan.train])


def fit_run_detector(run: artifacts.RunResult, dataset: Dataset, study: dict) -> Path | None:
    """Fit and save the OOD detector of a finished run's saved model (runs made before detectors existed)."""
    import keras

    import engine.models.layers  # noqa: F401  (registers the custom layers the model uses)

    model = keras.saving.load_model(run.model_path, safe_mode=True, compile=False)
    detector = _detector(plan_fold(dataset, study, run.backbone, run.fold), model)
    return None if detector is None else detector.save(run.path / OOD_FILE)


def _run_config(plan: FoldPlan, model, selected_epoch: int | None, head_choice: dict | None = None) -> dict:
    import keras

    spec = get_backbone(plan.backbone)
    validated_on = "inner split of the training folds" if plan.inner_validation else "the held-out fold"
    return {
        "study_id": plan.study["study_id"],
        "backbone": plan.backbone,
        "fold": plan.fold,
        "n_folds": len(plan.study["folds"]),
        "seed": plan.seed,
        "input_size": plan.dataset.input_size,
        "protocol": plan.protocol.to_dict(),
        "dataset": plan.study["dataset"],
        "classes": list(plan.classes),
        "weights": weights_identity(spec, input_size=plan.dataset.input_size, weights=plan.study["weights"]),
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "n_train": int(len(plan.train)),
        "n_test": int(len(plan.test)),
        "n_validation": int(len(plan.validation)),
        "validated_on": validated_on,
        "selected_epoch": selected_epoch,
        "batchnorm_momentum": batchnorm_momenta(model),
        **({"head_selection": head_choice} if head_choice else {}),
    }


def _save_run(
    path,
    plan: FoldPlan,
    model,
    history: dict,
    proba: np.ndarray,
    *,
    started: float,
    save_model: bool,
    selected: int | None,
    head_choice: dict | None = None,
):
    """The model first, then the run's files, ``status.json`` last (``artifacts.write_run``)."""
    labels = plan.dataset.labels[plan.test]
    if save_model:
        with atomic.atomic_path(path / "model.keras", suffix=".keras") as tmp:
            model.save(tmp)
        detector = _detector(plan, model)
        if detector is not None:
            detector.save(path / OOD_FILE)
    files = [plan.dataset.files[i] for i in plan.test]
    artifacts.write_run(
        path,
        config=_run_config(plan, model, selected, head_choice),
        history=history,
        metrics=fold_metrics(labels, proba, plan.classes),
        predictions=artifacts.predictions_csv(files, [plan.fold] * len(files), labels, proba, plan.classes),
        status={"seconds": round(time.time() - started, 2), "finished_at": time.time()},
    )


def train_fold(
    *,
    dataset: Dataset,
    study: dict,
    backbone: str,
    fold: int,
    artifacts_root,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    save_model: bool = True,
) -> artifacts.RunResult:
    """Train ``backbone`` on every fold but ``fold`` and evaluate it on ``fold``; cached on disk."""
    import keras

    path = artifacts.run_dir(study["study_id"], backbone, fold, artifacts_root)
    done = artifacts.read_run(path)
    if done is not None:
        return done
    artifacts.clear_incomplete(path)
    plan = plan_fold(dataset, study, backbone, fold)
    keras.utils.set_random_seed(plan.seed)
    compilation.use_persistent_cache(artifacts_root)
    started = time.time()
    protocol = plan.protocol
    hooks = FoldHooks(on_progress, should_stop)
    hooks.callback = _progress_callback(plan, hooks, epochs=protocol.epochs)
    key = program_key(
        protocol.on_images(), backbone=backbone, n_classes=len(plan.classes), input_size=dataset.input_size
    )
    compiled_models.release_other_than(key)
    with ExitStack() as stack:
        model = _fresh_model(plan)
        if protocol.cached_features:
            model, history, proba = _train_head_on_cached_features(model, plan, hooks, artifacts_root)
        else:
            model, history, proba = _train_on_images(model, plan, hooks, stack, key, artifacts_root)
        if hooks.cancelled:
            raise Cancelled(f"{backbone} fold {fold}: cancelled")
        proba = np.asarray(proba, dtype=np.float64)
        _save_run(
            path,
            plan,
            model,
            history,
            proba,
            started=started,
            save_model=save_model,
            selected=hooks.selected_epoch,
            head_choice=hooks.head_choice,
        )
    return artifacts.read_run(path)
