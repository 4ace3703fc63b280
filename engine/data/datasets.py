"""Import a chest X-ray dataset (a folder of class folders, or its ``.zip``) into a cached array.

Each file is decoded once, resized to the study's input size and stored as uint8 in
``<artifacts>/datasets/<fingerprint>/images-<size>.npy``; the fingerprint hashes every file's
class, path and content, so a second import of the same data is a memory map away and a changed
file gives a new fingerprint. A bad file is skipped with its reason; it never stops the import.

Inputs are untrusted: a ``.zip`` is read in memory, entry by entry, and never extracted, so no
entry name (``../x``, ``/etc/x``, a symlink) can make a write outside the artifacts folder;
archives whose declared sizes or compression ratio are far beyond any image set are refused.
Decoded images go straight into a memory-mapped ``.npy`` beside the target (then an atomic
rename), so 20,000 images never sit in memory at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import lzma
import os
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs

from engine import settings
from engine.data import overlap
from engine.data.classes import canonical_class, sort_classes
from engine.data.file_tables import METADATA_FILE, read_file_table
from engine.data.files import DatasetError, SourceFile, display_name, path_key, source_files
from engine.data.images import IMAGE_SUFFIXES, ImageError, decode_xray
from engine.data.patients import PATIENTS_FILE, PatientGroups, patient_groups, read_patients_csv
from engine.results import atomic

DATASET_SCHEMA = 1
IGNORED_FOLDERS = {"masks", "__macosx"}
TRANSPARENT_FOLDERS = {"images"}
SIDE_FILE_SUFFIXES = (".xlsx", ".csv", ".txt", ".md", ".json", ".metadata")
COPY_ROWS = 512
DECODE_WINDOW = 128
"""Images decoded ahead of the memory map at most, so that while one file decodes slowly (a huge PNG) the
files after it cannot all wait in memory: 128 rows are 6 MB at 224 px."""
READ_ERRORS = (
    OSError,
    EOFError,
    RuntimeError,
    ValueError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
)
CLASS_EXAMPLE = "one folder per class, e.g. COVID-19/, Normal/, Viral Pneumonia/"


@dataclass
class ImportReport:
    """What an import found: counts per class, exact duplicates dropped, files skipped and why."""

    counts: dict[str, int] = field(default_factory=dict)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)
    class_folders: dict[str, list[str]] = field(default_factory=dict)
    patients: dict = field(default_factory=dict)
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Dataset:
    """An imported dataset: images as an (N, size, size) uint8 array, integer labels, and per image its
    patient (``patients``) and the dataset folder it came from (``sources[source_index[i]]``)."""

    name: str
    source: str
    fingerprint: str
    classes: tuple[str, ...]
    files: list[str]
    labels: np.ndarray
    images: np.ndarray
    input_size: int
    report: ImportReport
    patients: PatientGroups
    sources: tuple[str, ...]
    source_index: np.ndarray

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class _Entry:
    relpath: str
    folder: str
    read: Callable[[], bytes]


def _class_entries(
    files: list[SourceFile], report: ImportReport, where: str, *, single_class: bool = False
) -> list[_Entry]:
    """Find the class folder of every image path: the level right below their common prefix.

    Paths are returned relative to that common prefix, so a folder and its ``.zip`` (which
    usually adds a top folder) give the same paths and the same fingerprint. With
    ``single_class`` (an external set may hold one class), images that all sit in one folder take
    that folder's name, and images at the top level take the source's own name.
    """
    kept: list[tuple[tuple[str, ...], tuple[str, ...], SourceFile]] = []
    for file in files:
        parts = PurePosixPath(file.relpath).parts
        if any(p.lower() in IGNORED_FOLDERS or p.startswith(".") for p in parts):
            continue
        if not file.relpath.lower().endswith(IMAGE_SUFFIXES):
            if not file.relpath.lower().endswith(SIDE_FILE_SUFFIXES):
                report.skipped.append({"file": file.relpath, "reason": "not a .png/.jpg/.jpeg/.dcm/.dicom file"})
            continue
        dirs = tuple(p for p in parts[:-1] if p.lower() not in TRANSPARENT_FOLDERS)
        kept.append((parts, dirs, file))
    if not kept:
        raise DatasetError(f"{where}: no PNG, JPEG or DICOM images found; expected {CLASS_EXAMPLE}")
    prefix = list(kept[0][1])
    for _, dirs, _ in kept[1:]:
        n = 0
        while n < min(len(prefix), len(dirs)) and prefix[n] == dirs[n]:
            n += 1
        prefix = prefix[:n]
    depth = len(prefix)
    if single_class and all(len(dirs) <= depth for _, dirs, _ in kept):
        if depth == 0:
            return [_Entry(file.relpath, where, file.read) for _, _, file in kept]
        depth, prefix = depth - 1, prefix[:-1]
    entries = []
    for parts, dirs, file in kept:
        if len(dirs) <= depth:
            report.skipped.append({"file": file.relpath, "reason": "not inside a class folder"})
            continue
        relpath = "/".join(parts[depth:]) if list(parts[:depth]) == prefix else file.relpath
        entries.append(_Entry(relpath, dirs[depth], file.read))
    if not entries:
        found_in = "/".join(prefix) or "the top level"
        raise DatasetError(
            f"{where}: images are not in class folders (all are in {found_in}); expected {CLASS_EXAMPLE}"
        )
    return entries


def _read(entry: _Entry) -> tuple[bytes | None, str | None]:
    try:
        return entry.read(), None
    except READ_ERRORS as exc:
        return None, f"could not be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


def _hash_entry(entry: _Entry) -> tuple[str | None, str | None]:
    data, error = _read(entry)
    return (hashlib.sha1(data).hexdigest() if data is not None else None), error


def _decode(entry: _Entry, size: int) -> tuple[np.ndarray | None, str | None, tuple[str, ...], tuple[int, int]]:
    """Pixels at ``size``, or the reason they could not be read; notes; the file's own (width, height)."""
    data, error = _read(entry)
    if data is None:
        return None, error, (), (0, 0)
    try:
        decoded = decode_xray(data, size=size, name=entry.relpath)
    except ImageError as exc:
        return None, str(exc).removeprefix(f"{entry.relpath}: "), (), (0, 0)
    return decoded.pixels, None, (*decoded.notes, *decoded.warnings), decoded.source_size


