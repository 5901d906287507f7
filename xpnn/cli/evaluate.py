"""``xpnn evaluate``: accuracy, precision/recall and the confusion matrix of a model file on a
data set (by default the test part of the data it was trained on)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import metrics
from ..files import json_text
from .dataset import NAMED_DATA, data_spec, is_idx_folder, load_data
from .environment import select_device
from .errors import CLIError
from .model_file import check_fits, class_names, input_spec, load_model
from .reporting import model_scores, write_confusion


def cmd_evaluate(args: argparse.Namespace) -> int:
    device, _ = select_device(args.device)
    model = load_model(args.model, device)
    meta = model.metadata
    trained_on = (meta.get("settings") or {}).get("data")
    if args.data is None and trained_on is None:
        raise CLIError("pass --data: this model file does not say what data it was trained on")
    spec = data_spec(args.data) if args.data is not None else trained_on
    spec_input = input_spec(model)
    named = spec in NAMED_DATA or is_idx_folder(Path(spec))
    data = load_data(spec, None if named else spec_input["size"][0], None if named else spec_input["color"],
                     (meta.get("settings") or {}).get("seed", 0), classes=None if named else class_names(model),
                     split=spec == trained_on)
    x, y = data.test
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    check_fits(model, data, x)
    probs = model_scores(model, x, args.batch_size)
    cm = metrics.confusion_matrix(y, probs.argmax(axis=1), len(data.classes))
    precision, recall, support = metrics.precision_recall(cm)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_confusion(cm, data.classes, out, f"confusion matrix ({len(y)} images)")
    if args.json:
        print(json_text({"model": args.model, "data": data.source, "images": len(y), "accuracy": metrics.accuracy(cm),
                          "classes": data.classes, "precision": precision.tolist(), "recall": recall.tolist(),
                          "support": support.tolist(), "confusion_matrix": cm.tolist()}, indent=1))
        return 0
    print(f"{args.model} on {data.source} ({len(y)} images)")
    print(metrics.format_confusion_matrix(cm, data.classes))
    print()
    print(metrics.classification_report(cm, data.classes))
    print(f"accuracy: {metrics.accuracy(cm):.4f}")
    return 0
