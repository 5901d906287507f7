"""The tutorials' L-layer cat classifier, [n, 20, 7, 5, 1], trained on a two-class image folder.

    python examples/cat_mlp.py                                        # stand-in: Sneaker vs Ankle boot
    python examples/cat_mlp.py --data path/to/folder --size 64        # e.g. cat/ and non-cat/ subfolders

The network is ``xpnn.zoo.tutorial_mlp``: flattened pixels, ReLU hidden layers of 20, 7 and 5
units with the tutorials' scaled-normal initialization, and one logit with binary cross-entropy.
``--data`` is a folder with one subfolder per class (two classes); 20% of it is held out for the
test. Without ``--data`` the example writes the shipped Fashion-MNIST sample's "Sneaker" and
"Ankle boot" images (1,400 gray 28x28 pictures) as PNG files into a temporary folder and reads them
back with ImageFolder, exactly as it would read a folder of photos.
"""
from __future__ import annotations

import math
import tempfile

from PIL import Image

import _common
from xpnn import optim, zoo

STAND_IN = {"ankle_boot": "Ankle boot", "sneaker": "Sneaker"}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = _common.parser(__doc__.split("\n")[0], epochs=20, batch_size=32, lr=0.0075,
                       data_help="folder with one subfolder per class (default: Sneaker vs Ankle boot PNGs)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: 28, or 64 with --data)")
    p.add_argument("--color", choices=("rgb", "gray"), default=None, help="(default: gray, or rgb with --data)")
    args = p.parse_args(argv)
    _common.start(args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            path = _common.write_sample_folder(tmp, STAND_IN, lambda pixels, rng: Image.fromarray(pixels, "L"))
            size, color = args.size or 28, args.color or "gray"
        else:
            path, size, color = args.data, args.size or 64, args.color or "rgb"
        (x, y), (x_test, y_test), classes = _common.load_folder(path, size, color, args.seed)
    if len(classes) != 2:
        raise SystemExit(f"cat_mlp needs exactly two classes, found {len(classes)}: {', '.join(classes)}")
    x, y = _common.limit(x, y, args.limit)
    model = zoo.tutorial_mlp(math.prod(x.shape[1:]), classes=2)
    model.summary(input_shape=x.shape[1:])
    history = model.fit(x, y, loss=zoo.loss_for(model), optimizer=optim.SGD(lr=args.lr, momentum=0.9),
                        epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, scale="unit",
                        verbose=args.verbose)
    result = model.evaluate(x_test, y_test, scale="unit")
    _common.report(history, result, len(x_test))
    return result


if __name__ == "__main__":
    main()
