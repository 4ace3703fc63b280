"""``Study``: study.json read in one place, older files filled in, and written back byte for byte."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import settings
from engine.results import atomic
from engine.results.studies import SplitRecord, Study

COMMITTED = sorted((settings.PROJECT_ROOT / "artifacts" / "studies").glob("*/study.json"))


def written(data: dict) -> bytes:
    """What ``engine.results.atomic.write_json`` writes."""
    return atomic.json_text(data).encode()


def old_study() -> dict:
    """A study.json as the first studies wrote it: no split, no sources, no by_source."""
    return {
        "schema_version": 1,
        "study_id": "0ld5tudy0000",
        "title": "old · frozen · 2-fold · 32px · seed 0",
        "created_at": 1.5,
        "dataset": {
            "name": "old",
            "fingerprint": "f" * 16,
            "source": "old",
            "classes": ["COVID-19", "Normal"],
            "counts": {"COVID-19": 2, "Normal": 3},
            "n_images": 5,
        },
        "protocol": {"name": "frozen", "description": "a frozen base"},
        "n_folds": 2,
        "seed": 0,
        "input_size": 32,
        "weights": None,
        "folds": [[0, 2, 4], [1, 3]],
    }


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_every_committed_study_loads_and_round_trips_byte_for_byte(path):
    raw = path.read_bytes()
    study = Study.from_json(json.loads(raw))
    assert study.study_id == path.parent.name
    assert written(study.to_json()) == raw


def test_an_older_study_is_filled_in_and_written_back_as_it_was():
    data = old_study()
    study = Study.from_json(data)
    assert study.split == SplitRecord(level="image", requested="image") and not study.split_recorded
    assert study.split_level == "image" and study.split.patients_in_several_folds is None
    assert study.dataset.sources == ("old",) and not study.dataset.multi_source
    assert study.dataset.by_source == {"old": {"COVID-19": 2, "Normal": 3}}
    assert study.protocol_name == "frozen" and study.folds == [[0, 2, 4], [1, 3]]
    assert study.held_out(1).tolist() == [1, 3] and study.held_out(1).dtype == np.int64
    assert study.to_json() == data and written(study.to_json()) == written(data)


def test_a_study_with_its_split_and_sources_round_trips():
    data = old_study()
    data["dataset"] |= {"sources": ["a", "b"], "by_source": {"a": {"COVID-19": 2, "Normal": 0}, "b": {"Normal": 3}}}
    data["split"] = {
        "level": "patient",
        "requested": "patient",
        "patients": 4,
        "images_sharing_a_patient": 2,
        "patient_rules": {"file name": 5},
        "patients_in_several_folds": {"patients": 0, "images": 0},
    }
    study = Study.from_json(data)
    assert study.split_recorded and study.split_level == "patient" and study.split.patients == 4
    assert study.dataset.multi_source and study.dataset.sources == ("a", "b")
    assert study.to_json() == data
    assert Study.from_json(study.to_json()) == study
