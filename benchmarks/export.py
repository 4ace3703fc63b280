"""Exported MobileNet 1.0 (LiteRT, ONNX; float and int8) against the Keras path, each in a fresh process.

Each probe (``python -m benchmarks.export probe KIND MODEL ROOT FILES...``) starts cold, loads one
classifier, classifies 8 real uploads in one call, then one upload at a time. It reports its peak
resident memory (``ru_maxrss``), the time from before its first engine import to the end of the
first classification, the steady latency of one upload (check, decode, forward pass, Grad-CAM),
and whether TensorFlow or Keras were loaded. The model is the one ``benchmarks.classify`` uses
(the best MobileNet 1.0 of the artifacts folder, or a quick one with ``--tiny``).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.harness import Options, Result, last_json_line, peak_rss_mb  # noqa: E402

FIRST_BATCH = 8
VARIANTS = (("keras", None), ("litert", None), ("onnx", None), ("litert", "int8"), ("onnx", "int8"))


def _label(fmt: str, quantize: str | None) -> str:
    return f"{fmt}{'-' + quantize if quantize else ''}"


def probe(kind: str, model: Path, artifacts_root: Path, files: list[Path]) -> dict:
    """One cold process's figures: load, classify ``FIRST_BATCH`` uploads, then one at a time."""
    if kind == "keras":
        from engine.models.inference import load_classifier

        classifier = load_classifier(model, artifacts_root=artifacts_root)
    else:
        from engine.models.runtime import load_exported

        classifier = load_exported(model)
    uploads = [(f.name, f.read_bytes()) for f in files]
    first = classifier.classify(uploads[:FIRST_BATCH])
    first_s = time.perf_counter() - STARTED
    if any(p.error for p in first):
        raise RuntimeError(f"{kind}: {[p.error for p in first if p.error]}")
    latency = []
    for item in uploads[FIRST_BATCH:]:
        started = time.perf_counter()
        classifier.classify([item])
        latency.append(time.perf_counter() - started)
    return {
        "rss_mb": round(peak_rss_mb(), 1),
        "hwm_mb": _vm_hwm_mb(),
        "first_s": round(first_s, 2),
        "p50_ms": round(float(np.percentile(latency, 50)) * 1000, 1),
        "tensorflow_loaded": "tensorflow" in sys.modules,
        "keras_loaded": "keras" in sys.modules,
        "predicted": [p.predicted for p in first],
    }


def _child(*args: str) -> dict:
    """Run ``python -m benchmarks.export ARGS`` and return its last JSON line, with its wall time."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.export", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.export {args[0]} {args[1]} failed:\n{proc.stderr[-2000:]}")
    return {**last_json_line(proc.stdout), "process_s": round(time.perf_counter() - started, 2)}


def prepare(options: Options, out: Path) -> dict:
    """The model (as ``benchmarks.classify`` picks it) and its four exports; run in a child process.

    A child, because Linux carries the memory of a process into the ``ru_maxrss`` of the processes
    it starts: the probes must be started by a small process, one that never loaded TensorFlow.
    """
    from benchmarks.classify import BACKBONE, _existing_model, _train_quick_model
    from engine.models.export import export_runs

    found = _existing_model(options)
    if found is None:
        root = options.artifacts or out / "artifacts"
        model, source = _train_quick_model(options, root), "trained for this run (1 fold, frozen)"
    else:
        (model, root), source = found, "existing study model (read-only)"
    paths, sizes = {"keras": str(model)}, {"keras": model.stat().st_size}
    for fmt, quantize in VARIANTS[1:]:
        result = export_runs([model], format=fmt, quantize=quantize, out_dir=out / "export", artifacts_root=root)
        paths[_label(fmt, quantize)], sizes[_label(fmt, quantize)] = str(result.path), result.size_bytes
    return {"backbone": BACKBONE, "root": str(root), "source": source, "paths": paths, "sizes": sizes}


def run(options: Options) -> Result:
    calls = 5 if options.tiny else 30
    files = _upload_files(options.data, FIRST_BATCH + calls)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        flags = [str(options.data), "tiny" if options.tiny else "full", str(options.artifacts or "")]
        made = _child("prepare", tmp, *flags)
        root, uploads = made["root"], list(map(str, files))
        measured = {label: _child("probe", label, path, root, *uploads) for label, path in made["paths"].items()}
    reference = measured["keras"]["predicted"]
    rows = [
        {
            "runtime": label,
            "file MB": round(made["sizes"][label] / 2**20, 1),
            "peak RSS MB": m["rss_mb"],
            "VmHWM MB": m["hwm_mb"],
            "first classification s": m["first_s"],
            "process s": m["process_s"],
            "one upload p50 ms": m["p50_ms"],
            "TensorFlow loaded": m["tensorflow_loaded"],
            f"same {FIRST_BATCH} classes as Keras": m["predicted"] == reference,
        }
        for label, m in measured.items()
    ]
    figures = {}
    for label, m in measured.items():
        key = label.replace("-", "_")
        figures.update({f"{key}_rss_mb": m["rss_mb"], f"{key}_first_s": m["first_s"], f"{key}_p50_ms": m["p50_ms"]})
    return Result(
        name="export",
        figures=figures,
        table=rows,
        settings={
            "backbone": made["backbone"],
            "input_size": options.input_size,
            "uploads": len(files),
            "model": made["source"],
        },
        notes=[
            f"model: {made['source']}; each runtime in a fresh process: {FIRST_BATCH} uploads in one call, "
            f"then {calls} one at a time",
            "first classification: from before the probe's first engine import to the end of its first call; "
            "peak RSS is ru_maxrss, VmHWM the kernel's high-water mark of the probe's own memory",
        ],
    )


def _upload_files(data: Path, count: int) -> list[Path]:
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    chosen = np.random.default_rng(0).choice(len(files), min(count, len(files)), replace=False)
    return [files[i] for i in chosen]


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main(argv: list[str]) -> dict:
    command, *args = argv
    if command == "prepare":
        out, data, size, artifacts = args
        options = Options(data=Path(data), tiny=size == "tiny", artifacts=Path(artifacts) if artifacts else None)
        return prepare(options, Path(out))
    kind, model, root, *uploads = args
    return probe(kind, Path(model), Path(root), [Path(u) for u in uploads])


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])), flush=True)
