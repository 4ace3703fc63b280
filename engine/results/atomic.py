"""Atomic writes: a temp file in the same folder, flushed, then ``os.replace``.

A reader therefore sees either the old file or the whole new one, never half of one, whatever
moment the writer is killed at.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


@contextlib.contextmanager
def atomic_path(path: Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Open a binary file that appears at ``path`` only once it is closed without error."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        yield fh


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, json_text(obj).encode())


def json_text(obj: Any) -> str:
    """The text ``write_json`` writes: keys sorted, no NaN, indented (see ``_indented``)."""
    return _indented(json.loads(json.dumps(obj, sort_keys=True, allow_nan=False))) + "\n"


def _indented(value: Any, depth: int = 0) -> str:
    """JSON indented by 2, except that a list of numbers (or of lists of numbers) stays on one line: one line
    per number, the probabilities and image statistics of the committed results took 30 % of their bytes in
    indentation."""
    pad = "  " * (depth + 1)
    if isinstance(value, dict) and value:
        body = ",\n".join(f"{pad}{json.dumps(key)}: {_indented(item, depth + 1)}" for key, item in value.items())
        return "{\n" + body + "\n" + "  " * depth + "}"
    if isinstance(value, list) and value and not _numbers(value):
        body = ",\n".join(pad + _indented(item, depth + 1) for item in value)
        return "[\n" + body + "\n" + "  " * depth + "]"
    return json.dumps(value)


def _numbers(items: list[Any]) -> bool:
    def scalar(item: Any) -> bool:
        return item is None or isinstance(item, int | float)

    return all(scalar(item) or (isinstance(item, list) and all(scalar(x) for x in item)) for item in items)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_writer(path) as fh:
        np.save(fh, array, allow_pickle=False)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read a MiB at a time: the identity of a model file in cache keys and sidecars."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
