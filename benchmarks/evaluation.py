"""The evaluation pages' costs on the committed demo study: the cold bootstrap, then each page's warm render.

(i) Cold bootstrap: the demo frozen study (3 backbones) is copied to a temporary folder without its
``evaluation/`` cache files, and a fresh process (``python -m benchmarks.evaluation bootstrap ROOT
STUDY``) times ``engine.evaluation.summary.model_summary`` for every model of
``engine.evaluation.predictions.model_names`` (the backbones and their ensemble): the stratified
bootstrap of every metric, the discrimination intervals and the cross-fitted calibration, written to
the copy's cache. A second pass over the same models times the warm path (the cached file read).

(ii) Warm render: a fresh process (``python -m benchmarks.evaluation pages ROOT STUDY PAGE...``)
opens every evaluation page through the router with Streamlit's AppTest, as the server runs it
(``st.navigation`` turns off the legacy pages-folder mode for good, the same patch as the
``served_navigation`` test fixture), on a copy of the artifacts folder as a clone has it (the
committed studies, summaries and external evaluations; the image caches of this machine, when
present, linked read-only). Each page runs once to warm Streamlit's caches, then
its second run is timed. The real artifacts folder is never written to.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Options, Result, last_json_line
from engine import settings

DEMO_STUDY = "9da277b73bda"
PAGES = ("comparison", "discrimination", "calibration", "operating_point", "failures", "robustness", "external")
TINY_PAGES = ("comparison", "calibration")
APP = settings.PROJECT_ROOT / "streamlit_app.py"
TIMEOUT_S = 300
WARM_RUNS = 2


def copy_study(source: Path, target: Path, study_id: str, *, keep_cache: bool) -> Path:
    """``studies/<study_id>`` of ``source`` under ``target`` (its ``evaluation/`` cache left out unless kept)."""
    ignore = None if keep_cache else shutil.ignore_patterns("evaluation")
    shutil.copytree(source / "studies" / study_id, target / "studies" / study_id, ignore=ignore)
    return target


def copy_clone(source: Path, target: Path, study_id: str) -> Path:
    """``target`` as a clone of the project has its artifacts, for one study: the study with its cached
    summaries, the external evaluations, the dataset manifests; image caches of ``source`` are symlinked
    (read-only use: every engine write replaces a path atomically, so the originals are never touched)."""
    copy_study(source, target, study_id, keep_cache=True)
    if (source / "evaluations").is_dir():
        shutil.copytree(source / "evaluations", target / "evaluations")
    for folder in sorted((source / "datasets").glob("*")) if (source / "datasets").is_dir() else []:
        mirror = target / "datasets" / folder.name
        mirror.mkdir(parents=True)
        for item in folder.iterdir():
            if item.suffix == ".json":
                shutil.copy2(item, mirror / item.name)
            elif item.suffix == ".npy":
                (mirror / item.name).symlink_to(item.resolve())
    return target


# The two measurements, each run in a fresh process by ``main``.


def bootstrap(artifacts_root: Path, study_id: str) -> dict:
    """Seconds of ``model_summary`` for every model of the study, cold (no cache file), then warm."""
    started = time.perf_counter()
    from engine.evaluation.predictions import model_names, study_out_of_fold
    from engine.evaluation.summary import model_summary

    imported = time.perf_counter() - started
    names = model_names(study_id, artifacts_root)
    cold, warm, images = {}, {}, {}
    for name in names:
        begin = time.perf_counter()
        summary = model_summary(study_out_of_fold(study_id, name, artifacts_root), artifacts_root)
        cold[name] = time.perf_counter() - begin
        images[name] = summary["n_images"]
    for name in names:
        begin = time.perf_counter()
        model_summary(study_out_of_fold(study_id, name, artifacts_root), artifacts_root)
        warm[name] = time.perf_counter() - begin
    kept = sorted(p.name for p in (artifacts_root / "studies" / study_id / "evaluation").glob("*.json"))
    return {"import_s": imported, "cold_s": cold, "warm_s": warm, "images": images, "kept": kept}


def navigation_patch() -> None:
    """Run the entry script on every AppTest run, as the server does once ``st.navigation`` was called.

    AppTest resets Streamlit's legacy "pages directory" flag before each run and would then run a page
    alone, without the router; the server clears the flag for good at the first ``st.navigation`` call
    (``tests/app_fixtures.served_navigation`` patches the same way, in pytest).
    """
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    PagesManager.__init__ = init


def render_pages(study_id: str, pages: list[str]) -> dict:
    """Each page's first run (warm-up) and second run (timed) through the router, with AppTest."""
    from streamlit.testing.v1 import AppTest

    navigation_patch()
    query = {"study": study_id}
    found = {}
    for name in pages:
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
        at.query_params.update(query)
        at.run()
        at.switch_page(f"pages/{name}.py")
        at.query_params.update(query)
        runs = []
        for _ in range(WARM_RUNS):
            begin = time.perf_counter()
            at.run()
            runs.append(time.perf_counter() - begin)
            if at.exception:
                raise RuntimeError(f"pages/{name}.py: {[e.value for e in at.exception]}")
        title = [t.value for t in at.title]
        found[name] = {"first_s": runs[0], "warm_s": runs[-1], "title": title[0] if title else ""}
    return found