def _side_table(files: list[SourceFile], name: str) -> bytes | None:
    """The bytes of the shallowest file called ``name`` in the source: the one beside its class folders."""
    found = [f for f in files if PurePosixPath(f.relpath).name.lower() == name]
    chosen = min(found, key=lambda f: len(path_key(f.relpath)), default=None)
    if chosen is None:
        return None
    try:
        return chosen.read()
    except READ_ERRORS as exc:
        raise DatasetError(f"{chosen.relpath}: could not be read ({exc})") from None


def _listed_patients(files: list[SourceFile], entries: list[_Entry]) -> dict[str, str] | None:
    """``{image path: patient}`` from the source's ``patients.csv``, checked against its images; None without one."""
    data = _side_table(files, PATIENTS_FILE)
    return None if data is None else read_patients_csv(data, [e.relpath for e in entries])


def _metadata(files: list[SourceFile], entries: list[_Entry]) -> dict[str, dict[str, str]] | None:
    """``{image path: {column: value}}`` from the source's ``metadata.csv`` (age band, sex, view...); None without."""
    data = _side_table(files, METADATA_FILE)
    return None if data is None else read_file_table(data, [e.relpath for e in entries], name=METADATA_FILE)


def _fingerprint(records: list[tuple[str, str, str]]) -> str:
    digest = hashlib.sha256(f"dataset-schema-{DATASET_SCHEMA}".encode())
    for label, rel, sha in records:
        digest.update(f"{label}\0{rel}\0{sha}\n".encode())
    return digest.hexdigest()[:16]


def dataset_dir(fingerprint: str, artifacts_root: Path | None = None) -> Path:
    return (artifacts_root or settings.artifacts_dir()) / "datasets" / fingerprint


def _need_classes(entries: list[_Entry], where: str, minimum: int) -> None:
    classes = sort_classes({canonical_class(e.folder) for e in entries})
    if len(classes) < minimum:
        found = ", ".join(classes) or "none"
        folders = "1 class folder" if minimum == 1 else f"{minimum} class folders"
        raise DatasetError(f"{where}: at least {folders} with readable images are needed, found {found}")


