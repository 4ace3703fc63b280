"""The reproduction report states only what its own studies measured: a user's 2-fold study of 90 images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.reports.reproduction import reproduction_report
from engine.results import artifacts
from engine.training.presets import get_protocol
from engine.training.runner import run_study
from engine.training.study import StudyRequest
from tests.synthetic import make_dataset

pytestmark = pytest.mark.usefixtures("eager_tensorflow")

N_PER_CLASS = 30
BATCH = 32
DEMO_FACTS = ("219", "1,338", "73 steps", "0.999^730", "48 %", "alpha 0.35", "stratified 5-fold", "Kermany")


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """A 2-fold study of 90 images (30 per class) under the paper's protocol, one epoch, 32 px."""
    base = tmp_path_factory.mktemp("report")
    data = make_dataset(base / "my-own-set", n_per_class=N_PER_CLASS)
    root = base / "artifacts"
    request = StudyRequest(protocol=get_protocol("paper").replace(epochs=1, batch_size=BATCH), n_folds=2, weights=None)
    study = run_study(data, backbones=["MobileNet-0.25"], request=request, input_size=32, artifacts_root=root)
    return root, study


@pytest.mark.slow
def test_a_small_study_gets_its_own_figures_and_none_of_the_demo_facts(small_study):
    root, study = small_study
    text = reproduction_report(root)
    for fact in DEMO_FACTS:
        assert fact not in text, f"the demo study's {fact!r} is stated for a study that did not measure it"
    assert "stratified 2-fold cross-validation" in text
    assert "my-own-set" in text and "has 90 images (COVID-19 30, Normal 30, Viral Pneumonia 30)" in text
    runs = artifacts.study_runs(study.study_id, root)
    steps = math.ceil(runs[0].config["n_train"] / BATCH)
    momentum = runs[0].config["batchnorm_momentum"][0]
    assert (steps, momentum) == (2, 0.99)
    assert f"momentum 0.99, 1 epoch of {steps} steps" in text
    assert f"0.99^{steps} = {100 * momentum**steps:.2g} %" in text


@pytest.mark.slow
def test_another_network_is_set_beside_the_paper_never_subtracted(small_study):
    root, study = small_study
    text = reproduction_report(root)
    runs = artifacts.study_runs(study.study_id, root)
    accuracy = np.array([r.metrics["accuracy"] for r in runs])
    ours = next(line for line in text.splitlines() if line.startswith("| ours MobileNet-0.25 |"))
    assert f"| {accuracy.mean():.3f} ± {accuracy.std(ddof=1):.3f} |" in ours
    assert "| image-level |" in ours, "Table 1 says which split made the row"
    assert not any(line.startswith("| difference (ours − paper)") for line in text.splitlines()), (
        "no figure of another network is subtracted from the paper's"
    )
    assert "MobileNet-0.25 is MobileNet (alpha 0.25); the paper's MobileNet row is MobileNet (alpha 1.0)" in text


def test_the_epoch_kept_says_how_often_fine_tuning_was_not_kept():
    """A selected epoch equal to the probe's epochs means the warm-up state won: the base never changed."""
    from types import SimpleNamespace

    from engine.reports.results_sections import selected_epochs

    stages = get_protocol("xray-finetune").to_dict()["stages"]
    runs = [
        SimpleNamespace(backbone="B", fold=f, config={"selected_epoch": e, "protocol": {"stages": stages}})
        for f, e in enumerate((60, 63, 60))
    ]
    assert "B kept the warm-up in 2 of 3 folds (fold 0: 60, fold 1: 63, fold 2: 60)" in selected_epochs(runs)


def test_a_target_is_met_only_when_its_whole_interval_clears_the_bar():
    from engine.reports.results_sections import interval_verdict

    assert interval_verdict({"estimate": 0.97, "low": 0.955, "high": 0.98}, 0.95) == "met"
    assert interval_verdict({"estimate": 0.96, "low": 0.94, "high": 0.975}, 0.95).startswith("undecided")
    assert interval_verdict({"estimate": 0.93, "low": 0.91, "high": 0.945}, 0.95) == "not met"
    assert interval_verdict(None, 0.95) == "not measured yet"


