"""The served model's ranking: what holds outside the source first, then robustness, then in-fold accuracy."""

from __future__ import annotations

from engine.reports.served import SHIFTS, Candidate


def candidate(name: str, *, accuracy: float, normals: float, covid: float, drop: float) -> Candidate:
    return Candidate(
        study_id=name,
        backbone="MobileNet-0.25",
        protocol="p",
        split="patient",
        folds=(0, 1, 2, 3, 4),
        export=None,
        paper_accuracy={"estimate": accuracy},
        paper_covid_recall={"estimate": accuracy},
        adult_normals={"estimate": normals},
        adult_normals_how="held out by patient in its fold",
        external_covid={"estimate": covid},
        external_viral=None,
        drops={f"{shift} {value:g}": drop for shift, value in SHIFTS},
    )


def test_a_model_that_calls_every_adult_covid_ranks_below_one_that_tells_adults_apart():
    # the pre-change served model: in-fold 0.96, external COVID-19 0.93, but 0.01 of adult normals called Normal;
    # it meets more targets (both in-fold ones and the external COVID-19 one) than the multi-source model
    shortcut = candidate("shortcut", accuracy=0.96, normals=0.01, covid=0.93, drop=0.30)
    pooled = candidate("pooled", accuracy=0.93, normals=0.79, covid=0.80, drop=0.30)
    assert sum(map(bool, shortcut.met().values())) > sum(map(bool, pooled.met().values()))
    assert sorted([shortcut, pooled], key=Candidate.rank, reverse=True)[0] is pooled


def test_robustness_then_in_fold_accuracy_break_a_tie_outside_the_source():
    fragile = candidate("fragile", accuracy=0.97, normals=0.80, covid=0.85, drop=0.30)
    robust = candidate("robust", accuracy=0.90, normals=0.80, covid=0.82, drop=0.01)
    assert robust.rank()[1] == len(SHIFTS) and fragile.rank()[1] == 0
    assert sorted([fragile, robust], key=Candidate.rank, reverse=True)[0] is robust
    sharper = candidate("sharper", accuracy=0.95, normals=0.80, covid=0.82, drop=0.01)
    assert sorted([robust, sharper], key=Candidate.rank, reverse=True)[0] is sharper
