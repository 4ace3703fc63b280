"""Canonical class names, so the folder names of different dataset releases mean the same class."""

from __future__ import annotations

import re

COVID = "COVID-19"
NORMAL = "Normal"
VIRAL = "Viral Pneumonia"
PAPER_CLASSES = (COVID, NORMAL, VIRAL)

_ALIASES = {
    "covid": COVID,
    "covid 19": COVID,
    "covid19": COVID,
    "sars cov 2": COVID,
    "normal": NORMAL,
    "no finding": NORMAL,
    "healthy": NORMAL,
    "viral pneumonia": VIRAL,
    "pneumonia viral": VIRAL,
    "viral": VIRAL,
    "lung opacity": "Lung_Opacity",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def canonical_class(folder_name: str) -> str:
    """Map a folder name variant (``COVID``, ``NORMAL``, ``VIRAL_PNEUMONIA``...) to its class.

    Names that are not known variants keep their own spelling, so other class sets work too.
    """
    return _ALIASES.get(_key(folder_name), folder_name.strip())


def sort_classes(names: set[str] | list[str]) -> tuple[str, ...]:
    """The paper's classes first in the paper's order, then any others alphabetically."""
    known = [c for c in PAPER_CLASSES if c in names]
    return tuple(known + sorted(set(names) - set(known)))
