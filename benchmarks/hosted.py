"""The hosted demo's server: an exported model read-only, side by side with the same model on the Keras path.

Two ``streamlit run streamlit_app.py`` servers (headless, loopback, free ports; the helpers of
``docs/screenshots/take.py``), each started fresh on its own temporary copy of the artifacts
folder's studies, one after the other in ABBA order (``--tiny``: one start each):

- ``export``: ``CXR_READ_ONLY=1``, a copy with the model's exported file (LiteRT or ONNX, with its
  sidecar and OOD detector). The model is the first exported one the artifacts folder lists (as
  the read-only Classify page offers them); when it has none, the best saved fold model of the demo
  study's MobileNet is exported into the copy (``engine.models.export.export_runs``, what
  ``python -m engine export --model`` runs, with the study's images for the parity check and the OOD
  detector), so the real artifacts folder is never written to.
- ``keras``: the same model from a copy without any ``export/`` folder, served not read-only
  (read-only mode lists only exported models), so the page loads its ``model.keras`` through Keras
  (for a study's ensemble of backbones, every backbone's fold models).

For each server, headless Chromium opens ``/classify?model=<id>`` (the deep link goes through the
router), uploads the same X-rays in one batch (8 real ones from ``--data``; ``--tiny``: 2 of its
images) and waits for the results. Measured: the time from the upload to the first result shown
(the first classification after the server's start, so it includes loading the model), to all
results shown; the server process's peak resident memory after them (``VmHWM`` of
``/proc/<pid>/status``: the kernel's high-water mark of that process alone, reset at its ``exec``;
its child processes are listed apart); whether TensorFlow was loaded into it (its
``/proc/<pid>/maps`` maps a file of the ``tensorflow`` package: ai_edge_litert's own
``_pywrap_tensorflow_lite_*`` files are not counted), and whether its log shows a Keras model load.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.harness import Options, Result
from engine import settings

DEMO_STUDY = "9da277b73bda"
BACKBONE = "MobileNet"
TINY_BACKBONE = "MobileNet-0.25"
UPLOADS = 8
TINY_UPLOADS = 2
CHROMIUM = Path("/usr/bin/chromium")
TAKE = settings.PROJECT_ROOT / "docs" / "screenshots" / "take.py"
TIMEOUT_MS = 240_000
VERDICT = re.compile(r"^(Predicted|Not meaningful: unlike the training images): ")
KERAS_LOAD = re.compile(r"engine\.models\.inference: loaded (?:model|the \d+-fold ensemble) (\S+)")
GOAL_RSS_MB = 400
GOAL_FIRST_S = 3


def load_take():
    """``docs/screenshots/take.py`` (server, browser helpers), loaded by path: it is a script, not a package."""
    name = "take_screenshots"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TAKE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Copies of the artifacts folder.


def _skip_temp(folder: str, names: list[str]) -> list[str]:
    """Atomic writes' temp files (``.<name>.<random>.tmp``) of a study being written by a running job."""
    return [n for n in names if n.startswith(".") and ".tmp" in n]


def _tolerant_copy(src: str, dst: str) -> None:
    """A file that a running job replaced or removed while the tree was copied is left out."""
    with contextlib.suppress(FileNotFoundError):
        shutil.copy2(src, dst)


def copy_studies(source: Path, target: Path, *, exports: bool) -> Path:
    """``source/studies`` under ``target`` (no caches, no job store); without ``exports``, no ``export/`` folder."""
    shutil.copytree(source / "studies", target / "studies", ignore=_skip_temp, copy_function=_tolerant_copy)
    if not exports:
        for folder in sorted([*(target / "studies").glob("*/runs/**/export"), *(target / "studies").glob("*/export")]):
            shutil.rmtree(folder)
    return target


def link_images(source: Path, target: Path, fingerprint: str) -> bool:
    """The decoded image cache of dataset ``fingerprint`` in ``target``, symlinked read-only; False when absent."""
    folder = source / "datasets" / fingerprint
    if not any(folder.glob("images-*.npy")):
        return False
    mirror = target / "datasets" / fingerprint
    mirror.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.suffix == ".json":
            shutil.copy2(item, mirror / item.name)
        elif item.suffix == ".npy":
            (mirror / item.name).symlink_to(item.resolve())
    return True


