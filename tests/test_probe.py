"""The `xray-probe` protocol: block statistics of a frozen base and a logistic-regression head, on tiny images.

The head is fitted by scikit-learn and folded into the model's Dense layer, so the checks are that the
saved model computes what was fitted, that the serving graph's closed-form Grad-CAM is still the
autodiff one, and that an export of such a model matches Keras.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from engine.data.datasets import import_dataset, load_dataset
from engine.evaluation.robustness import SHIFTS_BY_NAME
from engine.models import serving
from engine.models.backbones import get_backbone
from engine.models.export import export_model
from engine.models.inference import load_classifier
from engine.models.layers import BlockStatisticsPool
from engine.models.runtime import load_exported
from engine.results import artifacts
from engine.training.features import cached_features
from engine.training.linear_head import fit_linear_head, logit_offset_for_recall
from engine.training.presets import PROTOCOLS, XRAY_PROBE
from engine.training.progress import EXTRACTION_END, Progress
from engine.training.protocols import Protocol, Stage
from engine.training.runner import run_study
from engine.training.study import StudyRequest
from tests.synthetic import make_dataset, make_image

pytestmark = pytest.mark.usefixtures("eager_tensorflow")

TINY_PROBE = StudyRequest(protocol=dataclasses.replace(XRAY_PROBE, inner_folds=2), n_folds=2, weights="imagenet")
"""ImageNet weights (of ../shared): a random base gives tiny images nearly the same features, which only float
noise tells apart."""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("data") / "tiny", n_per_class=8)
    root = tmp_path_factory.mktemp("artifacts")
    study = run_study(
        data,
        backbones=["MobileNet-0.25"],
        request=TINY_PROBE,
        input_size=32,
        artifacts_root=root,
        on_progress=PROBE_PROGRESS.append,
    )
    return root, artifacts.study_runs(study.study_id, root)


PROBE_PROGRESS: list[Progress] = []
"""What the ``probe`` fixture's study reported, fold by fold."""


