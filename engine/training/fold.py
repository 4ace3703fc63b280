"""Train and evaluate one (backbone, fold) of a study, and keep the result on disk.

A fresh model per fold (whose state may train on the fold before's compiled model, as
``engine.training.compiled_models`` explains); seeds set per run; the run is looked up before any work, so
a finished fold is loaded, never trained again. The training itself is one of ``engine.training.trainers``,
by the protocol's head; progress and cancellation go through two plain callables
(``engine.training.progress``), which is all the background worker needs.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from engine.data.datasets import Dataset
from engine.evaluation.metrics import fold_metrics
from engine.models import builders
from engine.models.backbones import get_backbone, weights_identity
from engine.models.inference import OOD_FILE, load_keras_model
from engine.results import artifacts, atomic
from engine.results.studies import Study
from engine.training import compilation, compiled_models
from engine.training.fitting import program_key
from engine.training.plan import FoldPlan, plan_fold
from engine.training.progress import ProgressFn, StopFn
from engine.training.protocols import Protocol
from engine.training.trainers import FoldOutcome, train_adam_probe, train_logistic_probe, train_on_images


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


def _fresh_model(plan: FoldPlan):
    return classifier(
        plan.backbone,
        n_classes=len(plan.classes),
        input_size=plan.dataset.input_size,
        weights=plan.study.weights,
        protocol=plan.protocol,
        seed=plan.seed,
    )


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


def fit_run_detector(run: artifacts.RunResult, dataset: Dataset, study: Study) -> Path | None:
    """Fit and save the OOD detector of a finished run's saved model (runs made before detectors existed)."""
    model = load_keras_model(run.model_path)
    detector = _detector(plan_fold(dataset, study, run.backbone, run.fold), model)
    return None if detector is None else detector.save(run.path / OOD_FILE)


def _run_config(plan: FoldPlan, outcome: FoldOutcome) -> dict:
    import keras

    spec = get_backbone(plan.backbone)
    validated_on = "inner split of the training folds" if plan.inner_validation else "the held-out fold"
    return {
        "study_id": plan.study.study_id,
        "backbone": plan.backbone,
        "fold": plan.fold,
        "n_folds": len(plan.study.folds),
        "seed": plan.seed,
        "input_size": plan.dataset.input_size,
        "protocol": plan.protocol.to_dict(),
        "dataset": plan.study.dataset.to_json(),
        "classes": list(plan.classes),
        "weights": weights_identity(spec, input_size=plan.dataset.input_size, weights=plan.study.weights),
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "n_train": int(len(plan.train)),
        "n_test": int(len(plan.test)),
        "n_validation": int(len(plan.validation)),
        "validated_on": validated_on,
        "selected_epoch": outcome.selected_epoch,
        "batchnorm_momentum": batchnorm_momenta(outcome.model),
        **({"head_selection": outcome.head_choice} if outcome.head_choice else {}),
    }


def _save_run(path: Path, plan: FoldPlan, outcome: FoldOutcome, *, started: float, save_model: bool) -> None:
    """The model first, then the run's files, ``status.json`` last (``artifacts.write_run``)."""
    labels = plan.dataset.labels[plan.test]
    proba = np.asarray(outcome.proba, dtype=np.float64)
    if save_model:
        with atomic.atomic_path(path / "model.keras", suffix=".keras") as tmp:
            outcome.model.save(tmp)
        detector = _detector(plan, outcome.model)
        if detector is not None:
            detector.save(path / OOD_FILE)
    files = [plan.dataset.files[i] for i in plan.test]
    artifacts.write_run(
        path,
        config=_run_config(plan, outcome),
        history=outcome.history,
        metrics=fold_metrics(labels, proba, plan.classes),
        predictions=artifacts.predictions_csv(files, [plan.fold] * len(files), labels, proba, plan.classes),
        status={"seconds": round(time.time() - started, 2), "finished_at": time.time()},
    )


def train_fold(
    *,
    dataset: Dataset,
    study: Study,
    backbone: str,
    fold: int,
    artifacts_root,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    save_model: bool = True,
) -> artifacts.RunResult:
    """Train ``backbone`` on every fold but ``fold`` and evaluate it on ``fold``; cached on disk."""
    import keras

    path = artifacts.run_dir(study.study_id, backbone, fold, artifacts_root)
    done = artifacts.read_run(path)
    if done is not None:
        return done
    artifacts.clear_incomplete(path)
    plan = plan_fold(dataset, study, backbone, fold)
    keras.utils.set_random_seed(plan.seed)
    compilation.use_persistent_cache(artifacts_root)
    started = time.time()
    protocol = plan.protocol
    key = program_key(
        protocol.on_images(), backbone=backbone, n_classes=len(plan.classes), input_size=dataset.input_size
    )
    compiled_models.release_other_than(key)
    with ExitStack() as stack:
        model = _fresh_model(plan)
        if not protocol.cached_features:
            outcome = train_on_images(
                model,
                plan,
                on_progress=on_progress,
                should_stop=should_stop,
                artifacts_root=artifacts_root,
                stack=stack,
                key=key,
            )
        else:
            probe = train_logistic_probe if protocol.head == "logistic-regression" else train_adam_probe
            outcome = probe(
                model, plan, on_progress=on_progress, should_stop=should_stop, artifacts_root=artifacts_root
            )
        _save_run(path, plan, outcome, started=started, save_model=save_model)
    return artifacts.read_run(path)