def test_every_model_evaluated_on_the_extra_set_gets_its_own_target_row():
    """The best of several evaluations on one set would be a choice made on that set: each is shown."""
    from engine.evaluation.external_results import ExternalEvaluation
    from engine.reports.results_sections import EXTRA_SET, extra_set_rows

    def evaluation(backbone: str, hits: int, *, data: str = EXTRA_SET, study: str = "s1", **model) -> dict:
        """A saved evaluation of 2,000 COVID-19 images; the fields the rows do not read are placeholders."""
        model = {"backbone": backbone, "fold": None, "folds": [0, 1], "study_id": study, **model}
        model |= {"protocol": "xray-probe", "classes": ["COVID-19", "Normal", "Viral Pneumonia"]}
        interval = {"estimate": hits / 2000, "low": hits / 2000 - 0.004, "high": hits / 2000 + 0.003}
        overlap = {"checked": 2000, "identical": 0, "near_duplicates": 0, "left_out": [], "rule": "–"}
        return {
            "schema_version": 4,
            "data": {
                "name": data,
                "fingerprint": "0" * 16,
                "counts": {"COVID-19": 2000},
                "classes_not_in_model": [],
                "skipped": [],
                "duplicates_dropped": 0,
                "overlap_with_study": overlap,
            },
            "model": model,
            "accuracy": hits / 2000,
            "recall": {"COVID-19": hits / 2000},
            "metrics": {},
            "intervals": {"description": "–", "metrics": {"recall[COVID-19]": interval}, "undefined": []},
        }

    saved_before_intervals = evaluation("MobileNet-0.25", 1990)
    del saved_before_intervals["intervals"]
    evaluations = [
        saved_before_intervals,
        evaluation("MobileNetV2-0.35", 1959),
        evaluation("MobileNet", 1970),
        evaluation("ensemble", 1960, backbones=["MobileNet", "MobileNetV2-0.35"]),
        evaluation("MobileNet", 1999, data="another-set"),
        evaluation("MobileNet", 1999, study="s2"),
    ]
    evaluations = [ExternalEvaluation.from_json(e, key=str(k)) for k, e in enumerate(evaluations)]
    rows = extra_set_rows(evaluations, "s1")
    same = "; same-source held-out images)"
    assert [r[1:] for r in rows] == [
        [f"0.9850 [0.981, 0.988], 1,970 of 2,000 (MobileNet ensemble of folds 0, 1{same}", "met"],
        [f"0.9950, 1,990 of 2,000 (MobileNet-0.25 ensemble of folds 0, 1{same}", "met (no interval)"],
        [
            f"0.9795 [0.976, 0.983], 1,959 of 2,000 (MobileNetV2-0.35 ensemble of folds 0, 1{same}",
            "undecided: the interval straddles 0.98",
        ],
        [
            "0.9800 [0.976, 0.983], 1,960 of 2,000 (ensemble of MobileNet, MobileNetV2-0.35 (folds 0, 1 of each)"
            + same,
            "undecided: the interval straddles 0.98",
        ],
    ]
    assert [r[1:] for r in extra_set_rows(evaluations, "s3")] == [["–", "not measured yet"]]


def test_the_summary_sets_every_audited_study_beside_its_no_anatomy_baseline_in_one_table():
    """One row per study with a baseline, naming its best model; a study without one is left out, not filled in."""
    from types import SimpleNamespace

    from engine.reports.summary_sections import shortcut_table

    def model(name: str, accuracy: float, image_level: dict | None = None) -> SimpleNamespace:
        interval = {"estimate": accuracy, "low": accuracy - 0.01, "high": accuracy + 0.01}
        return SimpleNamespace(model=name, in_fold={"accuracy": interval}, image_level=image_level)

    baseline = {"figures": {"metrics": {"accuracy": {"estimate": 0.905, "low": 0.894, "high": 0.915}}}}
    audited = SimpleNamespace(
        study_id="s1",
        protocol="xray-probe",
        sources=["paper", "nih"],
        split="patient",
        baseline=baseline,
        models=[model("A", 0.97), model("B", 0.98, image_level={"estimate": 0.985})],
    )
    unaudited = SimpleNamespace(
        study_id="s2", protocol="frozen", sources=["paper"], split="image", baseline=None, models=[]
    )
    lines = shortcut_table([audited, unaudited])
    rows = [line for line in "\n".join(lines).splitlines() if line.startswith("| `")]
    assert rows == [
        "| `s1` | `xray-probe` | paper + nih, patient-level folds | 0.980 [0.970, 0.990] (B) | 0.905 [0.894, 0.915] "
        "| B 0.985 (patient-level 0.980) |"
    ]
    assert shortcut_table([unaudited]) == []


