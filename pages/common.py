"""What every page of the explorer shares: cached reads, the chosen view in the URL, empty states.

The chosen study, backbone and fold live in ``st.query_params`` so a copied link opens the same
view; they are also remembered in the session, because moving between pages through the
navigation menu starts a page with an empty URL query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from engine import settings
from engine.evaluation import predictions, summary
from engine.reports import explore
from engine.reports.served import read_choice
from engine.results import artifacts, atomic

if TYPE_CHECKING:
    from engine.models.catalog import ModelInfo
    from engine.models.inference import Classifier

NOT_A_DEVICE = (
    "Research tool, not a diagnostic device: results describe models trained on a public research "
    "dataset and must not be used to diagnose or treat anyone."
)
PAGES = {
    "home": "pages/home.py",
    "jobs": "pages/jobs.py",
    "comparison": "pages/comparison.py",
    "confusion": "pages/confusion.py",
    "curves": "pages/curves.py",
    "discrimination": "pages/discrimination.py",
    "calibration": "pages/calibration.py",
    "operating_point": "pages/operating_point.py",
    "failures": "pages/failures.py",
    "robustness": "pages/robustness.py",
    "audit": "pages/audit.py",
    "external": "pages/external.py",
    "classify": "pages/classify.py",
    "report": "pages/report.py",
}
# Each page's icon, in the menu and on the links to it.
ICONS = {
    "home": ":material/home:",
    "jobs": ":material/schedule:",
    "comparison": ":material/leaderboard:",
    "confusion": ":material/grid_on:",
    "curves": ":material/show_chart:",
    "discrimination": ":material/ssid_chart:",
    "calibration": ":material/tune:",
    "operating_point": ":material/target:",
    "failures": ":material/report:",
    "robustness": ":material/shield:",
    "audit": ":material/fact_check:",
    "external": ":material/travel_explore:",
    "classify": ":material/radiology:",
    "report": ":material/description:",
}
NO_STUDY_HELP = (
    "No study with finished runs in `{root}` yet. Launch a training job from the sidebar "
    "(or run `python -m engine study --data <folder> --arch MobileNet`), then follow it on the Jobs page."
)


ROUTED = "routed"
ZIP_SIGNATURE = b"PK\x03\x04"
MAX_ZIP_BYTES = 200 * 1024 * 1024


def mark_routed() -> None:
    """Called by the router (``streamlit_app.py``) on every run, before it runs the page."""
    st.session_state[ROUTED] = True


def require_router(page_file: str) -> None:
    """Send a page that runs without the router through it; every page calls it first, with ``__file__``.

    Streamlit keeps a legacy mode for apps with a ``pages/`` folder: until some session has run
    ``st.navigation``, a deep link (``/classify``) on a freshly started server runs the page file
    alone, without the sidebar, the read-only banner or the server's logging. Calling
    ``st.navigation`` once turns that mode off for the whole server; switching to the same page
    (and the same query, so a shared view survives) then goes through the router.
    """
    if st.session_state.get(ROUTED):
        return
    st.navigation([st.Page(path) for path in PAGES.values()], position="hidden")
    page = Path(page_file).resolve().relative_to(settings.PROJECT_ROOT).as_posix()
    target = page if page in PAGES.values() else PAGES["home"]
    st.switch_page(target, query_params=st.query_params.to_dict())


def artifacts_root() -> Path:
    return settings.artifacts_dir()


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def classifier(path: str, key: tuple) -> Classifier:
    """One loaded model per path and state of the artifacts (``artifacts.changed_key``: a detector fitted later is
    picked up), shared by every session and every page (at most two kept in memory). The inference module is
    imported here, not with this module: scikit-learn comes with it, which pages without models need not load."""
    from engine.models.inference import load_classifier

    return load_classifier(path)


@st.cache_data(show_spinner=False, max_entries=8)
def _models(artifacts_root: str, key: tuple) -> list[ModelInfo]:
    from engine.models.catalog import list_models

    return list_models(Path(artifacts_root))


def models() -> list[ModelInfo]:
    """Every servable model: backbones' fold ensembles first (the model a user gets), then single fold models."""

    root = artifacts_root()
    return _models(str(root), artifacts.changed_key(root))


def saved_upload(upload) -> Path:
    """Keep an uploaded dataset zip under ``<artifacts>/uploads/<sha256>.zip`` (once per content)."""
    data = upload.getvalue()
    if len(data) > MAX_ZIP_BYTES:
        raise ValueError(f"{upload.name}: {len(data) / 2**20:.0f} MB is over the {MAX_ZIP_BYTES // 2**20} MB limit")
    if not data.startswith(ZIP_SIGNATURE):
        raise ValueError(f"{upload.name}: not a .zip archive (its content does not start like one)")
    target = artifacts_root() / "uploads" / f"{hashlib.sha256(data).hexdigest()}.zip"
    if not target.is_file():
        atomic.write_bytes(target, data)
    return target


def remembered(param: str) -> str | None:
    """The URL's value of ``param``, else the one chosen earlier in this session."""
    return st.query_params.get(param) or st.session_state.get("view", {}).get(param)


def remember(**values: object) -> None:
    """Put the chosen view in the URL and in the session."""
    view = st.session_state.setdefault("view", {})
    for param, value in values.items():
        if value is None:
            view.pop(param, None)
            st.query_params.pop(param, None)
        else:
            view[param] = str(value)
            st.query_params[param] = str(value)


