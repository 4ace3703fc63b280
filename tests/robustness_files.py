"""Robustness files read back by hand, to check what the engine pooled from them against the files' own counts."""

from __future__ import annotations

import json
from pathlib import Path


def robustness_json(root: Path, study_id: str, backbone: str) -> list[dict]:
    folder = root / "studies" / study_id / "robustness" / backbone
    return [json.loads(p.read_text()) for p in sorted(folder.glob("fold-*.json"))]


def pooled(results: list[dict], shift: str, strength: str | None, *, cls: int | None = None) -> float:
    """Correct / images of one condition, added up over the folds' files (one class's recall when ``cls``)."""
    conditions = [c for r in results for c in r["conditions"] if (c["shift"], c["strength"]) == (shift, strength)]
    if cls is None:
        return sum(sum(c["correct"]) for c in conditions) / sum(sum(c["n"]) for c in conditions)
    return sum(c["correct"][cls] for c in conditions) / sum(c["n"][cls] for c in conditions)