def _blobs(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = rng.normal(0, 1, (3, d))
    return centres[labels] * rng.uniform(0.1, 50, d) + rng.normal(0, 3, (n, d)) + 100, labels


def test_the_folded_head_computes_the_logistic_regression_of_standardised_features():
    x, y = _blobs(90, 12, seed=0)
    segments = [4, 8]
    head = fit_linear_head(x, y, segments=segments, grid=(0.01, 1.0), inner_folds=3, n_classes=3, seed=0)
    scale = np.repeat(1 / np.sqrt(segments), segments) / x.std(axis=0)
    reference = LogisticRegression(C=head.choice["C"], max_iter=3000).fit((x - x.mean(axis=0)) * scale, y)
    fresh, _ = _blobs(30, 12, seed=1)
    np.testing.assert_allclose(
        head.predict_proba(fresh), reference.predict_proba((fresh - x.mean(axis=0)) * scale), atol=1e-8
    )
    assert set(head.choice["inner_accuracy"]) == {"0.01", "1.0"} and head.choice["inner_folds"] == 3
    assert head.history_logs["accuracy"] > 0.9


def test_the_head_refuses_segments_that_do_not_cover_the_features_and_stops_when_asked():
    x, y = _blobs(60, 6, seed=2)
    with pytest.raises(ValueError, match="segments must add up to the 6 features"):
        fit_linear_head(x, y, segments=[2, 2], grid=(1.0,), inner_folds=2, n_classes=3, seed=0)
    stopped = fit_linear_head(
        x, y, segments=None, grid=(1.0,), inner_folds=2, n_classes=3, seed=0, should_stop=lambda: True
    )
    assert stopped is None


def test_block_statistics_are_each_maps_mean_and_sd_deepest_first():
    import keras

    rng = np.random.default_rng(3)
    shallow, deep = rng.normal(size=(2, 4, 4, 2)), rng.normal(size=(2, 2, 2, 3))
    out = np.asarray(BlockStatisticsPool()([keras.ops.convert_to_tensor(shallow), keras.ops.convert_to_tensor(deep)]))
    expected = np.concatenate(
        [deep.mean(axis=(1, 2)), deep.std(axis=(1, 2)), shallow.mean(axis=(1, 2)), shallow.std(axis=(1, 2))], axis=1
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert BlockStatisticsPool.segments([2, 3]) == [3, 3, 2, 2]


def test_protocol_checks_name_the_option():
    with pytest.raises(ValueError, match="needs cached_features=True"):
        Protocol(name="x", description="", stages=(Stage(epochs=1),), pooling="block-statistics")
    with pytest.raises(ValueError, match="head_c grid"):
        dataclasses.replace(XRAY_PROBE, head_c=())
    with pytest.raises(ValueError, match="no epochs to select"):
        dataclasses.replace(XRAY_PROBE, selection="best-inner-validation", validation_fraction=0.1)
    with pytest.raises(ValueError, match="pooling must be one of"):
        dataclasses.replace(XRAY_PROBE, pooling="max")
    assert Protocol.from_dict(XRAY_PROBE.to_dict()) == XRAY_PROBE


def test_a_backbone_without_named_blocks_is_refused_by_name():
    with pytest.raises(ValueError, match="does not know the block outputs of Xception"):
        get_backbone("Xception").block_outputs(None)


@pytest.mark.slow
def test_every_block_of_mobilenet_is_read_and_the_choice_of_c_is_saved(probe):
    root, runs = probe
    assert [(r.backbone, r.fold) for r in runs] == [("MobileNet-0.25", 0), ("MobileNet-0.25", 1)]
    for run in runs:
        choice = run.config["head_selection"]
        assert choice["C"] in XRAY_PROBE.head_c and choice["inner_folds"] == 2
        assert run.config["protocol"]["pooling"] == "block-statistics"
        assert set(run.history) == {"loss", "accuracy"}
    (features,) = (root / "features").glob("*.npy")
    assert np.load(features).shape == (24, 1, 2 * (64 + 2 * 128 + 2 * 256 + 6 * 512 + 2 * 1024) // 4)


def test_a_probe_fold_s_bar_moves_forward_through_extraction_then_the_head(probe):
    """Extraction fills the first half of the bar, the head's fit the rest: the bar does not wait at a tenth
    for the whole fold, then jump."""
    _, runs = probe
    assert any(p.phase == "features" for p in PROBE_PROGRESS), "the first fold extracts; the others read the cache"
    for fold in {run.fold for run in runs}:
        mine = [p for p in PROBE_PROGRESS if p.fold == fold]
        fractions = [p.fraction for p in mine]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0, fractions
        assert max((p.fraction for p in mine if p.phase == "features"), default=0.0) <= EXTRACTION_END
        assert min(p.fraction for p in mine if p.phase == "head") == EXTRACTION_END


def test_the_saved_model_reproduces_its_fitted_predictions(probe):
    import keras

    root, runs = probe
    for run in runs:
        study = artifacts.read_study(run.study_id, root)
        dataset = load_dataset(study.dataset.fingerprint, input_size=32, artifacts_root=root)
        images = np.asarray(dataset.images[study.folds[run.fold]], dtype="float32")[..., None]
        model = keras.saving.load_model(run.model_path, safe_mode=True, compile=False)
        rows = artifacts.read_predictions(run)
        saved = np.array([[float(r[k]) for k in r if k.startswith("p[")] for r in rows])
        np.testing.assert_allclose(model.predict_on_batch(images), saved, atol=1e-5)


def test_closed_form_grad_cam_of_a_block_statistics_model_equals_autodiff(probe):
    import keras
    import tensorflow as tf

    root, runs = probe
    classifier = load_classifier(runs[0].model_path, artifacts_root=root)
    images = np.stack([make_image(k, 32, np.random.default_rng(k)) for k in range(3)])
    raw = classifier.outputs(images)
    model = keras.saving.load_model(runs[0].model_path, compile=False)
    np.testing.assert_allclose(
        raw["probabilities"], model.predict_on_batch(images[..., None].astype("float32")), atol=1e-6
    )
    kernel, bias = model.get_layer("head").get_weights()
    maps = model.get_layer("backbone")(model.get_layer("preprocess")(tf.constant(images[..., None], tf.float32)))
    with tf.GradientTape() as tape:
        tape.watch(maps[-1])
        logits = tf.matmul(model.get_layer("pool")(maps), kernel) + bias
        chosen = tf.gather(logits, raw["probabilities"].argmax(axis=1), axis=1, batch_dims=1)
    alphas = tape.gradient(chosen, maps[-1]).numpy().sum(axis=(1, 2))
    fmap = maps[-1].numpy()
    expected = np.einsum("nhwk,nk->nhw", fmap, alphas)
    picked = np.take_along_axis(raw["class_maps"], raw["probabilities"].argmax(axis=1)[:, None, None, None], axis=3)
    np.testing.assert_allclose(picked[..., 0], expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
    np.testing.assert_allclose(raw["features"], fmap.mean(axis=(1, 2)), atol=1e-5)


@pytest.mark.slow
def test_an_onnx_export_of_the_probe_matches_keras(probe, tmp_path):
    import keras

    root, runs = probe
    members = [keras.saving.load_model(r.model_path, safe_mode=True, compile=False) for r in runs]
    images = np.stack([make_image(k % 3, 32, np.random.default_rng(k)) for k in range(8)])
    result = export_model(members, out_dir=tmp_path, classes=("a", "b", "c"), format="onnx", check_images=images)
    assert result.meta["parity"]["max_abs_dp"] <= 1e-4
    exported = load_exported(result.path).outputs(images)
    graph = serving.serving_model(members)
    assert [layer.name for layer in graph.layers if layer.name.startswith("member_")] == ["member_0"], (
        "the folds share one frozen ImageNet base, which must run once"
    )
    reference = graph.predict_on_batch(images[..., None].astype("float32"))
    np.testing.assert_allclose(exported["probabilities"], reference["probabilities"], atol=1e-4)


VARIED = dataclasses.replace(PROTOCOLS["harmonise-probe-varied"], feature_views=2, inner_folds=2, head_c=(1.0, 10.0))


def test_augmented_views_need_cached_features_and_a_second_view():
    with pytest.raises(ValueError, match="view_augmentation needs cached_features=True and feature_views >= 2"):
        dataclasses.replace(VARIED, feature_views=1)
    assert Protocol.from_dict(VARIED.to_dict()) == VARIED
    assert "view_augmentation" not in XRAY_PROBE.to_dict(), "a study made before views were augmented keeps its id"


def test_augmented_views_are_seeded_draws_after_the_image_as_it_is(tmp_path):
    data = make_dataset(tmp_path / "tiny", n_per_class=4)
    dataset = import_dataset(data, input_size=32, artifacts_root=tmp_path / "a")
    options = dict(weights="imagenet", pooling="block-statistics", harmonise=(("downscale", 2),))

    def features(root, views, augmentation):
        return np.asarray(
            cached_features(
                dataset, "MobileNet-0.25", views=views, artifacts_root=root, augmentation=augmentation, **options
            )
        )

    plain = features(tmp_path / "plain", 1, None)
    varied = features(tmp_path / "varied", 3, VARIED.view_augmentation)
    again = features(tmp_path / "again", 3, VARIED.view_augmentation)
    assert varied.shape == (12, 3, plain.shape[-1])
    np.testing.assert_allclose(varied[:, 0], plain[:, 0], atol=1e-5)
    np.testing.assert_array_equal(varied, again)
    change = np.abs(varied[:, 1:] - varied[:, :1]).mean(axis=-1)
    assert (change > 1e-3).all(), "every draw changes every image"
    assert np.abs(varied[:, 1] - varied[:, 2]).mean() > 1e-3, "each view draws its own changes"


@pytest.mark.slow
def test_a_head_fitted_on_augmented_views_is_saved_and_tested_on_images_as_they_are(tmp_path):
    import keras

    data = make_dataset(tmp_path / "tiny", n_per_class=8)
    root = tmp_path / "artifacts"
    request = StudyRequest(protocol=VARIED, n_folds=2, weights="imagenet")
    study = run_study(data, backbones=["MobileNet-0.25"], request=request, input_size=32, artifacts_root=root)
    (features,) = (root / "features").glob("*.npy")
    assert np.load(features).shape[:2] == (24, 2)
    dataset = load_dataset(study.dataset.fingerprint, input_size=32, artifacts_root=root)
    for run in artifacts.study_runs(study.study_id, root):
        assert run.config["protocol"]["view_augmentation"] == VARIED.view_augmentation.to_dict()
        model = keras.saving.load_model(run.model_path, safe_mode=True, compile=False)
        images = np.asarray(dataset.images[study.folds[run.fold]], dtype="float32")[..., None]
        saved = np.array([[float(r[k]) for k in r if k.startswith("p[")] for r in artifacts.read_predictions(run)])
        np.testing.assert_allclose(model.predict_on_batch(images), saved, atol=1e-5)


def test_a_recall_floor_raises_one_class_s_bias_until_the_inner_folds_find_that_share_of_it():
    features, labels = _blobs(240, 6, seed=3)
    features = features + np.random.default_rng(4).normal(0, 400, features.shape)
    options = dict(segments=None, grid=(1.0,), inner_folds=3, n_classes=3, seed=0)
    plain = fit_linear_head(features, labels, **options)
    floored = fit_linear_head(features, labels, recall_floor=(2, 0.95), **options)
    point = floored.choice["recall_floor"]
    assert point["inner_recall"] < 0.95 <= point["inner_recall_after"]
    assert point["logit_offset"] > 0
    np.testing.assert_allclose(floored.kernel, plain.kernel)
    np.testing.assert_allclose(floored.bias - plain.bias, [0, 0, point["logit_offset"]])
    assert (floored.predict_proba(features).argmax(1) == 2).sum() > (plain.predict_proba(features).argmax(1) == 2).sum()
    met = fit_linear_head(features, labels, recall_floor=(2, 0.05), **options)
    assert met.choice["recall_floor"]["logit_offset"] == 0, "a head that already meets the floor is left as fitted"
    np.testing.assert_allclose(met.bias, plain.bias)


def test_a_floor_in_each_source_lifts_the_hard_source_that_a_floor_over_all_rows_leaves_below_it():
    """Class 2's rows of source 1 sit among class 0's: over all rows the floor is met without them, in each
    source it is not, so the offset grows until source 1's own recall reaches the floor too."""
    features, labels = _blobs(300, 6, seed=3)
    rng = np.random.default_rng(5)
    sources = np.zeros(len(labels), dtype=int)
    hard = np.flatnonzero(labels == 2)[:20]
    sources[hard] = 1
    features[hard] = features[labels == 0][:20] + rng.normal(0, 1.0, (20, features.shape[1]))
    options = dict(segments=None, grid=(1.0,), inner_folds=3, n_classes=3, seed=0, recall_floor=(2, 0.8))
    overall = fit_linear_head(features, labels, **options).choice["recall_floor"]
    each = fit_linear_head(features, labels, floor_sources=sources, **options).choice["recall_floor"]
    assert overall["inner_recall"] >= 0.8 and overall["logit_offset"] == 0, "over all rows the floor is met"
    assert each["by_source"]["1"]["inner_recall"] < 0.8 <= each["by_source"]["1"]["inner_recall_after"]
    assert each["by_source"]["0"]["inner_recall_after"] >= 0.8 and each["logit_offset"] > 0
    alone = [fit_linear_head(features, labels, scored=sources == s, **options).choice["recall_floor"] for s in (0, 1)]
    assert each["logit_offset"] == max(p["logit_offset"] for p in alone), "the largest of the sources' own offsets"
    assert set(each["by_source"]) == {"0", "1"}
    with pytest.raises(ValueError, match="floor_sources must hold one source per row"):
        fit_linear_head(features, labels, floor_sources=sources[:-1], **options)
    normal_floor = PROTOCOLS["harmonise-probe-normal-floor"]
    assert Protocol.from_dict(normal_floor.to_dict()) == normal_floor
    assert "in_each_source" not in PROTOCOLS["harmonise-probe-screening"].to_dict()["recall_floor"], "ids kept"


def test_a_recall_floor_needs_a_logistic_regression_head_and_a_class_the_dataset_has():
    screening = PROTOCOLS["harmonise-probe-screening"]
    assert Protocol.from_dict(screening.to_dict()) == screening
    assert "recall_floor" not in PROTOCOLS["harmonise-probe-varied-by-source"].to_dict(), "older studies keep their id"
    with pytest.raises(ValueError, match="recall_floor is met on the inner folds of a logistic-regression head"):
        dataclasses.replace(PROTOCOLS["xray-finetune"], recall_floor=screening.recall_floor)
    with pytest.raises(ValueError, match=r"recall must be in \(0, 1\), got recall=1.0"):
        dataclasses.replace(screening.recall_floor, recall=1.0)
    with pytest.raises(ValueError, match="recall_floor's target must be one of the dataset's classes"):
        screening.check_classes(("cat", "dog"))


def test_the_exposure_protocol_trains_its_head_on_the_robustness_grids_strongest_exposures_and_nothing_else():
    exposure, base = PROTOCOLS["harmonise-probe-exposure"], PROTOCOLS["harmonise-probe-varied-by-source"]
    views = exposure.view_augmentation
    for name in ("contrast", "gamma", "brightness"):
        assert getattr(views, name) == max(SHIFTS_BY_NAME[name].parameters) > getattr(base.view_augmentation, name)
    plain = dataclasses.replace(
        views, **{n: getattr(base.view_augmentation, n) for n in ("contrast", "gamma", "brightness")}
    )
    assert plain == base.view_augmentation, "only the exposure of the views differs"
    assert dataclasses.replace(exposure, name=base.name, description=base.description, view_augmentation=plain) == base
    assert Protocol.from_dict(exposure.to_dict()) == exposure


def test_the_offset_lands_midway_to_the_next_image_and_its_recalls_are_argmax_recalls():
    logits = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, -2.0], [0.0, 0.0, -3.0], [0.0, 0.0, 1.0], [0.0, 0.0, -5.0]])
    point = logit_offset_for_recall(logits, np.full(5, 2), target=2, recall=0.6)
    assert point["logit_offset"] == pytest.approx(2.5), "margins -1, 1, 2, 3, 5: midway between the 3rd and the 4th"
    assert (point["inner_recall"], point["inner_recall_after"]) == (0.2, 0.6)
    assert logit_offset_for_recall(logits, np.full(5, 2), target=2, recall=0.2)["logit_offset"] == 0
    tied = logit_offset_for_recall(logits[[0, 0]], np.full(2, 2), target=2, recall=0.5)
    assert tied["inner_recall_after"] == 1.0, "past the tie, which argmax would give the first class"
    with pytest.raises(ValueError, match="got target=3"):
        logit_offset_for_recall(logits, np.full(5, 2), target=3, recall=0.5)
