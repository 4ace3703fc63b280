"""The report's "why the numbers differ from the paper's": data, networks, protocols, BatchNorm under fine-tuning,
metric definitions and loss, each read from the studies it describes or from the paper (``engine/reference``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from engine.models.backbones import REGISTRY
from engine.reports import explore
from engine.reports.paper_networks import NOT_COMPARABLE, paper_row_of, paper_table1, same_network_as_paper, variant
from engine.results import artifacts
from engine.results.studies import Study
from engine.training.protocols import Protocol

DATASETS = json.loads((explore.REFERENCE_DIR / "datasets.json").read_text())


def _count(n: int) -> str:
    return f"{n:,}"


def _studies(rows: list[dict], artifacts_root: Path | None) -> dict[str, Study]:
    return {sid: artifacts.read_study(sid, artifacts_root) for sid in sorted({r["study_id"] for r in rows})}


def _data_bullet(studies: dict[str, Study]) -> str:
    paper = DATASETS["paper_dataset"]
    paper_counts = ", ".join(f"{c} {_count(n)}" for c, n in paper["counts"].items())
    lines = [f"- **Data.** The paper used {_count(paper['images'])} images ({paper_counts})."]
    datasets = {s.dataset.fingerprint: s.dataset for s in studies.values()}
    for fingerprint, dataset in sorted(datasets.items()):
        counts = ", ".join(f"{c} {_count(n)}" for c, n in dataset.counts.items())
        lines.append(
            f"  This report's dataset {dataset.name} (fingerprint `{fingerprint}`) has "
            f"{_count(dataset.n_images)} images ({counts})."
        )
        known = DATASETS["known_datasets"].get(fingerprint)
        if known:
            lines.append(f"  About this dataset (known by its fingerprint; source: {known['source']}): {known['note']}")
    return "\n".join(lines)


def _network_bullet(rows: list[dict]) -> str | None:
    others = sorted({r["backbone"] for r in rows if not same_network_as_paper(r["backbone"])})
    if not others:
        return None
    described = []
    for backbone in others:
        family = paper_row_of(backbone)
        paper_net = variant(family) if family and family in REGISTRY else family
        where = f"the paper's {family} row is {paper_net}" if family else "the paper has no row of its family"
        described.append(f"{backbone} is {variant(backbone)}; {where}")
    return (
        "- **Networks.** Rows of networks the paper did not train are shown beside its closest row, never "
        "subtracted from it: " + "; ".join(described) + "."
    )


def _protocol_bullet(studies: dict[str, Study]) -> str:
    protocols = {s.protocol_name: s.protocol_description for s in studies.values()}
    return "- **Protocols.** " + " ".join(f"`{name}`: {text}" for name, text in sorted(protocols.items()))


def _batchnorm_sentence(study: Study, runs: list[artifacts.RunResult]) -> str | None:
    """How much ImageNet BatchNorm statistics survive a study's fine-tuning, from its runs' own figures."""
    protocol = Protocol.from_dict(study.protocol)
    if protocol.cached_features:
        return None
    epochs = sum(stage.epochs for stage in protocol.stages if stage.trainable == "all")
    momenta = sorted({m for run in runs for m in run.config.get("batchnorm_momentum", [])})
    if not epochs or not runs or len(momenta) != 1:
        return None
    steps = sorted({math.ceil(run.config["n_train"] / protocol.batch_size) for run in runs})
    total = epochs * steps[0]
    kept = 100 * momenta[0] ** total
    step_text = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]} to {steps[-1]}"
    return (
        f"{runs[0].backbone} (`{protocol.name}`): momentum {momenta[0]:g}, {epochs} epoch{'s' * (epochs != 1)} "
        f"of {step_text} steps, "
        f"so its moving averages still hold {momenta[0]:g}^{total} = {kept:.2g} % of the ImageNet statistics"
    )


def _batchnorm_bullet(studies: dict[str, Study], artifacts_root: Path | None) -> str | None:
    sentences = []
    for study_id, study in studies.items():
        by_backbone: dict[str, list[artifacts.RunResult]] = {}
        for run in artifacts.study_runs(study_id, artifacts_root):
            by_backbone.setdefault(run.backbone, []).append(run)
        for runs in by_backbone.values():
            sentence = _batchnorm_sentence(study, runs)
            if sentence:
                sentences.append(sentence)
    if not sentences:
        return None
    return (
        "- **BatchNorm under full fine-tuning.** When every layer trains, BatchNorm layers normalise each augmented "
        "training batch by its own statistics while evaluation uses their moving averages, which move towards X-ray "
        "statistics only as fast as the layers' momentum allows. "
        + "; ".join(sentences)
        + ". Held-out accuracy can then swing from epoch to epoch (see the Training curves page), and the paper's "
        "rule of reporting the last epoch can catch a poor one. A protocol whose base is frozen does not meet this."
    )


def _loss_bullet() -> str:
    losses = [row["loss"] for row in paper_table1().values()]
    return (
        f"- **Loss.** The paper's losses ({min(losses):.3f} to {max(losses):.3f}) are far below a cross-entropy "
        "consistent with its accuracies, so they were probably another quantity; ours is the categorical "
        f"cross-entropy on the held-out fold. They are {NOT_COMPARABLE}, so no difference is shown."
    )


METRICS_BULLET = (
    "- **Metric definitions.** The paper's precision/recall are Keras `Precision()`/`Recall()` on one-hot outputs "
    "at a 0.5 threshold (every image-class cell is one decision), which is why its precision is above its "
    "accuracy; macro (per-class) figures are the ones to judge a model by, and the paper has none to compare with."
)


def why_section(rows: list[dict], artifacts_root: Path | None) -> str:
    studies = _studies(rows, artifacts_root)
    bullets = [
        _data_bullet(studies),
        _network_bullet(rows),
        _protocol_bullet(studies),
        _batchnorm_bullet(studies, artifacts_root),
        METRICS_BULLET,
        _loss_bullet(),
    ]
    return "\n".join(b for b in bullets if b) + "\n"
