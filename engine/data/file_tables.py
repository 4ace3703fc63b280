"""A CSV beside the class folders that says something per image (``patients.csv``, ``metadata.csv``).

Its ``file`` column names an image as the dataset lists it (``Normal/IM-0115-0001.png``) or by its bare name
where that is unique. Every row is checked before any work, and a bad one is named by its row number.
"""

from __future__ import annotations

import csv
import io
from pathlib import PurePosixPath

METADATA_FILE = "metadata.csv"
MAX_GROUPS = 12
"""A metadata column with more distinct values than this (an age in years, an id) is not split on."""


class FileTableError(ValueError):
    """A per-image CSV that cannot be used: the message names the file and the row."""


def read_file_table(
    data: bytes,
    files: list[str],
    *,
    name: str,
    required: tuple[str, ...] = (),
    error: type[ValueError] = FileTableError,
) -> dict[str, dict[str, str]]:
    """``{file: {column: value}}`` of a per-image CSV, each ``file`` matched to one of ``files``.

    Refuses, naming the row: a row without a file, an empty value in a ``required`` column, a file that is not
    in the dataset, a file named twice, and a bare name that matches several files.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise error(f"{name}: not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if "file" not in header or not set(required) <= set(header):
        wanted = " and ".join(repr(c) for c in ("file", *required))
        raise error(f"{name}: needs the columns {wanted}, found {reader.fieldnames}")
    by_name: dict[str, list[str]] = {}
    for file in files:
        by_name.setdefault(PurePosixPath(file).name, []).append(file)
    known = set(files)
    found: dict[str, dict[str, str]] = {}
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        where = f"{name} row {line}"
        if not row["file"]:
            raise error(f"{where}: no file named")
        for column in required:
            if not row[column]:
                raise error(f"{where}: {row['file']!r} has an empty {column}")
        if row["file"] in known:
            file = row["file"]
        else:
            candidates = by_name.get(PurePosixPath(row["file"]).name, [])
            if not candidates:
                raise error(f"{where}: {row['file']!r} is not an image of this dataset")
            if len(candidates) > 1:
                raise error(
                    f"{where}: {row['file']!r} matches {len(candidates)} files ({', '.join(candidates[:3])}); "
                    "give its class folder too"
                )
            file = candidates[0]
        if file in found:
            raise error(f"{where}: {file!r} is named twice")
        found[file] = {k: v for k, v in row.items() if k != "file"}
    return found


def groupable(table: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """``{column: {file: value}}`` of the columns worth splitting results on: 2 to :data:`MAX_GROUPS` values."""
    columns: dict[str, dict[str, str]] = {}
    for file, row in table.items():
        for column, value in row.items():
            if value:
                columns.setdefault(column, {})[file] = value
    return {c: values for c, values in columns.items() if 2 <= len(set(values.values())) <= MAX_GROUPS}
