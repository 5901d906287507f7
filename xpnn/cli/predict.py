"""``xpnn predict``: classify image files, loaded at the size and color the model was trained on."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..files import json_text
from .environment import select_device
from .errors import CLIError
from .model_file import class_names, input_spec, load_model
from .reporting import model_scores


def cmd_predict(args: argparse.Namespace) -> int:
    from ..data.images import load_image
    device, _ = select_device(args.device)
    model = load_model(args.model, device)
    spec, classes = input_spec(model), class_names(model)
    for image in args.images:
        if not Path(image).exists():
            raise CLIError(f"image {image} does not exist")
        if not Path(image).is_file():
            raise CLIError(f"image {image} is not a regular file (a folder, a FIFO or a device)")
    x = np.stack([load_image(image, size=tuple(spec["size"]), color=spec["color"]) for image in args.images])
    probs = model_scores(model, x, args.batch_size)
    k = min(args.top_k, len(classes))
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    results = [{"image": image, "predictions": [{"class": classes[j], "index": int(j), "probability": float(p[j])}
                                                for j in row]}
               for image, p, row in zip(args.images, probs, top)]
    if args.json:
        print(json_text(results, indent=1))
        return 0
    width = max(len(image) for image in args.images)
    for result in results:
        guesses = "  ".join(f"{g['class']} {g['probability']:.3f}" for g in result["predictions"])
        print(f"{result['image']:<{width}}  {guesses}")
    return 0
