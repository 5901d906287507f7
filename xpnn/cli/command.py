"""The ``xpnn`` command itself: the argument parser with each subcommand's options, and main(),
which runs a subcommand and turns what goes wrong into an exit code and one line."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any, Sequence

from .. import __version__, backend, zoo
from ..optim import OPTIMIZERS
from .dataset import DEFAULT_IMAGE_SIZE, NAMED_DATA, SAMPLE
from .devices import cmd_devices
from .errors import CLIError, one_line
from .evaluate import cmd_evaluate
from .export import cmd_export
from .info import cmd_info
from .predict import cmd_predict
from .settings import DEFAULTS, PRECISIONS, SCHEDULES
from .train import cmd_train


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _sample_shape(text: str) -> tuple[int, ...]:
    """``C,H,W`` (or ``FEATURES``): one sample's shape, positive integers."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, like 3,64,64, got {text!r}")
    return shape


def _number_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Any:
    """An argparse type: a float in the interval, its bounds open or closed as asked."""
    shown = f"{'(' if low_open else '['}{low:g}, {'inf' if high == float('inf') else f'{high:g}'}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not inside:
            raise argparse.ArgumentTypeError(f"expected a number in {shown}, got {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default=None,
                        help="cpu, gpu:N or auto (a GPU if there is one); default $XPNN_DEVICE, else auto")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = argparse.ArgumentParser(prog="xpnn", description="Train, evaluate and run xpnn image classifiers.",
                                     epilog="Exit codes: 0 ok, 1 training diverged, 2 usage or input error, "
                                            "130 interrupted.")
    parser.add_argument("--version", action="version", version=f"xpnn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser("train", parents=[common], help="train a network and write a run folder",
                           description="Train an image classifier. With no arguments: the 2-conv Fashion CNN on "
                                       "the Fashion-MNIST sample shipped with xpnn.")
    train.add_argument("--data", help=f"an image folder (root/<class>/<image>, optionally root/train and root/test), "
                                      f"a folder of MNIST-format IDX files, or {', '.join(NAMED_DATA)} "
                                      f"(default {SAMPLE})")
    train.add_argument("--model", choices=list(zoo.MODELS), help="network (default cnn)")
    train.add_argument("--image-size", type=_positive, metavar="SIZE", help=f"image folders: resize to SIZE x SIZE "
                                                      f"(default {DEFAULT_IMAGE_SIZE})")
    train.add_argument("--color", choices=["rgb", "gray"], help="image folders: color mode (default rgb)")
    train.add_argument("--epochs", type=_positive, metavar="N", help=f"total epochs (default {DEFAULTS['epochs']})")
    train.add_argument("--batch-size", type=_positive, metavar="N", help=f"default {DEFAULTS['batch_size']}")
    train.add_argument("--lr", type=float, help="learning rate (default: the optimizer's, 0.001 for adam)")
    train.add_argument("--optimizer", choices=list(OPTIMIZERS),
                       help="default adam")
    train.add_argument("--weight-decay", type=_number_in(0.0, float("inf"), high_open=True), metavar="W",
                       help="the optimizer's weight decay (default: the optimizer's, 0.01 for adamw, else 0)")
    train.add_argument("--schedule", choices=list(SCHEDULES),
                       help="learning rate per update: constant, step (x0.1 every third of the epochs) or cosine "
                            "(to 0 at the last epoch) (default constant)")
    train.add_argument("--warmup-epochs", type=_number_in(0.0, float("inf"), high_open=True), metavar="E",
                       help="ramp the learning rate up linearly over the first E epochs (fractions allowed), with "
                            "any --schedule (default 0)")
    train.add_argument("--clip-norm", type=_number_in(0.0, float("inf"), low_open=True, high_open=True), metavar="X",
                       help="scale the gradients so their global L2 norm is at most X (global_clipnorm; default off)")
    train.add_argument("--label-smoothing", type=_number_in(0.0, 1.0), metavar="S",
                       help="train against targets y*(1-S) + S/classes (default 0)")
    train.add_argument("--class-weight", choices=["balanced"],
                       help="weigh each image's loss by n_images / (classes * images of its class) (default off)")
    train.add_argument("--plateau", type=_positive, metavar="PATIENCE",
                       help="multiply the learning rate by 0.1 when the validation loss (the training loss without "
                            "validation) has not improved for PATIENCE epochs (default off)")
    train.add_argument("--precision", choices=list(PRECISIONS),
                       help="float32 (default), or 16-bit compute with float32 weights: mixed_bfloat16, mixed_float16 "
                            "(with dynamic loss scaling); see xpnn.set_dtype_policy")
    train.add_argument("--seed", type=int, help="seed for weights, shuffling and splits (default 0)")
    train.add_argument("--augment", action="store_true", default=None,
                       help="random flips and crops (and brightness/contrast for color images)")
    train.add_argument("--val-split", type=_fraction, metavar="F",
                       help="fraction of the training images held out for validation curves (default 0.1; 0 for none)")
    train.add_argument("--limit", type=_positive, metavar="N",
                       help="use only the first N training and N test images (quick trials)")
    train.add_argument("--out", metavar="DIR", help="output folder (default runs/<date>-<time>)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    train.add_argument("--init-from", metavar="MODEL.npz",
                       help="start from every weight of MODEL.npz whose path and shape match the new model (fine-tuning: "
                            "a new head for another number of classes stays freshly initialised)")
    train.add_argument("--freeze", action="store_true", default=None,
                       help="with --init-from: train only what was not loaded (the loaded layers stay frozen)")
    train.add_argument("--quiet", action="store_true", help="one log line per epoch instead of a progress bar")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", parents=[common], help="accuracy, precision/recall, confusion matrix",
                              description="Evaluate a model file on a data set (default: the test part of the data "
                                          "it was trained on).")
    evaluate.add_argument("model", help="a model.npz or checkpoint.npz")
    evaluate.add_argument("--data", help="as for train; an image folder without train/test subfolders is used whole")
    evaluate.add_argument("--batch-size", type=_positive, default=256)
    evaluate.add_argument("--limit", type=_positive, help="use only the first N images")
    evaluate.add_argument("--out", help="also write confusion_matrix.png/txt into this folder")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(func=cmd_evaluate)

    pred = sub.add_parser("predict", parents=[common], help="classify image files",
                          description="Classify image files, loaded at the size and color the model was trained on.")
    pred.add_argument("model", help="a model.npz or checkpoint.npz")
    pred.add_argument("images", nargs="+", metavar="IMAGE")
    pred.add_argument("--top-k", type=_positive, default=1, help="show the K most likely classes (default 1)")
    pred.add_argument("--batch-size", type=_positive, default=256)
    pred.add_argument("--json", action="store_true", help="print JSON")
    pred.set_defaults(func=cmd_predict)

    devices = sub.add_parser("devices", parents=[common], help="array libraries, GPUs and what auto picks")
    devices.add_argument("--json", action="store_true", help="print JSON")
    devices.set_defaults(func=cmd_devices)

    info = sub.add_parser("info", parents=[common], help="architecture and training metadata of a model file")
    info.add_argument("model", help="a model.npz or checkpoint.npz")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--batch-size", type=_positive, default=None, metavar="N",
                      help="also estimate the training memory of a step of N samples (with the file's optimizer)")
    info.set_defaults(func=cmd_info)

    export = sub.add_parser("export", parents=[common], help="write a model file as ONNX (for onnxruntime and others)",
                            description="Export a model file's inference graph to ONNX, checked before it is written; "
                                        "classes and preprocessing go into its metadata. Needs: pip install "
                                        "\"xpnn[onnx]\".")
    export.add_argument("model", help="a model.npz or checkpoint.npz")
    export.add_argument("onnx", metavar="MODEL.onnx", help="the file to write")
    export.add_argument("--opset", type=_positive, default=17, metavar="N", help="ONNX opset (default 17)")
    export.add_argument("--force", action="store_true", help="replace MODEL.onnx if it exists")
    export.add_argument("--input-shape", type=_sample_shape, metavar="C,H,W",
                        help="one input sample's shape, for a model file that does not record it")
    export.set_defaults(func=cmd_export)
    return parser


def _format_warning(message: Any, category: Any, filename: str, lineno: int, line: str | None = None) -> str:
    return f"xpnn: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xpnn`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = argparse.Namespace(debug=False)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        warnings.formatwarning = _format_warning
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("\nxpnn: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if args.debug:
            raise
        print("xpnn: error: out of memory: this needs more memory than is free; smaller data, images or batches "
              "need less", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CLIError, ValueError, OSError, backend.DeviceError) as exc:
        if args.debug:
            raise
        print(f"xpnn: error: {one_line(exc)}", file=sys.stderr)
        return 2