def test_the_occlusion_region_is_said_once_when_every_audit_used_it_and_under_each_study_otherwise(monkeypatch):
    """Twenty copies of one sentence under twenty tables bury the tables; two regions must each stay by its own."""
    from types import SimpleNamespace

    from engine.reports import summary_sections

    def study(study_id: str, region: str) -> SimpleNamespace:
        return SimpleNamespace(
            study_id=study_id, protocol="p", sources=["a"], split="patient", region=region, models=[]
        )

    monkeypatch.setattr(summary_sections, "headline_rows", lambda g: [{"model": g.study_id}])
    monkeypatch.setattr(summary_sections, "judged_studies", lambda root: [study("s1", "box"), study("s2", "box")])
    text = summary_sections.generalisation_section(None)
    assert text.count("(occlusion) use box;") == 1 and text.index("Lungs hidden") < text.index("### ")
    monkeypatch.setattr(summary_sections, "judged_studies", lambda root: [study("s1", "box"), study("s2", "mask")])
    text = summary_sections.generalisation_section(None)
    assert text.count("(occlusion) use box;") == 1 and text.count("(occlusion) use mask;") == 1
    assert text.index("### `p` · a · patient-level folds · study `s1`") < text.index("box;") < text.index("study `s2`")


def test_the_summary_says_which_compositions_clear_the_in_fold_covid_bar(tmp_path, monkeypatch):
    """Grouped by sources and split, not by study; "at most" is over the candidates that clear the bar only; a group
    with none gives its best; the served model's sources are named."""
    from types import SimpleNamespace

    from engine.reports import summary_sections

    compositions = {
        "kids": ("paper",),
        "kids-too": ("paper",),
        "adults": ("paper", "nih"),
        "more": ("paper", "nih", "extra"),
    }
    for study_id in compositions:
        (tmp_path / study_id).mkdir()
        (tmp_path / study_id / "study.json").write_text("{}")
    fake = SimpleNamespace(
        list_study_ids=lambda root: sorted(p.name for p in tmp_path.iterdir() if (p / "study.json").is_file()),
        read_study=lambda study_id, root: SimpleNamespace(dataset=SimpleNamespace(sources=compositions[study_id])),
    )
    monkeypatch.setattr(summary_sections, "artifacts", fake)

    def candidate(study_id: str, low: float | None, normals: float, *, split: str = "patient") -> dict:
        covid = None if low is None else {"estimate": low + 0.02, "low": low, "high": low + 0.04}
        how = "external" if study_id.startswith("kids") else "held out by patient in its fold"
        return {
            "study_id": study_id,
            "split": split,
            "paper_covid_recall": covid,
            "adult_normals": {"estimate": normals},
            "adult_normals_how": how,
        }

    choice = {
        "study_id": "adults",
        "candidates": [
            candidate("kids", 0.96, 0.03),
            candidate("kids-too", 0.97, 0.02),
            candidate("kids-too", 0.90, 0.50),
            candidate("kids", 0.99, 0.01, split="image"),
            candidate("adults", 0.91, 0.97),
            candidate("adults", 0.89, 0.95),
            candidate("adults", None, 0.99),
            candidate("more", 0.97, 0.92),
        ],
    }
    line, films = summary_sections._in_fold_covid_bullet(choice, None)
    assert films == f"  - {summary_sections.FILMS_WITHOUT_FINDINGS}", "the cited reason sits under the bullet"
    parts = line.split("; ")
    assert parts[0].endswith(
        "the one trained on paper (image-level folds) clears it and calls 0.010 of nih-adult-normal Normal (external)"
    )
    assert parts[1] == (
        "of the 3 trained on paper (patient-level folds), 2 clear it and call at most 0.030 of nih-adult-normal "
        "Normal (external)"
    )
    assert parts[2] == (
        "none of the 2 trained on paper + nih (patient-level folds, the served model's sources) does (the best: "
        "0.930 [0.910, 0.950])"
    )
    assert parts[3] == (
        "the one trained on paper + nih + extra (patient-level folds) clears it and calls 0.920 of nih-adult-normal "
        "Normal (held out by patient in its fold)."
    )
    choice["candidates"].append(candidate("adults", 0.96, 0.69))
    line, _ = summary_sections._in_fold_covid_bullet(choice, None)
    assert line.split("; ")[2] == (
        "of the 3 trained on paper + nih (patient-level folds, the served model's sources), 1 clears it and calls "
        "0.690 of nih-adult-normal Normal (held out by patient in its fold)"
    )
    (tmp_path / "adults" / "study.json").unlink()
    assert summary_sections._in_fold_covid_bullet(choice, None) == [], "no sources for the served study: no bullet"


