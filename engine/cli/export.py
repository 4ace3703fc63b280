"""``python -m engine export``: a saved model, or a backbone's fold ensemble, as one LiteRT or ONNX file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine import settings
from engine.cli.main import add_artifacts


def _model_paths(args: argparse.Namespace) -> list:
    from engine.models.export import study_models

    if args.model and args.study:
        raise ValueError(f"give --model or --study, not both, got --model={args.model!r} --study={args.study!r}")
    if args.study:
        if not args.backbone:
            raise ValueError(f"--study needs --backbone NAME, the fold models' backbone, got --study={args.study!r}")
        return study_models(args.study, args.backbone, args.artifacts or settings.artifacts_dir())
    if not args.model:
        raise ValueError("give --model PATH (a model.keras) or --study ID --backbone NAME")
    return [args.model]


def _export_ensemble(args: argparse.Namespace) -> int:
    """Each backbone's fold ensemble exported (those already exported in float are kept), then the manifest that
    serves them as one model, and its card."""
    from engine.evaluation.predictions import backbones_of
    from engine.models.backbone_ensemble import require_backbones, write_manifest
    from engine.models.catalog import members_export
    from engine.models.export import export_runs, study_models
    from engine.models.runtime import FORMATS
    from engine.reports.model_card import write_model_card
    from engine.results import artifacts

    if args.quantize or args.out:
        raise ValueError(
            "an ensemble of backbones is served from its members' float exports: leave out --quantize and --out"
        )
    if args.format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}, got format={args.format!r}")
    root = args.artifacts or settings.artifacts_dir()
    backbones = backbones_of(args.study, root)
    require_backbones(args.study, backbones)
    exports = {}
    for backbone in backbones:
        folder = artifacts.study_dir(args.study, root) / "runs" / backbone / "export"
        found = members_export(folder, (), float_only=True)
        if found is None or found[0].suffix != FORMATS[args.format]:
            result = export_runs(
                study_models(args.study, backbone, root),
                format=args.format,
                artifacts_root=args.artifacts,
                data=args.data,
            )
            write_model_card(result.path, args.artifacts)
            found = (result.path, ())
        exports[backbone] = found[0]
        print(f"{backbone}: {found[0]}")
    manifest = write_manifest(args.study, exports, root)
    _, card_md = write_model_card(manifest, args.artifacts)
    print(f"wrote {manifest} (an ensemble of {', '.join(exports)}); model card {card_md} (and .json)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.evaluation.predictions import ENSEMBLE
    from engine.models.export import INT8_MIN_AGREEMENT, export_runs
    from engine.reports.model_card import write_model_card

    if args.study and args.backbone == ENSEMBLE:
        return _export_ensemble(args)

    result = export_runs(
        _model_paths(args),
        format=args.format,
        quantize=args.quantize,
        out_dir=args.out,
        artifacts_root=args.artifacts,
        data=args.data,
    )
    card_json, card_md = write_model_card(result.path, args.artifacts)
    check = result.meta["parity"]
    if result.meta["quantization"] and check and check["argmax_agreement"] < INT8_MIN_AGREEMENT:
        print(
            f"warning: on {check['images']} held-out images, the int8 file gives another class than the float "
            f"model for {1 - check['argmax_agreement']:.1%} (over {1 - INT8_MIN_AGREEMENT:.0%}); prefer the float "
            "export (--quantize left out)",
            file=sys.stderr,
        )
    if args.json:
        found = {"path": str(result.path), "sidecar": str(result.sidecar), "model_card": str(card_json), **result.meta}
        print(json.dumps(found, indent=2))
        return 0
    meta = result.meta
    members = ", ".join(f"fold {m['fold']}" for m in meta["members"])
    precision = meta["quantization"]["mode"] if meta["quantization"] else "float32"
    print(f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MB, {meta['format']}, {precision}; {members})")
    print(f"sidecar {result.sidecar}; model card {card_md} (and .json)")
    if check:
        print(
            f"against Keras on {check['images']} held-out images: max |dp| {check['max_abs_dp']:.2g}, "
            f"argmax agreement {check['argmax_agreement']:.1%}"
        )
    else:
        print("no parity check: the study's images are not cached here (pass --data)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``python -m engine`` parser."""
    p = sub.add_parser("export", help="export a trained model (or a fold ensemble) to LiteRT or ONNX")
    p.add_argument("--model", default=None, help="a model.keras of a finished run in the artifacts folder")
    p.add_argument("--study", default=None, help="a study id: export every saved fold model of --backbone together")
    p.add_argument(
        "--backbone",
        default=None,
        help="with --study: the backbone whose fold models form the ensemble, or 'ensemble': every backbone's "
        "exported fold ensemble served as one (a manifest beside them, no file written twice)",
    )
    p.add_argument("--format", default="litert", help="litert (.tflite, default) or onnx (.onnx)")
    p.add_argument("--quantize", default=None, help="int8: post-training quantization on training images")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the study's dataset folder, if not cached in artifacts",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: export/ beside the model)")
    p.add_argument("--json", action="store_true", help="print the sidecar as JSON")
    add_artifacts(p)
    p.set_defaults(func=cmd_export)
