"""Saved external evaluations read back typed: every schema a file was saved with, upgraded in one place."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from engine.evaluation.bootstrap import interval_text
from engine.evaluation.external import _result, mistakes, saved_evaluations
from engine.evaluation.external_results import KERAS, UNSTATED, ExternalEvaluation

CLASSES = ["COVID-19", "Normal", "Viral Pneumonia"]
MODEL = {"backbone": "MobileNet", "fold": None, "folds": [0, 1], "study_id": "s1", "protocol": "xray-probe"}


def saved(y: np.ndarray, *, seed: int = 0) -> dict:
    """A schema-4 evaluation as ``engine.evaluation.external`` writes it, of random probabilities for ``y``."""
    proba = np.random.default_rng(seed).dirichlet(np.ones(len(CLASSES)), size=len(y))
    proba[np.arange(len(y)), y] += 0.5  # mostly right
    proba /= proba.sum(axis=1, keepdims=True)
    data_info = {
        "name": "unseen",
        "fingerprint": "f" * 16,
        "relation": "other source",
        "classes_not_in_model": ["cats"],
        "skipped": [{"file": "covid19/broken.png", "reason": "not an image"}],
        "duplicates_dropped": 1,
        "overlap_with_study": {
            "checked": len(y) + 2,
            "identical": 1,
            "near_duplicates": 1,
            "left_out": ["a", "b"],
            "rule": "r",
        },
    }
    files = [f"{CLASSES[k]}/{i}.png" for i, k in enumerate(y)]
    return json.loads(json.dumps(_result({**MODEL, "classes": CLASSES}, data_info, files, y, proba)))


def older(found: dict, schema: int) -> dict:
    """``found`` as a file of ``schema`` holds it: 2 had no intervals, 2 and 3 no per-image predictions, and files
    of each were saved before the set's relation to the study was asked."""
    old = copy.deepcopy(found)
    old["schema_version"] = schema
    del old["predictions"], old["data"]["relation"]
    if schema == 2:
        del old["intervals"]
    return old


@pytest.fixture(scope="module")
def three_classes() -> dict:
    return saved(np.repeat([0, 1, 2], 10))


@pytest.fixture(scope="module")
def one_class() -> dict:
    return saved(np.zeros(12, dtype=np.int64), seed=1)


def test_a_current_file_reads_every_field(three_classes: dict) -> None:
    e = ExternalEvaluation.from_json(three_classes, key="k")
    assert (e.key, e.schema_version, e.relation, e.n_images) == ("k", 4, "other source", 30)
    assert e.data.counts == {"COVID-19": 10, "Normal": 10, "Viral Pneumonia": 10} and not e.one_class
    assert e.data.overlap.n_left_out == 2 and e.data.overlap.left_out == ("a", "b")
    assert e.data.skipped == ({"file": "covid19/broken.png", "reason": "not an image"},)
    assert (e.classes, e.study_id, e.backbone, e.protocol, e.fold) == (
        tuple(CLASSES),
        "s1",
        "MobileNet",
        "xray-probe",
        None,
    )
    assert e.served_by == KERAS and e.model_label == "MobileNet ensemble of folds 0, 1"
    assert e.headline == "accuracy" and e.estimate("accuracy") == three_classes["accuracy"]
    assert e.figure("accuracy") == e.interval("accuracy") == three_classes["intervals"]["metrics"]["accuracy"]
    assert set(e.intervals.macro) == {"macro_precision", "macro_recall", "macro_f1"}
    assert e.estimate("macro_f1") == three_classes["metrics"]["macro"]["f1"]
    np.testing.assert_array_equal(e.confusion_matrix, three_classes["metrics"]["confusion_matrix"])
    assert e.mistakes() == mistakes(three_classes) and e.mistakes()
    assert len(e.mistakes()) == int(e.confusion_matrix.sum() - np.trace(e.confusion_matrix))
    assert ExternalEvaluation.from_json({**three_classes, "key": "k"}) == e
    with pytest.raises(ValueError, match="no figure 'recall\\[cats\\]'"):
        e.estimate("recall[cats]")


def test_an_older_schema_is_filled_in_once(three_classes: dict) -> None:
    """Schema 2: no intervals, no predictions, no relation; each figure is its estimate alone."""
    e = ExternalEvaluation.from_json(older(three_classes, 2), key="old")
    assert e.schema_version == 2 and e.relation == UNSTATED
    assert e.intervals is None and e.predictions is None and e.mistakes() is None
    assert mistakes(older(three_classes, 2)) is None
    assert e.interval("accuracy") is None and e.figure("accuracy") == {"estimate": three_classes["accuracy"]}
    for c in CLASSES:
        recall, precision = e.figure(f"recall[{c}]"), e.figure(f"precision[{c}]")
        assert recall == {"estimate": three_classes["recall"][c]}
        assert precision == {"estimate": three_classes["metrics"]["per_class"][c]["precision"]}
        assert interval_text(recall) == f"{three_classes['recall'][c]:.3f}"
    # what does not depend on the schema reads the same
    current = ExternalEvaluation.from_json(three_classes, key="old")
    assert (e.data.counts, e.data.overlap, e.accuracy, e.recall) == (
        current.data.counts,
        current.data.overlap,
        current.accuracy,
        current.recall,
    )


def test_schema_3_keeps_its_intervals_and_lacks_only_the_predictions(one_class: dict) -> None:
    e = ExternalEvaluation.from_json(older(one_class, 3), key="k")
    assert e.relation == UNSTATED and e.predictions is None and e.mistakes() is None
    assert e.one_class and e.headline == "recall[COVID-19]"
    assert e.figure("recall[COVID-19]") == one_class["intervals"]["metrics"]["recall[COVID-19]"]
    assert e.figure("precision[COVID-19]") is None, "undefined on a set of one class: no interval, no estimate"
    assert e.estimate("recall[Normal]") is None and e.figure("recall[Normal]") is None
    assert any("one class" in line for line in e.intervals.undefined)


def test_a_file_saved_before_the_relation_was_asked_but_with_everything_else(one_class: dict) -> None:
    found = copy.deepcopy(one_class)
    del found["data"]["relation"]
    e = ExternalEvaluation.from_json(found, key="k")
    assert e.relation == UNSTATED and e.intervals is not None and e.mistakes() == mistakes(one_class)


def test_a_file_saved_before_the_overlap_check_or_without_a_field_is_refused(three_classes: dict) -> None:
    schema_1 = older(three_classes, 2)
    del schema_1["data"]["overlap_with_study"], schema_1["data"]["duplicates_dropped"]
    with pytest.raises(ValueError, match="evaluation k was saved before its images were checked"):
        ExternalEvaluation.from_json(schema_1, key="k")
    no_protocol = copy.deepcopy(three_classes)
    del no_protocol["model"]["protocol"]
    with pytest.raises(ValueError, match="evaluation k lacks 'model.protocol'"):
        ExternalEvaluation.from_json(no_protocol, key="k")


def test_saved_evaluations_reads_each_file_typed(tmp_path: Path, three_classes: dict, one_class: dict) -> None:
    assert saved_evaluations(tmp_path) == []
    folder = tmp_path / "evaluations"
    folder.mkdir()
    (folder / "b.json").write_text(json.dumps(older(three_classes, 2)))
    (folder / "a.json").write_text(json.dumps(one_class))
    a, b = saved_evaluations(tmp_path)
    assert (a.key, a.schema_version, a.relation) == ("a", 4, "other source")
    assert (b.key, b.schema_version, b.relation, b.intervals) == ("b", 2, UNSTATED, None)