def test_the_readme_headline_shows_the_first_ranked_then_the_first_of_each_protocol_trained_without_adults():
    """The rest stay in the report's ranked table; a protocol already shown among the first is not shown twice."""
    from engine.reports.readme import HEADLINE_RANKS, headline_candidates

    def candidate(protocol: str, how: str = "held out by patient in its fold") -> dict:
        return {"protocol": protocol, "adult_normals_how": how}

    first = [candidate(f"multi-{i}") for i in range(HEADLINE_RANKS - 1)] + [candidate("frozen", "external")]
    later = [
        candidate("multi-late"),
        candidate("frozen", "external"),
        candidate("xray-probe", "external"),
        candidate("xray-probe", "external"),
    ]
    shown = headline_candidates(first + later)
    assert shown == [*first, later[2]]
    assert shown[-1] is later[2], "the first of its protocol, in rank order"
    assert headline_candidates(first[:2]) == first[:2]


def test_a_target_never_measured_is_counted_apart_from_one_missed():
    from engine.reports.readme import _met

    assert _met({"met": {"a": True, "b": None, "c": False}}) == "1 of 3 (1 not measured)"
    assert _met({"met": {"a": True, "b": False}}) == "1 of 2"


def test_the_harmonisation_ablation_counts_adult_normals_under_the_strongest_exposures_only_where_files_did():
    """Each committed study's cell is the adult normals' correct calls over its five fold files, added up; a study
    whose robustness files never counted sources apart shows a dash, not a figure from all images."""
    from engine.reports.generalisation_sections import harmonisation_section
    from engine.settings import PROJECT_ROOT
    from tests.robustness_files import pooled, robustness_json

    def shares(study_id: str) -> str:
        files = robustness_json(PROJECT_ROOT / "artifacts", study_id, "MobileNet-0.25")
        assert len(files) == 5
        adults = [
            {**r, "conditions": [{**c, **c["by_source"]["nih-adult-normal"]} for c in r["conditions"]]} for r in files
        ]
        assert sum(c["n"][1] for r in adults for c in r["conditions"] if c["shift"] == "none") == 252
        return " / ".join(
            f"{pooled(adults, shift, 'strong', cls=1):.3f}" for shift in ("contrast", "gamma", "brightness")
        )

    rows = {line.split(" | ")[0]: line.strip("|").split(" | ") for line in harmonisation_section(None).splitlines()}
    assert rows["| `harmonise-probe-exposure`"][-1].strip() == shares("7285f4392e3c")
    assert rows["| `harmonise-probe-varied-by-source`"][-1].strip() == shares("02eb85d77f81")
    assert rows["| `xray-finetune`"][-1].strip() == "–"
