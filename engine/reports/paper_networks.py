"""The paper's own networks and Table 1, as the report's tables and its "why the numbers differ" set ours beside
them: which registry entry is the very network of a paper row, and which row of the same family it sits beside."""

from __future__ import annotations

from engine.models.backbones import get_backbone
from engine.reports import explore

NOT_COMPARABLE = "not comparable"


def paper_table1() -> dict[str, dict[str, float]]:
    """The paper's Table 1 rows by ``keras.applications`` name, under this project's metric keys."""
    table = explore.paper_table1().set_index("keras_application")
    renamed = table.rename(columns={"f1_score": "f1"})[["accuracy", "precision", "recall", "f1", "loss"]]
    return renamed.to_dict(orient="index")


def variant(backbone: str) -> str:
    """The network a registry entry builds, e.g. ``MobileNet (alpha 0.25)``."""
    spec = get_backbone(backbone)
    options = ", ".join(f"{k} {v}" for k, v in sorted(spec.kwargs.items()))
    return f"{spec.constructor} ({options})" if options else spec.constructor


def same_network_as_paper(backbone: str) -> bool:
    """True when the registry entry is the very network of the paper's Table 1 row of that name."""
    return get_backbone(backbone).in_paper


def paper_row_of(backbone: str) -> str | None:
    """The paper's Table 1 row of the same architecture family (the constructor), if any."""
    constructor = get_backbone(backbone).constructor
    return constructor if constructor in paper_table1() else None
