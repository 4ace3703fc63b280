"""The import rules of docs/architecture.md: each engine layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("settings", "results", "data", "models", "evaluation", "training", "jobs", "reports", "cli")
VIEW_FILES = [ROOT / "streamlit_app.py", *sorted((ROOT / "pages").glob("*.py"))]
FORBIDDEN_IN_VIEWS = ("tensorflow", "keras")


def imported_modules(path: Path) -> list[str]:
    """Absolute module names ``path`` imports (``from engine import x`` counts as ``engine.x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "engine":
                names += [f"engine.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return names


def layer_of(path: Path) -> str | None:
    parts = path.relative_to(ROOT / "engine").parts
    name = parts[0] if len(parts) > 1 else Path(parts[0]).stem
    return name if name in LAYERS else None


def violations(path: Path, own: str | None) -> list[str]:
    """What ``path``, a module of layer ``own``, imports against the rules."""
    found = []
    for module in imported_modules(path):
        top = module.split(".")[0]
        if top in ("streamlit", "pages"):
            found.append(f"{module} (the engine never imports views)")
        if top != "engine" or own is None or "." not in module:
            continue
        target = module.split(".")[1]
        if target in LAYERS and LAYERS.index(target) > LAYERS.index(own):
            found.append(f"{module} (layer {target!r} is above {own!r})")
    return found


ENGINE_FILES = sorted((ROOT / "engine").rglob("*.py"))


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_modules_import_only_lower_layers(path: Path) -> None:
    assert violations(path, layer_of(path)) == []


@pytest.mark.parametrize("path", VIEW_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_views_never_import_tensorflow_or_keras(path: Path) -> None:
    heavy = [m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN_IN_VIEWS]
    assert heavy == []


@pytest.mark.parametrize("path", VIEW_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_views_have_no_bare_string_after_their_docstring(path: Path) -> None:
    """Streamlit's "magic" writes a bare string of a page script onto the page: a comment says it instead."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    bare = [
        node.lineno
        for node in body[1:]
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    ]
    assert bare == [], f"{path.name}: bare strings at lines {bare}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("from engine.jobs.store import JobStore\nfrom engine import settings\nimport streamlit\n")
    assert violations(module, "data") == [
        "engine.jobs.store (layer 'jobs' is above 'data')",
        "streamlit (the engine never imports views)",
    ]


def test_every_layer_of_the_map_exists() -> None:
    packages = {p.name for p in (ROOT / "engine").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS) - {"settings"}
    assert (ROOT / "engine" / "settings.py").is_file()