def choose(
    label: str,
    options: Sequence,
    *,
    param: str,
    where=st,
    format_func: Callable[[object], str] = str,
    help: str | None = None,
    exclude: object = None,
):
    """A selectbox whose choice is kept in the URL under ``param``."""
    options = [o for o in options if exclude is None or o != exclude]
    if not options:
        return None
    wanted = remembered(param)
    index = next((i for i, o in enumerate(options) if str(o) == wanted), 0)
    value = where.selectbox(label, options, index=index, format_func=format_func, help=help, key=f"choose-{param}")
    remember(**{param: value})
    return value


@st.cache_data(show_spinner=False, max_entries=8)
def _studies(artifacts_root: str, key: tuple) -> pd.DataFrame:
    return explore.list_studies(Path(artifacts_root))


def studies() -> pd.DataFrame:
    root = artifacts_root()
    return _studies(str(root), artifacts.changed_key(root))


def selected_study() -> str | None:
    """The study chosen in the sidebar, if any study has finished runs."""
    table = studies()
    ids = list(table.loc[table["folds_done"] > 0, "study_id"])
    wanted = remembered("study")
    if wanted in ids:
        return wanted
    return ids[0] if ids else None


def require_study() -> str:
    """The chosen study, or an explanation of what to do and the end of this page's script."""
    study_id = selected_study()
    if study_id is None:
        st.info(NO_STUDY_HELP.format(root=artifacts_root()))
        st.stop()
    return study_id


def study_page(title: str) -> str:
    """The chosen study (or :func:`require_study`'s explanation and the end of the script), under the page's title
    and the study's caption: how every page of one study opens."""
    study_id = require_study()
    st.title(title)
    study_caption(study_id)
    return study_id


def require_models(
    study_id: str, *, none_yet: str = "No finished fold with predictions in this study yet."
) -> list[str]:
    """The study's models with out-of-fold predictions (:func:`model_names_of`), or ``none_yet`` and the end of the
    page's script."""
    models = served_first(study_id, study_cached(model_names_of, study_id))
    if not models:
        st.info(none_yet)
        st.stop()
    return models


def served_first(study_id: str, models: list[str]) -> list[str]:
    """``models`` with the served one first when it is of this study: a page opens on the model Home speaks of."""
    choice = read_choice(artifacts_root()) or {}
    served = choice.get("backbone") if choice.get("study_id") == study_id else None
    return sorted(models, key=lambda m: m != served)


def model_folds(study_id: str, model: str) -> list[int]:
    """The folds a model has held-out predictions of: a backbone's finished folds, the ensemble's shared ones."""
    if model == predictions.ENSEMBLE:
        return study_cached(out_of_fold_of, study_id, model).fold_ids
    return folds_of(study_id, model)


def page_link(page: str, label: str, *, query_params: dict[str, str] | None = None, where=st) -> None:
    """A link to one of :data:`PAGES`, with the page's icon (:data:`ICONS`)."""
    where.page_link(PAGES[page], label=label, icon=ICONS[page], query_params=query_params)


def study_cached(function: Callable, study_id: str, *args: object) -> object:
    """``function(root, study_id, *args, key)``, a page's ``st.cache_data`` function, kept until a run of the study
    finishes (``key`` is the study's change marker)."""
    root = artifacts_root()
    return function(str(root), study_id, *args, artifacts.changed_key(root, study_id))


@st.cache_data(show_spinner=False, max_entries=16)
def model_names_of(artifacts_root: str, study_id: str, key: tuple) -> list[str]:
    """The study's backbones with a finished fold, then ``ensemble`` when there is one."""
    return predictions.model_names(study_id, Path(artifacts_root))


@st.cache_data(show_spinner=False, max_entries=16)
def out_of_fold_of(artifacts_root: str, study_id: str, model: str, key: tuple) -> predictions.OutOfFold:
    """A model's pooled out-of-fold predictions."""
    return predictions.study_out_of_fold(study_id, model, Path(artifacts_root))


@st.cache_data(show_spinner="Bootstrapping the intervals (once per model)…", max_entries=64)
def summary_of(artifacts_root: str, study_id: str, model: str, key: tuple) -> dict:
    """A model's intervals and calibration (``engine.evaluation.summary``), computed once and kept on disk."""
    return summary.model_summary(out_of_fold_of(artifacts_root, study_id, model, key), Path(artifacts_root))


def model_label(model: str) -> str:
    return "ensemble (mean of the backbones' probabilities)" if model == predictions.ENSEMBLE else model


def cached(read: Callable, study_id: str, *args: object) -> object:
    """``read(study_id, *args, artifacts_root)`` cached until a run of the study finishes."""
    root = artifacts_root()
    return _cached_read(read.__name__, str(root), study_id, args, artifacts.changed_key(root, study_id))


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_read(name: str, artifacts_root: str, study_id: str, args: tuple, key: tuple) -> object:
    return getattr(explore, name)(study_id, *args, artifacts_root=Path(artifacts_root))


def backbones_of(study_id: str) -> list[str]:
    table = cached(explore.fold_metrics, study_id)
    return sorted(table["backbone"].unique()) if not table.empty else []


def folds_of(study_id: str, backbone: str) -> list[int]:
    table = cached(explore.fold_metrics, study_id)
    return sorted(int(f) for f in table.loc[table["backbone"] == backbone, "fold"])


def study_caption(study_id: str) -> None:
    table = studies().set_index("study_id")
    row = table.loc[study_id]
    st.caption(f"Study `{study_id}` · {row['title']} · {row['split']} · {row['folds_done']} finished runs")


if __name__ == "__main__":  # opened as a page by the legacy mode: go through the router
    require_router(__file__)
