"""The on-disk schema of studies and runs (documented in ``docs/artifacts.md``).

```
<artifacts>/
  schema.json                          {"schema_version": 1}
  datasets/<fingerprint>/manifest.json  files, labels, classes, import report
  datasets/<fingerprint>/images-<size>.npy   decoded uint8 cache (never committed)
  features/<key>.npy                   cached pooled features of the frozen protocol
  cache/xla/                           JAX's persistent XLA compilation cache (engine.training.compilation)
  studies/<study_id>/study.json        dataset, protocol, folds (held-out indices), seed, size
  studies/<study_id>/runs/<backbone>/fold-<k>/
      config.json  history.json  metrics.json  predictions.csv  model.keras  status.json
  jobs.sqlite                          the background job store
```

``study_id`` hashes the canonical inputs of a study (dataset fingerprint, protocol, folds, seed,
input size, weights) plus the schema version, so the same request finds the same folder. Every
file is written atomically, and ``status.json`` is written last: a run folder without it is
incomplete and is never read as a result; running it again overwrites it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import settings
from engine.results import atomic
from engine.results.studies import Study

SCHEMA_VERSION = 1


def canonical_hash(obj: object, *, length: int = 12) -> str:
    text = json.dumps({"schema_version": SCHEMA_VERSION, "inputs": obj}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def ensure_root(artifacts_root: Path | None = None) -> Path:
    root = artifacts_root or settings.artifacts_dir()
    schema = root / "schema.json"
    if not schema.exists():
        atomic.write_json(schema, {"schema_version": SCHEMA_VERSION})
    return root


def study_dir(study_id: str, artifacts_root: Path | None = None) -> Path:
    return (artifacts_root or settings.artifacts_dir()) / "studies" / study_id


def run_dir(study_id: str, backbone: str, fold: int, artifacts_root: Path | None = None) -> Path:
    return study_dir(study_id, artifacts_root) / "runs" / backbone / f"fold-{fold}"


def is_complete(path: Path) -> bool:
    """A run is a result only once its final status file says so."""
    status = path / "status.json"
    if not status.is_file():
        return False
    try:
        return atomic.read_json(status).get("state") == "done"
    except (OSError, ValueError):
        return False


def clear_incomplete(path: Path) -> None:
    """Remove what a killed run left behind, so nothing of it is ever read."""
    if path.exists() and not is_complete(path):
        shutil.rmtree(path)


def predictions_csv(files: list[str], folds: list[int], y_true: np.ndarray, proba: np.ndarray, classes) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "fold", "true", "predicted", *[f"p[{c}]" for c in classes]])
    for f, k, t, p in zip(files, folds, y_true, proba, strict=True):
        writer.writerow([f, k, classes[t], classes[int(np.argmax(p))], *[f"{v:.6f}" for v in p]])
    return out.getvalue()


def write_run(path: Path, *, config: dict, history: dict, metrics: dict, predictions: str, status: dict) -> None:
    """Write a run's files atomically; ``status.json`` last, so a crash leaves it incomplete."""
    atomic.write_json(path / "config.json", config)
    atomic.write_json(path / "history.json", history)
    atomic.write_json(path / "metrics.json", metrics)
    atomic.write_text(path / "predictions.csv", predictions)
    atomic.write_json(path / "status.json", {"state": "done", "schema_version": SCHEMA_VERSION, **status})


@dataclass(frozen=True)
class RunResult:
    """A finished run, read back from disk."""

    study_id: str
    backbone: str
    fold: int
    path: Path
    config: dict
    history: dict
    metrics: dict
    status: dict

    @property
    def model_path(self) -> Path | None:
        model = self.path / "model.keras"
        return model if model.is_file() else None


def read_run(path: Path) -> RunResult | None:
    """The run at ``path``, or ``None`` while it is incomplete."""
    if not is_complete(path):
        return None
    config = atomic.read_json(path / "config.json")
    return RunResult(
        study_id=config["study_id"],
        backbone=config["backbone"],
        fold=int(config["fold"]),
        path=path,
        config=config,
        history=atomic.read_json(path / "history.json"),
        metrics=atomic.read_json(path / "metrics.json"),
        status=atomic.read_json(path / "status.json"),
    )


def read_predictions(run: RunResult) -> list[dict[str, str]]:
    with open(run.path / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def list_study_ids(artifacts_root: Path | None = None) -> list[str]:
    root = (artifacts_root or settings.artifacts_dir()) / "studies"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "study.json").is_file())


def read_study(study_id: str, artifacts_root: Path | None = None) -> Study:
    """The study of ``study_id``: its ``study.json`` read as a :class:`~engine.results.studies.Study`."""
    return read_study_file(study_dir(study_id, artifacts_root) / "study.json")


def read_study_file(path: Path) -> Study:
    return Study.from_json(atomic.read_json(path))


def write_study_file(path: Path, study: Study) -> None:
    atomic.write_json(path, study.to_json())


def study_runs(study_id: str, artifacts_root: Path | None = None) -> list[RunResult]:
    """Every complete run of a study, by backbone then fold."""
    runs_root = study_dir(study_id, artifacts_root) / "runs"
    if not runs_root.is_dir():
        return []
    found = []
    for backbone in sorted(runs_root.iterdir()):
        for fold_dir in sorted(backbone.glob("fold-*")):
            run = read_run(fold_dir)
            if run is not None:
                found.append(run)
    return found


CHANGE_PATTERNS = (
    "runs/*/fold-*/status.json",
    "runs/*/fold-*/model.keras",
    "runs/*/fold-*/ood.npz",
    "runs/*/fold-*/export/*",
    "runs/*/export/*",
    "export/*",
    "runs/*/ood-folds-*.npz",
    "evaluation/*.json",
    "robustness/*/*.json",
    "audit/*.json",
)
"""What a study's readers show: finished runs, saved models, exports, detectors, summaries and analyses."""


def changed_key(artifacts_root: Path | None = None, study_id: str | None = None) -> tuple[int, int]:
    """A cheap marker that changes whenever a result is written, replaced or removed: of one study (with the
    saved evaluations and the served model's choice, which every study's pages show), or of every study.
    The one key of the app's caches."""
    root = artifacts_root or settings.artifacts_dir()
    folders = [study_dir(study_id, root)] if study_id else [study_dir(s, root) for s in list_study_ids(root)]
    files = [f for folder in folders for pattern in CHANGE_PATTERNS for f in folder.glob(pattern)]
    files += [*root.glob("evaluations/*.json"), *root.glob("served.json"), *root.glob("studies/*/study.json")]
    stamps = sorted((str(f), f.stat().st_mtime_ns) for f in files if f.is_file())
    return len(stamps), hash(tuple(stamps))
