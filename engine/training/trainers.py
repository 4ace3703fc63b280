"""One trainer per kind of head: a logistic-regression probe or an Adam head on the frozen base's cached
features, or every image through the whole model (after an optional warm-up of the head on cached features).

Each takes the fold's fresh model and returns a :class:`FoldOutcome`; ``should_stop`` ends it with
:class:`~engine.training.progress.Cancelled`.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.models import builders
from engine.training.features import cached_features, harmonise_key
from engine.training.fitting import FitData, compiled_model, fit_selected, fit_stages, progress_callback
from engine.training.plan import FoldPlan
from engine.training.progress import EXTRACTION_END, WARM_UP_END, Cancelled, Progress, ProgressFn, StopFn


@dataclass(frozen=True)
class FoldOutcome:
    """A trained fold: its model, per-epoch history and the test rows' class probabilities; the epoch kept
    (None: the last) and how a logistic-regression head's ``C`` was chosen (None for other heads)."""

    model: Any
    history: dict[str, list[float]]
    proba: np.ndarray
    selected_epoch: int | None = None
    head_choice: dict | None = None


def train_logistic_probe(
    model, plan: FoldPlan, *, on_progress: ProgressFn | None, should_stop: StopFn | None, artifacts_root: Path
) -> FoldOutcome:
    """The head as a multinomial logistic regression of the standardised cached features, its ``C`` chosen
    by inner cross-validation on the training folds; the fitted scaling folds into the Dense head's weights."""
    from engine.training.linear_head import fit_linear_head

    all_views = _probe_features(
        model, plan, on_progress=on_progress, should_stop=should_stop, artifacts_root=artifacts_root
    )
    feats = np.asarray(all_views[:, 0])
    head, weights, segments = model.get_layer("head"), plan.sample_weights(), _segments(model)
    if on_progress:
        on_progress(Progress(plan.backbone, plan.fold, "head", 0, 1, 0, 1, start=EXTRACTION_END))
    rows = _training_rows(plan, all_views, weights)
    fitted = fit_linear_head(
        rows.features,
        rows.labels,
        segments=segments,
        grid=plan.protocol.head_c,
        inner_folds=plan.protocol.inner_folds,
        sample_weight=rows.weights,
        n_classes=len(plan.classes),
        seed=plan.seed,
        should_stop=should_stop,
        groups=rows.groups,
        recall_floor=plan.recall_floor,
        scored=rows.scored,
        floor_sources=rows.sources,
    )
    if fitted is None:
        raise Cancelled(f"{plan.backbone} fold {plan.fold}: cancelled")
    bias = fitted.bias
    if segments is None:
        bias = bias - fitted.center @ fitted.kernel
    else:
        model.get_layer("pool").set_weights([fitted.center.astype(np.float32)])
    head.set_weights([fitted.kernel.astype(np.float32), bias.astype(np.float32)])
    if on_progress:
        on_progress(
            Progress(plan.backbone, plan.fold, "head", 1, 1, 1, 1, logs=dict(fitted.history_logs), start=EXTRACTION_END)
        )
    history = {key: [value] for key, value in fitted.history_logs.items()}
    return FoldOutcome(model, history, fitted.predict_proba(feats[plan.test]), head_choice=fitted.choice)


@dataclass(frozen=True)
class _Rows:
    features: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None
    groups: np.ndarray | None
    scored: np.ndarray | None = None
    sources: np.ndarray | None = None


def _training_rows(plan: FoldPlan, all_views: np.ndarray, weights: np.ndarray | None) -> _Rows:
    """What a logistic-regression head is fitted on: the training images as they are or, with augmented views,
    every view of each (its label, weight and group repeated, the group the image's patient or the image
    itself, so that the inner folds choosing ``C`` keep an image's views on one side); a recall floor's
    recall counts each image once, as it is (``scored``), in each source when the floor is met there (``sources``)."""
    train, sources = plan.train, plan.floor_sources
    if plan.protocol.view_augmentation is None:
        return _Rows(
            features=np.asarray(all_views[train, 0]),
            labels=plan.dataset.labels[train],
            weights=None if weights is None else weights[train],
            groups=None if plan.groups is None else plan.groups[train],
            sources=None if sources is None else sources[train],
        )
    views = all_views.shape[1]
    groups = train if plan.groups is None else plan.groups[train]
    return _Rows(
        features=np.asarray(all_views[train]).reshape(len(train) * views, -1),
        labels=np.repeat(plan.dataset.labels[train], views),
        weights=None if weights is None else np.repeat(weights[train], views),
        groups=np.repeat(groups, views),
        scored=np.arange(len(train) * views) % views == 0,
        sources=None if sources is None else np.repeat(sources[train], views),
    )


