"""Import a chest X-ray dataset (a folder of class folders, or its ``.zip``) into a cached array.

Each file is decoded once, resized to the study's input size and stored as uint8 in
``<artifacts>/datasets/<fingerprint>/images-<size>.npy``; the fingerprint hashes every file's
class, path and content, so a second import of the same data is a memory map away and a changed
file gives a new fingerprint. A bad file is skipped with its reason; it never stops the import.
"""

from __future__ import annotations

import hashlib
import stat
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from joblib import Parallel, delayed

from engine import atomic, settings
from engine.classes import canonical_class, sort_classes
from engine.images import IMAGE_SUFFIXES, MAX_FILE_BYTES, ImageError, decode_xray

DATASET_SCHEMA = 1
IGNORED_FOLDERS = {"masks", "__macosx"}
TRANSPARENT_FOLDERS = {"images"}
MAX_ZIP_TOTAL_BYTES = 16 * 2**30
MAX_ZIP_RATIO = 200


class DatasetError(ValueError):
    """A dataset that cannot be used as a whole (no classes, one class, unsafe archive...)."""


@dataclass
class ImportReport:
    """What an import found: counts per class, exact duplicates dropped, files skipped and why."""

    counts: dict[str, int] = field(default_factory=dict)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)
    class_folders: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Dataset:
    """An imported dataset: images as an (N, size, size) uint8 array and integer labels."""

    name: str
    source: str
    fingerprint: str
    classes: tuple[str, ...]
    files: list[str]
    labels: np.ndarray
    images: np.ndarray
    input_size: int
    report: ImportReport

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class _Entry:
    relpath: str
    folder: str
    read: Callable[[], bytes]


def _class_entries(paths: list[tuple[str, Callable[[], bytes]]], report: ImportReport) -> list[_Entry]:
    """Find the class folder of every image path: the level right below their common prefix."""
    kept: list[tuple[str, tuple[str, ...], Callable[[], bytes]]] = []
    for rel, read in paths:
        parts = PurePosixPath(rel).parts
        if any(p.lower() in IGNORED_FOLDERS or p.startswith(".") for p in parts):
            continue
        if not rel.lower().endswith(IMAGE_SUFFIXES):
            if not rel.lower().endswith((".xlsx", ".csv", ".txt", ".md", ".json", ".metadata")):
                report.skipped.append({"file": rel, "reason": "not a .png/.jpg/.jpeg file"})
            continue
        dirs = tuple(p for p in parts[:-1] if p.lower() not in TRANSPARENT_FOLDERS)
        kept.append((rel, dirs, read))
    if not kept:
        raise DatasetError("no PNG or JPEG images found; expected one folder per class, e.g. COVID-19/, Normal/")
    prefix = list(kept[0][1])
    for _, dirs, _ in kept[1:]:
        n = 0
        while n < min(len(prefix), len(dirs)) and prefix[n] == dirs[n]:
            n += 1
        prefix = prefix[:n]
    depth = len(prefix)
    entries = []
    for rel, dirs, read in kept:
        if len(dirs) <= depth:
            report.skipped.append({"file": rel, "reason": "not inside a class folder"})
            continue
        entries.append(_Entry(rel, dirs[depth], read))
    return entries


def _folder_paths(root: Path, report: ImportReport) -> list[tuple[str, Callable[[], bytes]]]:
    paths = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            report.skipped.append({"file": rel, "reason": "symbolic link not followed"})
        elif path.is_file():
            paths.append((rel, path.read_bytes))
        elif path.is_dir() and not any(path.iterdir()):
            report.notes.append({"file": rel, "note": "empty folder ignored"})
    return paths


def _zip_paths(archive: Path, report: ImportReport) -> list[tuple[str, Callable[[], bytes]]]:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{archive.name}: not a readable zip archive ({exc})") from None
    infos = zf.infolist()
    total = sum(i.file_size for i in infos)
    if total > MAX_ZIP_TOTAL_BYTES:
        raise DatasetError(
            f"{archive.name}: unpacks to {total / 2**30:.1f} GiB, over the {MAX_ZIP_TOTAL_BYTES // 2**30} GiB limit"
        )
    paths = []

    def reader(info: zipfile.ZipInfo) -> Callable[[], bytes]:
        return lambda: zf.read(info)

    for info in sorted(infos, key=lambda i: i.filename):
        name = info.filename
        pure = PurePosixPath(name.replace("\\", "/"))
        if info.is_dir():
            continue
        if pure.is_absolute() or ".." in pure.parts or (len(name) > 1 and name[1] == ":"):
            report.skipped.append({"file": name, "reason": "unsafe path in archive (absolute or '..')"})
        elif stat.S_ISLNK(info.external_attr >> 16):
            report.skipped.append({"file": name, "reason": "symbolic link in archive not followed"})
        elif info.file_size > MAX_FILE_BYTES:
            report.skipped.append({"file": name, "reason": f"unpacks to {info.file_size:,} bytes, over the limit"})
        elif info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO and info.file_size > 2**20:
            report.skipped.append(
                {"file": name, "reason": f"compression ratio {info.file_size // info.compress_size}:1 (zip bomb?)"}
            )
        else:
            paths.append((pure.as_posix(), reader(info)))
    return paths


def _read(entry: _Entry) -> tuple[bytes | None, str | None]:
    try:
        return entry.read(), None
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError) as exc:
        return None, f"could not be read ({exc})"


def _hash_entry(entry: _Entry) -> tuple[str | None, str | None]:
    data, error = _read(entry)
    return (hashlib.sha1(data).hexdigest() if data is not None else None), error