def _shrink_npy(path: Path, rows: int) -> None:
    """Keep the first ``rows`` rows of the ``.npy`` at ``path``, copying chunk by chunk."""
    full = np.load(path, mmap_mode="r")
    compact_path = path.with_name(f"{path.name}.compact.npy")
    try:
        compact = np.lib.format.open_memmap(compact_path, mode="w+", dtype=full.dtype, shape=(rows, *full.shape[1:]))
        for start in range(0, rows, COPY_ROWS):
            stop = min(start + COPY_ROWS, rows)
            compact[start:stop] = full[start:stop]
        compact.flush()
        del compact, full
        os.replace(compact_path, path)
    finally:
        compact_path.unlink(missing_ok=True)


def _decoded(entries: list[_Entry], size: int, n_jobs: int) -> Iterator[tuple]:
    """``_decode`` of each entry, in order, on ``n_jobs`` threads, never more than :data:`DECODE_WINDOW` ahead
    of the caller: the next file is handed out as a result is taken."""
    todo = iter(entries)
    pool = ThreadPoolExecutor(effective_n_jobs(n_jobs))
    try:
        pending = deque(pool.submit(_decode, entry, size) for entry in itertools.islice(todo, DECODE_WINDOW))
        while pending:
            result = pending.popleft().result()
            if (entry := next(todo, None)) is not None:
                pending.append(pool.submit(_decode, entry, size))
            yield result
    finally:
        pool.shutdown(cancel_futures=True)


def _decode_all(
    entries: list[_Entry], tmp: Path, *, size: int, n_jobs: int, report: ImportReport, where: str, min_classes: int
) -> tuple[list[_Entry], list[tuple[int, int]]]:
    """Decode ``entries`` into the ``.npy`` at ``tmp`` in order; returns those that were kept, with each one's
    own size (a class whose files all share one size can be told apart by it)."""
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(entries), size, size))
    kept: list[_Entry] = []
    sizes: list[tuple[int, int]] = []
    for entry, (pixels, error, notes, source_size) in zip(entries, _decoded(entries, size, n_jobs), strict=True):
        if error:
            report.skipped.append({"file": entry.relpath, "reason": error})
            continue
        report.notes.extend({"file": entry.relpath, "note": n} for n in notes)
        out[len(kept)] = pixels
        kept.append(entry)
        sizes.append(tuple(int(v) for v in source_size))
    out.flush()
    del out
    _need_classes(kept, where, min_classes)
    if len(kept) < len(entries):
        _shrink_npy(tmp, len(kept))
    return kept, sizes


def _unique_entries(
    entries: list[_Entry], report: ImportReport, n_jobs: int
) -> tuple[list[_Entry], list[tuple[str, str, str]]]:
    """Entries with byte-identical twins dropped (and listed), with the (class, path, sha1) records of the rest."""
    hashed = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(_hash_entry)(e) for e in entries)
    seen: dict[str, str] = {}
    chosen: list[_Entry] = []
    records: list[tuple[str, str, str]] = []
    for entry, (sha, error) in zip(entries, hashed, strict=True):
        if sha is None:
            report.skipped.append({"file": entry.relpath, "reason": error or "could not be read"})
        elif sha in seen:
            report.duplicates.append({"file": entry.relpath, "same_bytes_as": seen[sha]})
        else:
            seen[sha] = entry.relpath
            chosen.append(entry)
            records.append((canonical_class(entry.folder), entry.relpath, sha))
    return chosen, records


def _write_manifest(
    fingerprint: str,
    kept: list[_Entry],
    sizes: list[tuple[int, int]],
    report: ImportReport,
    *,
    name: str,
    source: str,
    artifacts_root: Path | None,
    listed: dict[str, str] | None,
    metadata: dict[str, dict[str, str]] | None,
) -> None:
    labels_text = [canonical_class(e.folder) for e in kept]
    for entry, label in zip(kept, labels_text, strict=True):
        folders = report.class_folders.setdefault(label, [])
        if entry.folder not in folders:
            folders.append(entry.folder)
    classes = sort_classes(set(labels_text))
    report.counts = {c: labels_text.count(c) for c in classes}
    report.by_source = {name: report.counts}
    files = [e.relpath for e in kept]
    listed = {f: listed[f] for f in files if f in listed} if listed else None
    report.patients = patient_groups(files, listed).summary
    manifest = {
        "schema_version": DATASET_SCHEMA,
        "name": name,
        "source": source,
        "fingerprint": fingerprint,
        "classes": list(classes),
        "files": files,
        "labels": [classes.index(t) for t in labels_text],
        "source_sizes": [list(size) for size in sizes],
        "report": asdict(report),
        **({"patients": listed} if listed else {}),
        **({"metadata": {f: metadata[f] for f in files if f in metadata}} if metadata else {}),
    }
    atomic.write_json(dataset_dir(fingerprint, artifacts_root) / "manifest.json", manifest)


