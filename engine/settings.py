"""Where things live, read from environment variables once, so every entry point agrees.

| variable | meaning | default |
| --- | --- | --- |
| ``CXR_ARTIFACTS`` | artifacts folder (results, caches, job store) | ``<project>/artifacts`` |
| ``CXR_WEIGHTS_DIR`` | folders (``:``-separated) of ImageNet weights, Keras file names | ``../shared/weights`` |
| ``CXR_SHARED`` | the shared folder with real data and weights (tests, benchmarks) | ``<project>/../shared`` |
| ``CXR_READ_ONLY`` | ``1`` for a hosted demo: nothing can be queued or trained | ``0`` |
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TRUE_WORDS = {"1", "true", "yes", "on"}


def artifacts_dir() -> Path:
    """The artifacts folder that the app, the CLI and the worker share by default."""
    return Path(os.environ.get("CXR_ARTIFACTS", PROJECT_ROOT / "artifacts")).expanduser()


def shared_dir() -> Path:
    """The folder with the real data and weights, beside the project in development and CI."""
    return Path(os.environ.get("CXR_SHARED", PROJECT_ROOT.parent / "shared")).expanduser()


def weights_dirs() -> list[Path]:
    """Local folders searched for ImageNet weight files, in order."""
    explicit = os.environ.get("CXR_WEIGHTS_DIR")
    if explicit:
        return [Path(p).expanduser() for p in explicit.split(os.pathsep) if p]
    return [shared_dir() / "weights"]


def keras_cache_dir() -> Path:
    """Where ``keras.utils.get_file`` keeps downloaded weights (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME", Path.home() / ".keras")
    return Path(home).expanduser() / "models"


def read_only() -> bool:
    """True on a hosted demo: the engine refuses to queue or train anything."""
    return os.environ.get("CXR_READ_ONLY", "0").strip().lower() in TRUE_WORDS


class ReadOnlyError(PermissionError):
    """Something that writes results (training, a job, a new evaluation) was asked for on a read-only demo."""


def refuse_if_read_only(what: str = "training and job submission are") -> None:
    """Raise :class:`ReadOnlyError` on a hosted demo; ``what`` names what is refused, for the message."""
    if read_only():
        raise ReadOnlyError(f"this is a read-only demo (CXR_READ_ONLY=1): {what} disabled")


def log_to_stderr(level: int = logging.INFO) -> None:
    """Send the ``engine`` loggers' records (model loads) to stderr, the server's log; once per process."""
    logger = logging.getLogger("engine")
    logger.setLevel(level)
    if not any(getattr(handler, "cxr", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        handler.cxr = True
        logger.addHandler(handler)
