"""External checks: a trained model on labelled images no fold has seen, with the fold metrics.

Classes are matched by name (``COVID``, ``covid19``... all mean ``COVID-19``), and a folder with
only some of the model's classes works: metrics are then read for the classes present (for a
COVID-19-only folder, accuracy is COVID-19 recall). Results are kept under
``<artifacts>/evaluations/`` so reports regenerate from disk.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from engine import settings
from engine.data.classes import canonical_class
from engine.data.images import IMAGE_SUFFIXES, ImageError, decode_xray
from engine.evaluation.metrics import fold_metrics
from engine.models.inference import Classifier
from engine.results import artifacts, atomic

BATCH = 64


def _labelled_files(root: Path) -> list[tuple[Path, str]]:
    """(file, class) pairs: images in a sub-folder take its name, images at the top take the folder's."""
    pairs = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES or path.is_symlink():
            continue
        rel = path.relative_to(root)
        if any(part.lower() == "masks" or part.startswith(".") for part in rel.parts):
            continue
        folder = rel.parts[0] if len(rel.parts) > 1 else root.name
        pairs.append((path, canonical_class(folder)))
    return pairs


def _decode(path: Path, size: int) -> tuple[np.ndarray | None, str | None, str]:
    data = path.read_bytes()
    digest = hashlib.sha1(data).hexdigest()
    try:
        return decode_xray(data, size=size, name=path.name).pixels, None, digest
    except ImageError as exc:
        return None, str(exc), digest


def evaluate_folder(classifier: Classifier, data: str | Path, *, artifacts_root: Path | None = None) -> dict:
    """Metrics and confusion matrix of ``classifier`` on the labelled folder ``data``; saved on disk."""
    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"data must be a folder of labelled images, got data={str(root)!r}")
    pairs = _labelled_files(root)
    known = [(p, c) for p, c in pairs if c in classifier.classes]
    unknown = sorted({c for _, c in pairs} - set(classifier.classes))
    if not known:
        raise ValueError(f"{root}: no images of the model's classes ({', '.join(classifier.classes)}) found")
    decoded = Parallel(n_jobs=-1, prefer="threads")(delayed(_decode)(p, classifier.input_size) for p, _ in known)
    images, labels, skipped, digest = [], [], [], hashlib.sha256()
    for (path, cls), (pixels, error, sha) in zip(known, decoded, strict=True):
        digest.update(f"{cls}\0{path.relative_to(root).as_posix()}\0{sha}\n".encode())
        if error:
            skipped.append({"file": str(path.relative_to(root)), "reason": error})
            continue
        images.append(pixels)
        labels.append(classifier.classes.index(cls))
    images_arr = np.stack(images)
    proba = np.concatenate(
        [classifier.predict_arrays(images_arr[i : i + BATCH])[0] for i in range(0, len(images_arr), BATCH)]
    )
    y = np.asarray(labels)
    metrics = fold_metrics(y, proba, classifier.classes)
    present = [classifier.classes[k] for k in sorted(set(labels))]
    result = {
        "schema_version": artifacts.SCHEMA_VERSION,
        "model": {**classifier.info, "classes": list(classifier.classes)},
        "data": {
            "name": root.name,
            "fingerprint": digest.hexdigest()[:16],
            "counts": {c: int(np.sum(y == classifier.classes.index(c))) for c in present},
            "classes_not_in_model": unknown,
            "skipped": skipped,
        },
        "classes_present": present,
        "accuracy": metrics["accuracy"],
        "recall": {c: metrics["per_class"][c]["recall"] for c in present},
        "metrics": metrics,
        "evaluated_at": time.time(),
    }
    key = artifacts.canonical_hash({"model": classifier.info, "data": result["data"]["fingerprint"]})
    atomic.write_json((artifacts_root or settings.artifacts_dir()) / "evaluations" / f"{key}.json", result)
    return result


def list_evaluations(artifacts_root: Path | None = None) -> list[dict]:
    folder = (artifacts_root or settings.artifacts_dir()) / "evaluations"
    if not folder.is_dir():
        return []
    return [atomic.read_json(p) for p in sorted(folder.glob("*.json"))]
