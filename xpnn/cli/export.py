"""``xpnn export``: a model file's inference graph as ONNX, with its classes and preprocessing
(onnx is imported only when this command runs)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..io import load
from .errors import CLIError
from .model_file import class_names, input_spec, require_model_file


def cmd_export(args: argparse.Namespace) -> int:
    from ..onnx_export import export_onnx
    require_model_file(args.model)
    out = Path(args.onnx)
    if out.exists() and not args.force:
        raise CLIError(f"{out} exists; pass --force to replace it")
    model = load(args.model, "cpu")
    if args.input_shape:
        model.build(args.input_shape)
    elif model.input_shape is None:
        raise CLIError(f"{args.model} does not record the shape of the model's input: pass --input-shape C,H,W "
                       f"(one sample, no batch axis; for a dense model the feature count)")
    try:
        preprocessing = input_spec(model)
    except CLIError:  # not an image model: the file says what it can
        preprocessing = None
    try:
        export_onnx(model, out, args.opset, classes=class_names(model), preprocessing=preprocessing)
    except ImportError as exc:
        raise CLIError(str(exc)) from exc
    print(f"wrote {out} ({out.stat().st_size:,} bytes, ONNX opset {args.opset})")
    return 0