def _child(*args: str, env: dict[str, str] | None = None) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.evaluation", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=settings.PROJECT_ROOT,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.evaluation {args[0]} failed:\n{proc.stderr[-3000:]}")
    return {**last_json_line(proc.stdout), "process_s": time.perf_counter() - started}


def run(options: Options) -> Result:
    source = options.artifacts or settings.artifacts_dir()
    if not (source / "studies" / DEMO_STUDY / "study.json").is_file():
        source = settings.PROJECT_ROOT / "artifacts"  # the committed demo study, which every clone has
    pages = list(TINY_PAGES if options.tiny else PAGES)
    with tempfile.TemporaryDirectory(prefix="bench-evaluation-") as tmp:
        cold_root = copy_study(source, Path(tmp) / "cold", DEMO_STUDY, keep_cache=False)
        boot = _child("bootstrap", str(cold_root), DEMO_STUDY)
        clone = copy_clone(source, Path(tmp) / "clone", DEMO_STUDY)
        env = {"CXR_ARTIFACTS": str(clone), "CXR_READ_ONLY": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
        rendered = _child("pages", DEMO_STUDY, *pages, env=env)
    rows = [
        {
            "step": f"model_summary {name}: bootstrap, intervals, calibration",
            "images": boot["images"][name],
            "first s": round(boot["cold_s"][name], 2),
            "warm s": round(boot["warm_s"][name], 3),
            "first is": "cold (no cache file)",
            "warm is": "the kept file read",
        }
        for name in boot["cold_s"]
    ]
    rows += [
        {
            "step": f"pages/{name}.py ({found['title']})",
            "images": "",
            "first s": round(found["first_s"], 2),
            "warm s": round(found["warm_s"], 2),
            "first is": "first run in the process",
            "warm is": "second run",
        }
        for name, found in rendered["pages"].items()
    ]
    cold_total, warm_total = sum(boot["cold_s"].values()), sum(boot["warm_s"].values())
    figures = {
        "bootstrap_cold_s": round(cold_total, 2),
        "bootstrap_warm_s": round(max(warm_total, 0.001), 3),
        "bootstrap_process_s": round(boot["process_s"], 2),
        "slowest_page_warm_s": round(max(f["warm_s"] for f in rendered["pages"].values()), 2),
    }
    figures |= {f"{name}_warm_s": round(max(f["warm_s"], 0.001), 3) for name, f in rendered["pages"].items()}
    return Result(
        name="evaluation",
        figures=figures,
        table=rows,
        settings={
            "study": DEMO_STUDY,
            "models": list(boot["cold_s"]),
            "pages": pages,
            "bootstrap_resamples": _resamples(),
            "pages_read_only": False,
        },
        notes=[
            f"cold bootstrap: a fresh process on a copy of study {DEMO_STUDY} without its evaluation/ files; "
            f"bootstrap_cold_s is the sum of model_summary over {len(boot['cold_s'])} models "
            f"(imports {boot['import_s']:.1f} s, process {boot['process_s']:.1f} s with the interpreter's start)",
            f"pages: AppTest through the router in a fresh process, query study={DEMO_STUDY}; each page run once "
            f"to warm Streamlit's caches, the second run timed (router + sidebar + page, as a server rerun)",
        ],
    )


def _resamples() -> int:
    from engine.evaluation.summary import DEFAULT_INTERVALS

    return DEFAULT_INTERVALS.n_resamples


def main(argv: list[str]) -> dict:
    command, *args = argv
    if command == "bootstrap":
        root, study_id = args
        return bootstrap(Path(root), study_id)
    study_id, *pages = args
    return {"pages": render_pages(study_id, pages)}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    print(json.dumps(main(sys.argv[1:])), flush=True)
