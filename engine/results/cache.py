"""One way to keep a computed result on disk, in the style of joblib's ``Memory``.

A result is named by :func:`key`, a hash of its canonical inputs and its schema version, and kept by
:func:`remembered`: read back when a valid copy is there, else computed and written through a temporary file
renamed into place (``engine.results.atomic``), so a reader never sees half a file and a killed process leaves
no result behind. Study folders, cached features, model summaries, robustness and shortcut-audit results and
external evaluations are all kept this way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from engine.results import artifacts, atomic

log = logging.getLogger(__name__)
T = TypeVar("T")


def key(inputs: dict, *, schema: int | None = None, length: int = 12) -> str:
    """The name of a result: a hash of ``inputs`` (canonical JSON) and, when given, its ``schema`` version."""
    return artifacts.canonical_hash(inputs if schema is None else {"schema": schema, **inputs}, length=length)


def remembered(
    path: Path,
    compute: Callable[[], T],
    *,
    read: Callable[[Path], T] = atomic.read_json,
    write: Callable[[Path, T], Any] = atomic.write_json,
    valid: Callable[[T], bool] = lambda found: True,
    replaces: Callable[[], Iterable[Path]] = tuple,
    required: bool = True,
) -> T:
    """The result kept at ``path`` when a ``valid`` one is there; else ``compute()``, written to ``path`` after
    the files it ``replaces`` are removed. With ``required=False`` a result that cannot be written (a read-only
    file system, as on a hosted demo) is still returned, and the failure logged."""
    if path.is_file():
        found = read(path)
        if valid(found):
            return found
    result = compute()
    try:
        for stale in replaces():
            stale.unlink(missing_ok=True)
        write(path, result)
    except OSError as exc:
        if required:
            raise
        log.warning("could not keep %s: %s", path, exc)
    return result
