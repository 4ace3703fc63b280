"""A study's images from several dataset folders: one dataset in which each image keeps its source.

The first folder sets the classes; each later one adds images to them (its class folders matched by
:func:`engine.data.classes.canonical_class`, so ``NORMAL`` is ``Normal``), and a folder of a class the
first does not have is refused by name. An image that an earlier source already holds (the same decoded
pixels) is dropped once and listed. Each source is imported and cached on its own
(:func:`engine.data.datasets.import_dataset`); the combination is cached like any dataset, under a
fingerprint of its parts, with file names prefixed by their source (``nih-adult-normal/Normal/x.png``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from engine.data import overlap
from engine.data.datasets import (
    COPY_ROWS,
    DATASET_SCHEMA,
    Dataset,
    DatasetError,
    ImportReport,
    dataset_dir,
    import_dataset,
    load_dataset,
    read_manifest,
)
from engine.data.patients import CSV_RULE, patient_groups
from engine.results import atomic
from engine.results.studies import Study


def _names(parts: list[Dataset]) -> list[str]:
    """Each part's name, made unique with a suffix where two folders share one."""
    seen: Counter[str] = Counter()
    names = []
    for part in parts:
        seen[part.name] += 1
        names.append(part.name if seen[part.name] == 1 else f"{part.name}-{seen[part.name]}")
    return names


def _class_map(first: Dataset, part: Dataset, name: str) -> np.ndarray:
    """``part``'s label index to the first dataset's; a class the first lacks is refused by its folder name."""
    unmatched = [c for c in part.classes if c not in first.classes]
    if unmatched:
        folders = ", ".join(f"{name}/{f}" for c in unmatched for f in part.report.class_folders.get(c, [c]))
        raise DatasetError(
            f"class folder(s) {folders} match none of {first.name}'s classes ({', '.join(first.classes)}); "
            "rename them to one of those, or leave that source out"
        )
    return np.asarray([first.classes.index(c) for c in part.classes], dtype=np.int64)


def combined_fingerprint(parts: list[Dataset]) -> str:
    digest = hashlib.sha256(f"dataset-schema-{DATASET_SCHEMA}-sources".encode())
    for part in parts:
        digest.update(f"{part.fingerprint}\n".encode())
    return digest.hexdigest()[:16]


def import_sources(
    sources: list[str | Path], *, input_size: int = 224, artifacts_root: Path | None = None, n_jobs: int = -1
) -> Dataset:
    """One dataset of ``sources`` (folders or ``.zip`` files); a single source is imported as it is."""
    if not sources:
        raise ValueError("at least one dataset folder is needed, got none")
    if len(sources) == 1:
        return import_dataset(sources[0], input_size=input_size, artifacts_root=artifacts_root, n_jobs=n_jobs)
    parts = [import_dataset(sources[0], input_size=input_size, artifacts_root=artifacts_root, n_jobs=n_jobs)]
    parts += [
        import_dataset(s, input_size=input_size, artifacts_root=artifacts_root, n_jobs=n_jobs, min_classes=1)
        for s in sources[1:]
    ]
    fingerprint = combined_fingerprint(parts)
    folder = dataset_dir(fingerprint, artifacts_root)
    if (folder / "manifest.json").exists() and (folder / f"images-{input_size}.npy").exists():
        return load_dataset(fingerprint, input_size=input_size, artifacts_root=artifacts_root)
    _combine(parts, fingerprint, input_size=input_size, artifacts_root=artifacts_root)
    dataset = load_dataset(fingerprint, input_size=input_size, artifacts_root=artifacts_root)
    overlap.dataset_hashes(dataset, artifacts_root)
    return dataset


