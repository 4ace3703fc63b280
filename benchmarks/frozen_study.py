"""Wall time of a cold and a warm 5-fold frozen study of MobileNet 1.0 (``engine.training.runner.run_study``).

Cold: a fresh artifacts folder, so the dataset is imported, the pooled features computed and
every fold trained and saved. Warm: the same request on the same folder, where every fold is
found on disk; that is what a user pays to reopen or extend a study.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.harness import Options, Result, stopwatch
from engine.training.presets import FROZEN
from engine.training.runner import run_study
from engine.training.study import StudyRequest

BACKBONE = "MobileNet"


def run(options: Options) -> Result:
    protocol = FROZEN.replace(epochs=2) if options.tiny else FROZEN
    n_folds = 2 if options.tiny else 5
    request = StudyRequest(protocol=protocol, n_folds=n_folds, weights=options.weights)
    with tempfile.TemporaryDirectory(prefix="bench-frozen-") as tmp:
        root = options.artifacts or Path(tmp)
        with stopwatch() as cold:
            study = run_study(
                options.data, backbones=[BACKBONE], request=request, input_size=options.input_size, artifacts_root=root
            )
        with stopwatch() as warm:
            run_study(
                options.data, backbones=[BACKBONE], request=request, input_size=options.input_size, artifacts_root=root
            )
    return Result(
        name="frozen_study",
        figures={"frozen_study_cold_s": round(cold(), 2), "frozen_study_warm_s": round(warm(), 3)},
        table=[
            {"study": "cold (fresh artifacts folder)", "seconds": cold()},
            {"study": "warm (same folder again)", "seconds": warm()},
        ],
        settings={
            "backbone": BACKBONE,
            "protocol": protocol.name,
            "epochs": protocol.epochs,
            "n_folds": n_folds,
            "input_size": options.input_size,
            "weights": options.weights,
            "images": study.dataset.n_images,
        },
        notes=[f"{study.dataset.n_images} images, {n_folds} folds, {protocol.epochs} head epochs per fold"],
    )