def _decode(entry: _Entry, size: int) -> tuple[np.ndarray | None, str | None, tuple[str, ...]]:
    data, error = _read(entry)
    if data is None:
        return None, error, ()
    try:
        decoded = decode_xray(data, size=size, name=entry.relpath)
    except ImageError as exc:
        return None, str(exc).split(": ", 1)[-1], ()
    return decoded.pixels, None, decoded.notes


def _fingerprint(records: list[tuple[str, str, str]]) -> str:
    digest = hashlib.sha256(f"dataset-schema-{DATASET_SCHEMA}".encode())
    for label, rel, sha in records:
        digest.update(f"{label}\0{rel}\0{sha}\n".encode())
    return digest.hexdigest()[:16]


def dataset_dir(fingerprint: str, artifacts: Path | None = None) -> Path:
    return (artifacts or settings.artifacts_dir()) / "datasets" / fingerprint


def import_dataset(
    source: str | Path,
    *,
    input_size: int = 224,
    artifacts: Path | None = None,
    name: str | None = None,
    n_jobs: int = -1,
) -> Dataset:
    """Import ``source`` (a folder of class folders, or a ``.zip`` of one) at ``input_size``.

    Returns the cached dataset when the same files were imported at this size before.
    """
    source = Path(source)
    if input_size < 8:
        raise ValueError(f"input_size must be at least 8 pixels, got input_size={input_size!r}")
    report = ImportReport()
    if source.is_dir():
        paths = _folder_paths(source, report)
    elif source.is_file() and source.suffix.lower() == ".zip":
        paths = _zip_paths(source, report)
    elif source.exists():
        raise DatasetError(f"{source}: expected a folder of class folders or a .zip archive")
    else:
        raise DatasetError(f"{source}: no such folder or file")
    entries = _class_entries(paths, report)

    hashed = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(_hash_entry)(e) for e in entries)
    shas = [sha for sha, _ in hashed]
    for entry, (_, error) in zip(entries, hashed):
        if error:
            report.skipped.append({"file": entry.relpath, "reason": error})

    seen: dict[str, str] = {}
    chosen: list[int] = []
    for i, (entry, sha) in enumerate(zip(entries, shas)):
        if sha is None:
            continue
        if sha in seen:
            report.duplicates.append({"file": entry.relpath, "same_bytes_as": seen[sha]})
            continue
        seen[sha] = entry.relpath
        chosen.append(i)
    records = [(canonical_class(entries[i].folder), entries[i].relpath, shas[i]) for i in chosen]
    fingerprint = _fingerprint(records)
    folder = dataset_dir(fingerprint, artifacts)
    manifest_path = folder / "manifest.json"
    images_path = folder / f"images-{input_size}.npy"
    if manifest_path.exists() and images_path.exists():
        return load_dataset(fingerprint, input_size=input_size, artifacts=artifacts)

    decoded = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(_decode)(entries[i], input_size) for i in chosen
    )
    images, files, labels_text = [], [], []
    for i, (pixels, error, notes) in zip(chosen, decoded):
        entry = entries[i]
        if error:
            report.skipped.append({"file": entry.relpath, "reason": error})
            continue
        report.notes.extend({"file": entry.relpath, "note": n} for n in notes)
        images.append(pixels)
        files.append(entry.relpath)
        labels_text.append(canonical_class(entry.folder))
        report.class_folders.setdefault(canonical_class(entry.folder), [])
        if entry.folder not in report.class_folders[canonical_class(entry.folder)]:
            report.class_folders[canonical_class(entry.folder)].append(entry.folder)
    classes = sort_classes(set(labels_text))
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise DatasetError(f"{source.name}: at least 2 class folders with readable images are needed, found {found}")
    report.counts = {c: labels_text.count(c) for c in classes}
    labels = np.array([classes.index(t) for t in labels_text], dtype=np.int64)
    manifest = {
        "schema_version": DATASET_SCHEMA,
        "name": name or source.stem,
        "source": str(source),
        "fingerprint": fingerprint,
        "classes": list(classes),
        "files": files,
        "labels": labels.tolist(),
        "report": asdict(report),
    }
    atomic.save_npy(images_path, np.stack(images))
    atomic.write_json(manifest_path, manifest)
    return load_dataset(fingerprint, input_size=input_size, artifacts=artifacts)


def read_manifest(fingerprint: str, artifacts: Path | None = None) -> dict:
    path = dataset_dir(fingerprint, artifacts) / "manifest.json"
    if not path.exists():
        raise DatasetError(f"dataset {fingerprint} has not been imported into {path.parent.parent}")
    return atomic.read_json(path)


def load_dataset(fingerprint: str, *, input_size: int, artifacts: Path | None = None) -> Dataset:
    """Load an imported dataset; images are memory-mapped, so large sets do not fill memory."""
    manifest = read_manifest(fingerprint, artifacts)
    images_path = dataset_dir(fingerprint, artifacts) / f"images-{input_size}.npy"
    if not images_path.exists():
        raise DatasetError(
            f"dataset {manifest['name']} ({fingerprint}) has no cached images at {input_size}x{input_size}; "
            f"import it again from {manifest['source']}"
        )
    report = ImportReport(**manifest["report"])
    return Dataset(
        name=manifest["name"],
        source=manifest["source"],
        fingerprint=fingerprint,
        classes=tuple(manifest["classes"]),
        files=list(manifest["files"]),
        labels=np.asarray(manifest["labels"], dtype=np.int64),
        images=np.load(images_path, mmap_mode="r"),
        input_size=input_size,
        report=report,
    )