def model_id(info) -> str:
    """The Classify page's ``?model=`` value of a ``ModelInfo`` (``pages/classify.py``'s ``model_id``)."""
    return f"{info.study_id}/{info.backbone}/{'ensemble' if info.is_ensemble else info.fold}"


def _in_copy(path: Path, source: Path, copy: Path) -> Path:
    return copy / path.resolve().relative_to(source.resolve())


@dataclass(frozen=True)
class Prepared:
    """The two artifacts copies, the model both serve, and where its export came from."""

    export_root: Path
    keras_root: Path
    model: str
    label: str
    export_file: str
    export_source: str
    ood: bool


def prepare(options: Options, work: Path, *, source: Path, backbone: str = BACKBONE) -> Prepared:
    """The export copy (with the model's export, made there when ``source`` has none) and the Keras copy."""
    from engine.models.catalog import list_models
    from engine.results import artifacts

    listed = list_models(source)
    exported = [m for m in listed if m.export is not None]
    export_root = copy_studies(source, work / "export-artifacts", exports=True)
    if exported:
        chosen, made = exported[0], f"existing export of the artifacts folder ({exported[0].export.name})"
    else:
        demo = [m for m in listed if not m.is_ensemble and m.path.is_file() and m.backbone == backbone]
        demo = [m for m in demo if m.study_id == DEMO_STUDY] or demo
        if not demo:
            raise RuntimeError(f"no exported model and no saved {backbone} fold model in {source}")
        chosen = demo[0]
        study = artifacts.read_study(chosen.study_id, source)
        images = link_images(source, export_root, study.dataset.fingerprint)
        data = None if images or not options.data.is_dir() else options.data
        started = time.perf_counter()
        result = _export(_in_copy(chosen.path, source, export_root), export_root, data=data)
        made = (
            f"exported into the copy for this run ({result.name}, {time.perf_counter() - started:.0f} s): "
            "the artifacts folder has no export"
        )
    keras_root = copy_studies(source, work / "keras-artifacts", exports=False)
    ident = model_id(chosen)
    on_export = {model_id(m): m for m in list_models(export_root) if m.export is not None}
    on_keras = {model_id(m): m for m in list_models(keras_root)}
    if ident not in on_export or ident not in on_keras or on_keras[ident].export is not None:
        raise RuntimeError(
            f"model {ident} is not servable both ways (export: {list(on_export)}, keras: {list(on_keras)})"
        )
    export_file = on_export[ident].export
    return Prepared(
        export_root=export_root,
        keras_root=keras_root,
        model=ident,
        label=on_export[ident].label,
        export_file=str(export_file.relative_to(export_root)),
        export_source=made,
        ood=has_detector(export_file),
    )


def has_detector(export_file: Path) -> bool:
    """Whether the export has its OOD detector: an ensemble of backbones' manifest, each member's."""
    from engine.models.backbone_ensemble import served_files

    return all(f.with_name(f.name + ".ood.npz").is_file() for f in served_files(export_file))


def _export(model: Path, artifacts_root: Path, *, data: Path | None) -> Path:
    from engine.models.export import export_runs

    return export_runs([model], format="litert", artifacts_root=artifacts_root, data=data).path


def _tiny_source(options: Options, work: Path) -> Path:
    """A quick fold model of MobileNet-0.25 at 32 px (1 fold of 2, frozen, random weights) in its own folder."""
    from engine.data.datasets import import_dataset
    from engine.training.fold import train_fold
    from engine.training.presets import FROZEN
    from engine.training.study import StudyRequest, prepare_study

    root = work / "tiny-artifacts"
    dataset = import_dataset(options.data, input_size=options.input_size, artifacts_root=root)
    request = StudyRequest(protocol=FROZEN.replace(epochs=2), n_folds=2, weights=options.weights)
    study = prepare_study(dataset, request, artifacts_root=root)
    train_fold(dataset=dataset, study=study, backbone=TINY_BACKBONE, fold=0, artifacts_root=root)
    return root