def _combine(parts: list[Dataset], fingerprint: str, *, input_size: int, artifacts_root: Path | None) -> None:
    first, names = parts[0], _names(parts)
    maps = [_class_map(first, part, name) for part, name in zip(parts, names, strict=True)]
    report = ImportReport()
    seen: dict[str, str] = {}
    rows: list[tuple[int, int]] = []
    files: list[str] = []
    labels: list[int] = []
    listed: dict[str, str] = {}
    sizes: list[list[int]] = []
    metadata: dict[str, dict[str, str]] = {}
    for s, (part, name, mapping) in enumerate(zip(parts, names, maps, strict=True)):
        hashes = overlap.dataset_hashes(part, artifacts_root).pixels
        part_manifest = read_manifest(part.fingerprint, artifacts_root)
        part_sizes = part_manifest.get("source_sizes") or [[0, 0]] * len(part)
        part_metadata = part_manifest.get("metadata", {})
        for i, file in enumerate(part.files):
            path = f"{name}/{file}"
            if hashes[i] in seen:
                report.duplicates.append({"file": path, "same_pixels_as": seen[hashes[i]]})
                continue
            seen[hashes[i]] = path
            rows.append((s, i))
            files.append(path)
            labels.append(int(mapping[part.labels[i]]))
            sizes.append(part_sizes[i])
            if file in part_metadata:
                metadata[path] = part_metadata[file]
            if part.patients.rules[i] == CSV_RULE:
                listed[path] = f"{name}-{part.patients.patients[i].removeprefix('csv-')}"
        report.skipped += [{**item, "file": f"{name}/{item['file']}"} for item in part.report.skipped]
        report.duplicates += [{**item, "file": f"{name}/{item['file']}"} for item in part.report.duplicates]
        for cls, folders in part.report.class_folders.items():
            report.class_folders.setdefault(cls, []).extend(f"{name}/{f}" for f in folders)
    source_index = [s for s, _ in rows]
    report.counts = {c: labels.count(k) for k, c in enumerate(first.classes)}
    pairs = Counter(zip(source_index, labels, strict=True))
    report.by_source = {name: {c: pairs[(s, k)] for k, c in enumerate(first.classes)} for s, name in enumerate(names)}
    report.patients = patient_groups(files, listed or None).summary
    images_path = dataset_dir(fingerprint, artifacts_root) / f"images-{input_size}.npy"
    with atomic.atomic_path(images_path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows), input_size, input_size))
        for start in range(0, len(rows), COPY_ROWS):
            for j, (s, i) in enumerate(rows[start : start + COPY_ROWS], start=start):
                out[j] = parts[s].images[i]
        out.flush()
        del out
    manifest = {
        "schema_version": DATASET_SCHEMA,
        "name": " + ".join(names),
        "source": " + ".join(part.source for part in parts),
        "fingerprint": fingerprint,
        "classes": list(first.classes),
        "files": files,
        "labels": labels,
        "sources": names,
        "source_index": source_index,
        "source_sizes": sizes,
        "parts": [part.fingerprint for part in parts],
        "report": asdict(report),
        **({"patients": listed} if listed else {}),
        **({"metadata": metadata} if metadata else {}),
    }
    atomic.write_json(dataset_dir(fingerprint, artifacts_root) / "manifest.json", manifest)


def study_dataset(study: Study, artifacts_root: Path | None = None, *, data: list[str | Path] | None = None) -> Dataset:
    """The study's images: its decoded cache on this machine, or ``data`` (its dataset folders, in the study's
    order) imported and checked to be the same; the message names the dataset a study needs."""
    fingerprint, size, name = study.dataset.fingerprint, study.input_size, study.dataset.name
    if not data:
        try:
            return load_dataset(fingerprint, input_size=size, artifacts_root=artifacts_root)
        except DatasetError:
            raise DatasetError(
                f"the images of study {study.study_id} (dataset {name}, fingerprint {fingerprint}) are not on "
                "this machine; pass its dataset folder(s) or .zip (--data, in the study's order) to import them"
            ) from None
    dataset = import_sources(list(data), input_size=size, artifacts_root=artifacts_root)
    if dataset.fingerprint != fingerprint:
        raise DatasetError(
            f"{' + '.join(map(str, data))} is dataset {dataset.fingerprint}, not {fingerprint} ({name}) of study "
            f"{study.study_id}"
        )
    return dataset