def train_adam_probe(
    model, plan: FoldPlan, *, on_progress: ProgressFn | None, should_stop: StopFn | None, artifacts_root: Path
) -> FoldOutcome:
    """Frozen base: its pooled features once per dataset (every view of each image a training row), then only
    the head trains on them, with Adam."""
    feats = _probe_features(
        model, plan, on_progress=on_progress, should_stop=should_stop, artifacts_root=artifacts_root
    )
    views = feats.shape[1]
    targets, weights = plan.targets(), plan.sample_weights()
    head = _head_alone(model, feats.shape[-1])
    data = FitData(
        x=np.asarray(feats[plan.train]).reshape(len(plan.train) * views, -1),
        y=np.repeat(targets[plan.train], views, axis=0),
        sample_weight=None if weights is None else np.repeat(weights[plan.train], views),
        validation=(np.asarray(feats[plan.validation_rows, 0]), targets[plan.validation_rows]),
        steps_per_epoch=-(-len(plan.train) * views // plan.protocol.batch_size),
    )
    progress = progress_callback(
        plan, on_progress=on_progress, should_stop=should_stop, epochs=plan.protocol.epochs, start=EXTRACTION_END
    )
    history, selected = fit_selected(head, plan, data, progress=progress, compiled=False)
    proba = head.predict(np.asarray(feats[plan.test, 0]), batch_size=256, verbose=0)
    return FoldOutcome(model, history, proba, selected_epoch=selected)


def train_on_images(
    model,
    plan: FoldPlan,
    *,
    on_progress: ProgressFn | None,
    should_stop: StopFn | None,
    artifacts_root: Path,
    stack: ExitStack,
    key: str | None,
) -> FoldOutcome:
    """Every image batch through the whole model (augmentation in the graph), stage after stage, after any
    warm-up of the head on cached features.

    The model trained may be the last fold's compiled one, set to ``model``'s state and kept under ``key``
    (``engine.training.compiled_models``) until ``stack`` closes; the outcome's model is that one.
    """
    from engine.training.batches import ImageBatches

    warm_history = _warm_head(
        model, plan, on_progress=on_progress, should_stop=should_stop, artifacts_root=artifacts_root
    )
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
    progress = progress_callback(
        plan,
        on_progress=on_progress,
        should_stop=should_stop,
        epochs=on_images.protocol.epochs,
        start=WARM_UP_END if warm_history else 0.0,
    )
    warm_loss = warm_history["val_loss"][-1] if warm_history else None
    trained, selected = fit_selected(
        model,
        on_images,
        data,
        progress=progress,
        trainable_layers=[model.get_layer("backbone")],
        compiled=True,
        start_loss=warm_loss,
    )
    history = {k: warm_history.get(k, []) + trained.get(k, []) for k in {*warm_history, *trained}}
    if selected is not None:
        selected += len(warm_history.get("loss", []))
    proba = model.predict(ImageBatches(images, None, plan.test, batch_size=batch_size), verbose=0)
    return FoldOutcome(model, history, proba, selected_epoch=selected)


def _warm_head(
    model, plan: FoldPlan, *, on_progress: ProgressFn | None, should_stop: StopFn | None, artifacts_root: Path
) -> dict:
    """The protocol's leading stages ``on="cached-features"``: the head trained on the frozen base's pooled
    features. Their history; empty without such stages."""
    warm = tuple(stage for stage in plan.protocol.stages if stage.on == "cached-features")
    if not warm:
        return {}
    progress = progress_callback(
        plan,
        on_progress=on_progress,
        should_stop=should_stop,
        epochs=sum(s.epochs for s in warm),
        phase="head",
        end=WARM_UP_END,
    )
    feats = cached_features(
        plan.dataset,
        plan.backbone,
        weights=plan.study.weights,
        views=1,
        artifacts_root=artifacts_root,
        harmonise=harmonise_key(plan.protocol),
    )
    targets, weights = plan.targets(), plan.sample_weights()
    head = _head_alone(model, feats.shape[-1])
    data = FitData(
        x=np.asarray(feats[plan.train, 0]),
        y=targets[plan.train],
        sample_weight=None if weights is None else weights[plan.train],
        validation=(np.asarray(feats[plan.validation_rows, 0]), targets[plan.validation_rows]),
        steps_per_epoch=-(-len(plan.train) // plan.protocol.batch_size),
    )
    return fit_stages(head, dataclasses.replace(plan.protocol, stages=warm), data, progress=progress)


def _probe_features(
    model, plan: FoldPlan, *, on_progress: ProgressFn | None, should_stop: StopFn | None, artifacts_root: Path
) -> np.ndarray:
    """The cached features a probe's head is fitted on, shape (N, views, D), the fold model's base made the one
    they came from."""

    def on_batch(step: int, steps: int) -> None:
        if on_progress:
            on_progress(
                Progress(plan.backbone, plan.fold, "features", 0, plan.protocol.epochs, step, steps, end=EXTRACTION_END)
            )

    feats = cached_features(
        plan.dataset,
        plan.backbone,
        weights=plan.study.weights,
        views=plan.protocol.feature_views,
        artifacts_root=artifacts_root,
        on_batch=on_batch,
        should_stop=should_stop,
        pooling=plan.protocol.pooling,
        harmonise=harmonise_key(plan.protocol),
        augmentation=plan.protocol.view_augmentation,
    )
    _own_base(model, plan)
    return feats


def _own_base(model, plan: FoldPlan) -> None:
    """With ``weights=None``, the fold model's random base replaced by the one its cached features came from,
    so that the saved model computes the features its head was fitted on (ImageNet bases are the same file)."""
    import keras

    if plan.study.weights is not None:
        return
    extractor = builders.feature_extractor(
        plan.backbone, plan.dataset.input_size, None, plan.protocol.pooling, harmonise_key(plan.protocol)
    )
    model.get_layer("backbone").set_weights(extractor.get_layer("backbone").get_weights())
    keras.utils.set_random_seed(plan.seed)


def _head_alone(model, width: int):
    """The fold model's head layer as a model of its own on ``width`` pooled features: training it trains the
    fold model's head."""
    import keras

    head_in = keras.Input((width,))
    return keras.Model(head_in, model.get_layer("head")(head_in))


def _segments(model) -> list[int] | None:
    """Lengths of the pooled vector's parts (each block's means, then its standard deviations), or None
    for one average-pooled map."""
    from engine.models.layers import BlockStatisticsPool

    pool = model.get_layer("pool")
    if not isinstance(pool, BlockStatisticsPool):
        return None
    return BlockStatisticsPool.segments([int(o.shape[-1]) for o in model.get_layer("backbone").outputs])
