"""The study explorer: page router, the study picker, and the form that launches a training job.

Run with ``streamlit run streamlit_app.py``. With ``CXR_READ_ONLY=1`` (or ``read_only = true`` in
``.streamlit/secrets.toml``) the app is a read-only demo: the launch form is hidden and the
engine refuses to queue anything.
"""

from __future__ import annotations

import os

import streamlit as st

from engine import settings
from engine.jobs.store import JobRequest, JobStore
from engine.jobs.worker import ensure_worker
from engine.models.backbones import PAPER_BACKBONES, REGISTRY
from engine.training.presets import PRESETS, PROBE_VARIED_BY_SOURCE
from pages import common

ALL_PAPER = "All 14 of the paper"
DEFAULT_PROTOCOL = PROBE_VARIED_BY_SOURCE.name
DEFAULT_DATA = settings.shared_dir() / "data" / "covid19-radiography-paper"
DEFAULT_SECOND_SOURCE = settings.shared_dir() / "data" / "nih-adult-normal"
# The navigation menu: each section's pages, with the title the menu gives each (icons: ``common.ICONS``);
# ``home`` opens first.
MENU = {
    "Study": {
        "home": "Home",
        "comparison": "Comparison",
        "confusion": "Confusion matrices",
        "curves": "Training curves",
    },
    "Evaluation": {
        "discrimination": "ROC and precision-recall",
        "calibration": "Calibration",
        "operating_point": "Operating point",
        "failures": "Failure analysis",
        "robustness": "Robustness",
        "audit": "Shortcut audit",
        "external": "External validation",
    },
    "Use": {"classify": "Classify X-rays", "jobs": "Jobs", "report": "Reproduction report"},
}
SPLITS = {
    "patient": "By patient (every image of a patient in one fold)",
    "image": "By image (the paper's; a patient can be on both sides)",
}


def secrets_read_only() -> bool:
    """``read_only = true`` in the app's secrets; absent secrets mean not read-only."""
    try:
        return bool(st.secrets.get("read_only", False))
    except FileNotFoundError:
        return False


def read_only() -> bool:
    """The demo switch; a secrets-only setting is passed to the engine so it refuses too."""
    if secrets_read_only():
        os.environ["CXR_READ_ONLY"] = "1"
    return settings.read_only()


def chosen_backbones(picked: list[str]) -> tuple[str, ...]:
    if ALL_PAPER in picked:
        return tuple(dict.fromkeys([*PAPER_BACKBONES, *(p for p in picked if p != ALL_PAPER)]))
    return tuple(picked)


def study_picker() -> None:
    table = common.studies()
    done = table[table["folds_done"] > 0]
    if done.empty:
        st.sidebar.caption("No finished study yet.")
        return
    # the protocol first: several studies share a dataset, and the box shows the start of the label
    titles = {
        row.study_id: f"{'served · ' if row.served else ''}{row.protocol} · {row.dataset} · {row.study_id}"
        for row in done.itertuples()
    }
    common.choose(
        "Study",
        list(titles),
        param="study",
        where=st.sidebar,
        format_func=titles.get,
        help="The studies of this artifacts folder: protocol · dataset · study id. Home lists them all.",
    )


def _default_folders() -> str:
    """The recommended composition where ../shared has it: the paper's images (which set the classes), then the
    adult normals as a second source; never the adult normals alone, a one-class dataset."""
    if not DEFAULT_DATA.is_dir():
        return ""
    return "\n".join(str(folder) for folder in (DEFAULT_DATA, DEFAULT_SECOND_SOURCE) if folder.is_dir())


def launch_form() -> None:
    """Dataset, backbones and protocol parameters; submitting queues a job and wakes the worker."""
    st.sidebar.subheader("Launch a training job")
    names = list(PRESETS)
    protocol = PRESETS[
        st.sidebar.selectbox("Protocol preset", names, index=names.index(DEFAULT_PROTOCOL), key="launch_protocol")
    ]
    st.sidebar.caption(protocol.description)
    with st.sidebar.form("launch", border=True):
        folder = st.text_area(
            "Dataset folders on the server (one sub-folder per class), one per line",
            value=_default_folders(),
            help="The first folder sets the classes; each further folder adds images to them, each image keeping "
            "its source (a multi-source study: adult normals beside the paper's children, say).",
            height=68,
        )
        upload = st.file_uploader("…or upload a .zip of class folders (used instead of the folder)", type=["zip"])
        picked = st.multiselect("Backbones", [ALL_PAPER, *REGISTRY], default=["MobileNet"])
        left, right = st.columns(2)
        folds = left.number_input("Folds", min_value=2, max_value=10, value=5)
        epochs = protocol.stages[-1].epochs
        if protocol.trains_by_epochs:
            epochs = right.number_input(
                "Epochs" if len(protocol.stages) == 1 else "Epochs (last stage)",
                min_value=1,
                max_value=500,
                value=epochs,
            )
        else:
            st.caption("No epochs: the head is a logistic regression, fitted in one solve per fold.")
        batch_size = left.number_input("Batch size", min_value=1, max_value=512, value=protocol.batch_size)
        input_size = right.number_input("Input size (px)", min_value=32, max_value=512, value=224, step=16)
        seed = left.number_input("Seed", min_value=0, value=42)
        weights = right.selectbox("Weights", ["imagenet", "none"], help="'none' trains from random weights")
        split = st.radio(
            "Split the folds",
            list(SPLITS),
            format_func=SPLITS.get,
            help="Patients come from a patients.csv beside the class folders, or from the public sets' file names. "
            "By image reproduces the paper; its figures are optimistic where a patient has several images.",
        )
        submitted = st.form_submit_button("Queue the job", type="primary")
    if submitted:
        options = {
            "protocol": protocol.name,
            "folds": int(folds),
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "input_size": int(input_size),
            "seed": int(seed),
            "weights": weights,
            "split": split,
        }
        submit(folder=folder, upload=upload, backbones=chosen_backbones(picked), options=options)
    last = st.session_state.get("last_job")
    if last:
        st.sidebar.success(f"Job `{last}` queued.")
        common.page_link("jobs", "Follow it on the Jobs page", query_params={"job": last}, where=st.sidebar)


def submit(*, folder: str, upload, backbones: tuple[str, ...], options: dict) -> None:
    """Queue the job (the zip, when given, wins over the folders) and wake the worker; errors go in the sidebar."""
    try:
        folders = [line.strip() for line in folder.splitlines() if line.strip()]
        data = [str(common.saved_upload(upload))] if upload is not None else folders
        if not data:
            raise ValueError("give a dataset folder or upload a .zip")
        request = JobRequest.for_study(data, backbones=backbones, **options)
        job = JobStore(common.artifacts_root()).submit(request)
    except (settings.ReadOnlyError, ValueError) as exc:
        st.sidebar.error(str(exc))
        return
    ensure_worker(common.artifacts_root())
    st.session_state["last_job"] = job.id


settings.log_to_stderr()
st.set_page_config(page_title="CXR transfer-learning study explorer", page_icon="🫁", layout="wide")
navigation = st.navigation(
    {
        section: [
            st.Page(common.PAGES[page], title=title, icon=common.ICONS[page], default=page == "home")
            for page, title in titles.items()
        ]
        for section, titles in MENU.items()
    },
    expanded=True,
)
common.mark_routed()
study_picker()
if read_only():
    st.sidebar.info("Read-only demo: browsing finished studies only; training and job submission are disabled.")
else:
    launch_form()
st.sidebar.caption(common.NOT_A_DEVICE)
navigation.run()
