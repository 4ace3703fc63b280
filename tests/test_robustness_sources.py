"""Robustness counts by source: a multi-source study's files count each source's images under every shift, so one
source's class (the adult normals) can be followed alone; files written before that are left out of it, by name."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from engine.evaluation import robustness

CLASSES = ("COVID-19", "Normal")


def _dataset(sources: tuple[str, ...]) -> SimpleNamespace:
    rng = np.random.default_rng(0)
    return SimpleNamespace(
        images=rng.integers(0, 256, (8, 16, 16), dtype=np.uint8),
        labels=np.array([0, 0, 1, 1, 1, 1, 0, 1]),
        source_index=np.array([0, 0, 0, 0, 1, 1, 0, 1]) if len(sources) > 1 else np.zeros(8, dtype=np.int64),
        sources=sources,
    )


def _predict_normal_when_dark(batch: np.ndarray) -> np.ndarray:
    dark = (np.asarray(batch, dtype=float).reshape(len(batch), -1).mean(axis=1) < 128).astype(float)
    return np.stack([1 - dark, dark], axis=1)


def _conditions(dataset: SimpleNamespace) -> list[dict]:
    return robustness._conditions(
        _predict_normal_when_dark,
        np.arange(8),
        dataset,
        n_classes=2,
        name="test",
        on_progress=None,
        should_stop=None,
    )


def test_each_sources_counts_add_up_to_the_whole_under_every_shift():
    conditions = _conditions(_dataset(("paper", "adults")))
    assert len(conditions) == 1 + 3 * len(robustness.SHIFTS)
    for c in conditions:
        assert set(c["by_source"]) == {"paper", "adults"}
        for key in ("n", "correct"):
            np.testing.assert_array_equal(np.add(*(c["by_source"][s][key] for s in ("paper", "adults"))), c[key])
        assert c["by_source"]["adults"]["n"] == [0, 3], "the adults bring 3 normals and no COVID-19"
    assert "by_source" not in _conditions(_dataset(("paper",)))[0], "one source: nothing to split"


def test_a_sources_pooled_table_uses_only_the_files_that_counted_it():
    def result(correct_adults: int, *, by_source: bool = True) -> dict:
        adults = {"n": [0, 4], "correct": [0, correct_adults]}
        condition = {"shift": "none", "strength": None, "parameter": None, "n": [5, 9], "correct": [5, 9]}
        return {
            "classes": list(CLASSES),
            "conditions": [{**condition, **({"by_source": {"adults": adults}} if by_source else {})}],
        }

    (row,) = robustness.pooled_table([result(3), result(1), result(0, by_source=False)], source="adults")
    assert row["folds"] == 2 and row["n_images"] == 8 and row["recall"]["Normal"] == 0.5
    (whole,) = robustness.pooled_table([result(3), result(1), result(0, by_source=False)])
    assert whole["folds"] == 3 and whole["accuracy"] == 1.0
    assert robustness.pooled_table([result(0, by_source=False)], source="adults") == []


def test_the_shifts_text_leaves_out_settings_and_shifts_without_a_figure():
    from engine.reports.served import shifts_text

    recalls = {
        "none": [("none", 0.9)],
        "noise": [("noise σ 4", None)],
        "blur": [("blur 1 px", 0.9), ("blur 2 px", None), ("blur 4 px", 0.85)],
    }
    assert shifts_text(recalls) == "blur 1 px 0.900, blur 4 px 0.850"
