"""The files of a dataset source, a folder or a ``.zip``, listed without trusting it.

Inputs are untrusted: a ``.zip`` is read in memory, entry by entry, and never extracted, so no entry name
(``../x``, ``/etc/x``, a symlink) can make a write outside the artifacts folder; archives whose declared sizes
or compression ratio are far beyond any image set are refused, and a folder's symlinks are never followed.
What is left out is reported with its reason.
"""

from __future__ import annotations

import contextlib
import os
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from engine.data.images import IMAGE_SUFFIXES, MAX_FILE_BYTES

MAX_ZIP_ENTRIES = 500_000
MAX_ZIP_TOTAL_BYTES = 16 * 2**30
MAX_ZIP_RATIO = 200
RATIO_CHECK_MIN_BYTES = 2**20


class Report(Protocol):
    """Where a listing writes what it left out and why (``engine.data.datasets.ImportReport``)."""

    skipped: list[dict[str, str]]
    notes: list[dict[str, str]]


class DatasetError(ValueError):
    """A dataset that cannot be used as a whole (no classes, one class, unsafe archive...)."""


@dataclass(frozen=True)
class SourceFile:
    """One file of the source, named by a display-safe POSIX path, read only when needed."""

    relpath: str
    read: Callable[[], bytes]


def display_name(name: str) -> str:
    """``name`` with undecodable bytes (``surrogateescape``) written as ``\\xNN``, so any writer can encode it."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def path_key(relpath: str) -> tuple[str, ...]:
    return tuple(relpath.split("/"))


def _folder_files(root: Path, report: Report) -> list[SourceFile]:
    """Regular files under ``root``; symlinks are reported and never followed, odd names kept."""
    files = []

    def rel(path: Path) -> str:
        return display_name(path.relative_to(root).as_posix())

    def unlistable(exc: OSError) -> None:
        report.skipped.append(
            {"file": rel(Path(exc.filename)), "reason": f"folder could not be listed ({exc.strerror})"}
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
        here = Path(dirpath)
        for name in [d for d in dirnames if (here / d).is_symlink()]:
            report.skipped.append({"file": rel(here / name), "reason": "symbolic link not followed"})
            dirnames.remove(name)
        if here != root and not dirnames and not filenames:
            report.notes.append({"file": rel(here), "note": "empty folder ignored"})
        for name in filenames:
            path = here / name
            try:
                info = path.lstat()
            except OSError as exc:
                report.skipped.append({"file": rel(path), "reason": f"could not be read ({exc.strerror})"})
                continue
            if stat.S_ISLNK(info.st_mode):
                report.skipped.append({"file": rel(path), "reason": "symbolic link not followed"})
            elif not stat.S_ISREG(info.st_mode):
                report.skipped.append({"file": rel(path), "reason": "not a regular file"})
            elif info.st_size > MAX_FILE_BYTES and rel(path).lower().endswith(IMAGE_SUFFIXES):
                report.skipped.append({"file": rel(path), "reason": f"{info.st_size:,} bytes, over the size limit"})
            else:
                files.append(SourceFile(rel(path), path.read_bytes))
    return sorted(files, key=lambda f: path_key(f.relpath))


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def _unsafe_member(name: str) -> bool:
    pure = PurePosixPath(name.replace("\\", "/"))
    return pure.is_absolute() or ".." in pure.parts or (len(name) > 1 and name[1] == ":")


def _zip_files(zf: zipfile.ZipFile, where: str, report: Report) -> list[SourceFile]:
    """The archive's members, checked from its directory before a byte is decompressed."""
    infos = zf.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise DatasetError(f"{where}: {len(infos):,} entries, over the limit of {MAX_ZIP_ENTRIES:,}")
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos)
    if total > MAX_ZIP_TOTAL_BYTES:
        raise DatasetError(f"{where}: unpacks to {_gib(total)}, over the {_gib(MAX_ZIP_TOTAL_BYTES)} limit; refused")
    if total > 64 * RATIO_CHECK_MIN_BYTES and total > MAX_ZIP_RATIO * max(1, packed):
        raise DatasetError(f"{where}: compression ratio {total // max(1, packed):,}:1 (a zip bomb?); refused")

    def reader(info: zipfile.ZipInfo) -> Callable[[], bytes]:
        return lambda: zf.read(info)

    files: dict[str, SourceFile] = {}
    folders: set[str] = set()
    for info in infos:
        name = info.filename
        clean = PurePosixPath(name.replace("\\", "/")).as_posix()
        if _unsafe_member(name):
            report.skipped.append({"file": name, "reason": "unsafe path in archive (absolute or '..'); not read"})
        elif info.is_dir():
            folders.add(clean)
        elif stat.S_ISLNK(info.external_attr >> 16):
            report.skipped.append({"file": name, "reason": "symbolic link in archive not followed"})
        elif clean in files:
            report.skipped.append({"file": name, "reason": "second entry with the same name in the archive"})
        elif info.file_size > MAX_FILE_BYTES:
            report.skipped.append({"file": name, "reason": f"unpacks to {info.file_size:,} bytes, over the size limit"})
        elif info.file_size > RATIO_CHECK_MIN_BYTES and info.file_size > MAX_ZIP_RATIO * max(1, info.compress_size):
            ratio = info.file_size // max(1, info.compress_size)
            report.skipped.append({"file": name, "reason": f"compression ratio {ratio:,}:1 (zip bomb?)"})
        else:
            files[clean] = SourceFile(clean, reader(info))
    for folder in sorted(folders):
        if not any(path.startswith(f"{folder}/") for path in files):
            report.notes.append({"file": folder, "note": "empty folder ignored"})
    return sorted(files.values(), key=lambda f: path_key(f.relpath))


def source_files(source: Path, where: str, report: Report, stack: contextlib.ExitStack) -> list[SourceFile]:
    """The files of a folder, or of a ``.zip`` kept open on ``stack`` (read entry by entry, never extracted)."""
    if source.is_dir():
        return _folder_files(source, report)
    if source.is_file() and source.suffix.lower() == ".zip":
        try:
            zf = stack.enter_context(zipfile.ZipFile(source))
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"{where}: not a readable zip archive ({exc})") from None
        return _zip_files(zf, where, report)
    if source.exists():
        raise DatasetError(f"{where}: expected a folder of class folders or a .zip archive")
    raise DatasetError(f"{display_name(str(source))}: no such folder or file")