def import_dataset(
    source: str | Path,
    *,
    input_size: int = 224,
    artifacts_root: Path | None = None,
    name: str | None = None,
    n_jobs: int = -1,
    min_classes: int = 2,
) -> Dataset:
    """Import ``source`` (a folder of class folders, or a ``.zip`` of one) at ``input_size``.

    Returns the cached dataset when the same files were imported at this size before. A study
    needs two classes; ``min_classes=1`` admits a one-class set (an external check of one class).
    """
    source = Path(source)
    if input_size < 8:
        raise ValueError(f"input_size must be at least 8 pixels, got input_size={input_size!r}")
    if min_classes not in (1, 2):
        raise ValueError(f"min_classes must be 1 or 2, got min_classes={min_classes!r}")
    where = display_name(source.name) or display_name(str(source))
    report = ImportReport()
    with contextlib.ExitStack() as stack:
        files = source_files(source, where, report, stack)
        entries = _class_entries(files, report, where, single_class=min_classes == 1)
        _need_classes(entries, where, min_classes)
        chosen, records = _unique_entries(entries, report, n_jobs)
        _need_classes(chosen, where, min_classes)
        listed = _listed_patients(files, entries)
        metadata = _metadata(files, entries)
        for table, rows in ((PATIENTS_FILE, listed), (METADATA_FILE, metadata)):
            if rows is not None:
                records.append((table, "", hashlib.sha1(repr(sorted(rows.items())).encode()).hexdigest()))
        fingerprint = _fingerprint(records)
        folder = dataset_dir(fingerprint, artifacts_root)
        images_path = folder / f"images-{input_size}.npy"
        if (folder / "manifest.json").exists() and images_path.exists():
            return load_dataset(fingerprint, input_size=input_size, artifacts_root=artifacts_root)
        with atomic.atomic_path(images_path, suffix=".npy") as tmp:
            kept, sizes = _decode_all(
                chosen, tmp, size=input_size, n_jobs=n_jobs, report=report, where=where, min_classes=min_classes
            )
    _write_manifest(
        fingerprint,
        kept,
        sizes,
        report,
        name=name or display_name(source.stem),
        source=where,
        artifacts_root=artifacts_root,
        listed=listed,
        metadata=metadata,
    )
    dataset = load_dataset(fingerprint, input_size=input_size, artifacts_root=artifacts_root)
    overlap.dataset_hashes(dataset, artifacts_root)
    return dataset


def read_manifest(fingerprint: str, artifacts_root: Path | None = None) -> dict:
    path = dataset_dir(fingerprint, artifacts_root) / "manifest.json"
    if not path.exists():
        raise DatasetError(f"dataset {fingerprint} has not been imported into {path.parent.parent}")
    return atomic.read_json(path)


def load_dataset(fingerprint: str, *, input_size: int, artifacts_root: Path | None = None) -> Dataset:
    """Load an imported dataset; images are memory-mapped, so large sets do not fill memory."""
    manifest = read_manifest(fingerprint, artifacts_root)
    images_path = dataset_dir(fingerprint, artifacts_root) / f"images-{input_size}.npy"
    if not images_path.exists():
        raise DatasetError(
            f"dataset {manifest['name']} ({fingerprint}) has no cached images at {input_size}x{input_size}; "
            f"import it again (it came from a folder or file named {manifest['source']})"
        )
    files = list(manifest["files"])
    groups = patient_groups(files, manifest.get("patients"))
    report = ImportReport(**{**manifest["report"], "patients": groups.summary})
    report.by_source = report.by_source or {manifest["name"]: dict(report.counts)}
    sources = tuple(manifest.get("sources", [manifest["name"]]))
    return Dataset(
        name=manifest["name"],
        source=manifest["source"],
        fingerprint=fingerprint,
        classes=tuple(manifest["classes"]),
        files=files,
        labels=np.asarray(manifest["labels"], dtype=np.int64),
        images=np.load(images_path, mmap_mode="r"),
        input_size=input_size,
        report=report,
        patients=groups,
        sources=sources,
        source_index=np.asarray(manifest.get("source_index", [0] * len(files)), dtype=np.int64),
    )