def upload_files(data: Path, count: int) -> list[Path]:
    """``count`` images of ``data``'s class folders, drawn with seed 0 (the same for both servers)."""
    files = sorted(p for p in data.glob("*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(files) < count:
        raise RuntimeError(f"{data} has {len(files)} images in class folders, {count} needed")
    chosen = np.random.default_rng(0).choice(len(files), count, replace=False)
    return [files[i] for i in sorted(chosen)]


# One server, measured.


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def children(pid: int) -> list[int]:
    """Every descendant process of ``pid``."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                queue += kids
    return found


def runtimes_in(paths: set[str]) -> dict[str, bool]:
    """Which runtimes a set of mapped file paths holds: TensorFlow's own files, onnxruntime, LiteRT.

    ai_edge_litert ships ``_pywrap_tensorflow_lite_*`` files of its own: they are LiteRT, not TensorFlow.
    """
    return {
        "tensorflow": any("/tensorflow/" in p or Path(p).name.startswith("libtensorflow") for p in paths),
        "onnxruntime": any("/onnxruntime/" in p for p in paths),
        "litert": any("/ai_edge_litert/" in p for p in paths),
    }


def mapped_libraries(pid: int) -> dict[str, bool]:
    """:func:`runtimes_in` the files process ``pid`` has mapped (``/proc/<pid>/maps``)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return runtimes_in({line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6})


@contextlib.contextmanager
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    take = load_take()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=take.CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def measure(side: str, artifacts_root: Path, *, read_only: bool, model: str, files: list[Path]) -> dict:
    """Start a server on ``artifacts_root``, classify ``files`` once on its Classify page, read its memory and maps."""
    take = load_take()
    started = time.perf_counter()
    with take.server(artifacts_root, read_only=read_only) as running:
        start_s = time.perf_counter() - started
        pid = running.process.pid
        with browser() as chromium:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            begin = time.perf_counter()
            page.goto(f"{running.url}/classify?model={model}")
            take.wait_until_idle(page, timeout_ms=TIMEOUT_MS)
            open_s = time.perf_counter() - begin
            chosen = page.evaluate("() => new URL(location.href).searchParams.get('model')")
            caption = page.get_by_text(re.compile("served by the ")).first.inner_text()
            served = caption.rsplit("served by the ", 1)[-1].strip()
            hwm_before = status_mb(pid, "VmHWM")
            verdicts = page.locator("[data-testid=stMain] [data-testid=stMarkdownContainer]").filter(has_text=VERDICT)
            begin = time.perf_counter()
            page.locator("[data-testid=stMain] input[type=file]").set_input_files([str(f) for f in files])
            verdicts.first.wait_for(timeout=TIMEOUT_MS)
            first_s = time.perf_counter() - begin
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            while verdicts.count() < len(files) and time.monotonic() < deadline:
                time.sleep(0.05)
            all_s = time.perf_counter() - begin
            take.wait_until_idle(page, timeout_ms=TIMEOUT_MS)
            shown = [v.inner_text().strip() for v in verdicts.all()]
            errors = page.locator("[data-testid=stException]").count()
        kids = children(pid)
        found = {
            "side": side,
            "start_s": start_s,
            "open_s": open_s,
            "first_s": first_s,
            "all_s": all_s,
            "hwm_mb": status_mb(pid, "VmHWM"),
            "hwm_before_upload_mb": hwm_before,
            "rss_mb": status_mb(pid, "VmRSS"),
            "children": len(kids),
            "children_hwm_mb": sum(status_mb(k, "VmHWM") for k in kids if Path(f"/proc/{k}").is_dir()),
            **mapped_libraries(pid),
            "chosen": chosen,
            "served": served,
            "predicted": [re.sub(r"\s*\(.*", "", s.split(": ", 1)[1]) for s in shown],
            "exceptions": errors,
        }
        log = running.log.read_text(errors="replace")
    found["keras_loads"] = KERAS_LOAD.findall(log)
    found["traceback"] = "Traceback" in log
    if errors or len(shown) != len(files) or chosen != model:
        raise RuntimeError(
            f"{side}: {len(shown)} of {len(files)} results shown, {errors} exception(s), model {chosen!r} "
            f"(wanted {model!r}); server log:\n{log[-3000:]}"
        )
    return found


def run(options: Options) -> Result:
    if not CHROMIUM.is_file():
        raise RuntimeError(f"the hosted benchmark drives Debian's Chromium: {CHROMIUM} is missing")
    count = TINY_UPLOADS if options.tiny else UPLOADS
    order = ("export", "keras") if options.tiny else ("export", "keras", "keras", "export")
    files = upload_files(options.data, count)
    with tempfile.TemporaryDirectory(prefix="bench-hosted-") as tmp:
        work = Path(tmp)
        source = _tiny_source(options, work) if options.tiny else options.artifacts or settings.artifacts_dir()
        ready = prepare(options, work, source=source, backbone=TINY_BACKBONE if options.tiny else BACKBONE)
        roots = {"export": (ready.export_root, True), "keras": (ready.keras_root, False)}
        rounds = []
        for side in order:
            root, read_only = roots[side]
            rounds.append(measure(side, root, read_only=read_only, model=ready.model, files=files))
    return summarize(rounds, ready, files=files, tiny=options.tiny)


def summarize(rounds: list[dict], ready: Prepared, *, files: list[Path], tiny: bool) -> Result:
    sides = {side: [r for r in rounds if r["side"] == side] for side in ("export", "keras")}
    mean = lambda side, key: statistics.fmean(r[key] for r in sides[side])  # noqa: E731
    table = [
        {
            "server": f"{r['side']} ({'read-only, ' if r['side'] == 'export' else ''}{r['served']})",
            "round": i + 1,
            "server start s": round(r["start_s"], 1),
            "page open s": round(r["open_s"], 1),
            "first result s": round(r["first_s"], 2),
            f"all {len(files)} results s": round(r["all_s"], 2),
            "peak RSS (VmHWM) MB": round(r["hwm_mb"], 1),
            "VmHWM before upload MB": round(r["hwm_before_upload_mb"], 1),
            "RSS after MB": round(r["rss_mb"], 1),
            "child processes": r["children"],
            "TensorFlow mapped": r["tensorflow"],
            "Keras model load logged": bool(r["keras_loads"]),
            "runtime mapped": ", ".join(k for k in ("litert", "onnxruntime") if r[k]) or "none",
        }
        for i, r in enumerate(rounds)
    ]
    same = all(r["predicted"] == rounds[0]["predicted"] for r in rounds)
    figures = {
        "export_first_s": round(mean("export", "first_s"), 2),
        "keras_first_s": round(mean("keras", "first_s"), 2),
        "first_speedup": round(mean("keras", "first_s") / mean("export", "first_s"), 2),
        "export_rss_mb": round(max(r["hwm_mb"] for r in sides["export"]), 1),
        "keras_rss_mb": round(max(r["hwm_mb"] for r in sides["keras"]), 1),
        "rss_ratio": round(max(r["hwm_mb"] for r in sides["keras"]) / max(r["hwm_mb"] for r in sides["export"]), 2),
        "export_all_s": round(mean("export", "all_s"), 2),
        "keras_all_s": round(mean("keras", "all_s"), 2),
    }
    tensorflow = {side: any(r["tensorflow"] or r["keras_loads"] for r in found) for side, found in sides.items()}
    return Result(
        name="hosted",
        figures=figures,
        table=table,
        settings={
            "model": ready.model,
            "label": ready.label,
            "export": ready.export_file,
            "export_source": ready.export_source,
            "export_ood_detector": ready.ood,
            "uploads": [f.name for f in files],
            "order": [r["side"] for r in rounds],
            "tensorflow_imported": tensorflow,
            "same_predictions": same,
            "tiny": tiny,
        },
        notes=[
            f"model {ready.model} ({ready.label}); export: {ready.export_file}, {ready.export_source}",
            f"each server started fresh on its own copy, in the order {', '.join(r['side'] for r in rounds)}; "
            f"{len(files)} X-rays uploaded in one batch; figures: the mean over a side's starts for times, the "
            "highest VmHWM for memory",
            "TensorFlow imported: export server "
            f"{'yes' if tensorflow['export'] else 'no'}, Keras server {'yes' if tensorflow['keras'] else 'no'} "
            "(a mapped file of the tensorflow package, or a Keras model load in the server's log)",
            f"the {len(files)} classes shown are the same on every server: {'yes' if same else 'no'} "
            f"({', '.join(rounds[0]['predicted'])})",
            f"targets (export server): peak RSS at most {GOAL_RSS_MB} MB after the uploads, first result within "
            f"{GOAL_FIRST_S} s",
        ],
    )
