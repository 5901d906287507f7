"""``xpnn export``: a model file's inference graph as ONNX, with its classes and preprocessing
(onnx is imported only when this command runs)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .errors import CLIError
from .model_file import class_names, input_spec, load_model, require_model_file


def _is_onnx_file(path: Path) -> bool:
    """Whether ``path`` holds an ONNX model (an IR version and a graph): the only file --force replaces."""
    from ..onnx_export import INSTALL_HINT
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError as exc:
        raise CLIError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from exc
    if not path.is_file():
        return False
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError):
        return False
    return proto.ir_version > 0 and proto.HasField("graph")


def _check_output(model: Path, out: Path, force: bool) -> None:
    """Never write over the model file itself, nor, even with --force, over a file that is not ONNX."""
    if not (out.exists() or out.is_symlink()):
        return
    if out.exists() and os.path.samefile(out, model):
        raise CLIError(f"{out} is the model file it exports; name the ONNX file to write, such as "
                       f"{model.with_suffix('.onnx')}")
    if not force:
        raise CLIError(f"{out} exists; pass --force to replace it")
    if not _is_onnx_file(out):
        raise CLIError(f"{out} exists and is not an ONNX file; --force replaces only an ONNX file: move it aside "
                       f"or choose another name")


def cmd_export(args: argparse.Namespace) -> int:
    from ..onnx_export import export_onnx
    require_model_file(args.model)
    out = Path(args.onnx)
    _check_output(Path(args.model), out, args.force)
    model = load_model(args.model, "cpu")
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
