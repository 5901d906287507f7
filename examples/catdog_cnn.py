"""The cat/dog CNN: RGB photos in two class folders, three conv layers, Adam; made for a GPU.

    python examples/catdog_cnn.py --data path/to/folder --device gpu:0     # cats/ and dogs/ subfolders
    python examples/catdog_cnn.py                                          # a small CPU stand-in, below

The network is ``xpnn.zoo.catdog_cnn``: three valid 3x3 convolutions (32, 64, 128 filters), each
with ReLU and 2x2 max-pooling, then Linear(-> 256), ReLU and one logit (binary cross-entropy).
Images are read with ImageFolder at ``--size`` (128x128 by default for ``--data``, decoded once
and cached next to the photos), 20% are held out for the test, inputs are standardized per
channel, and training uses Adam with random crops and left-right flips.

Stand-in: without ``--data`` the example writes the shipped Fashion-MNIST sample's "Sandal" and
"Sneaker" images (1,400 pictures) as RGB PNG files into a temporary folder, each 28x28 gray image
tinted with a random colour (drawn independently of the class, so colour says nothing about it),
and reads them back upscaled to 32x32 (``--size``) so that the example runs on any CPU in a minute
or two. It stands in for the data path and the network; it is not a cat/dog result.
"""
from __future__ import annotations

import tempfile

import numpy as np
from PIL import Image

import _common
from xpnn import optim, zoo
from xpnn.data import channel_stats

STAND_IN = {"sandal": "Sandal", "sneaker": "Sneaker"}


def tinted(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A gray image as RGB, multiplied by a random colour."""
    colour = rng.uniform(0.35, 1.0, size=3)
    return Image.fromarray(np.round(pixels[..., None] * colour).astype(np.uint8), "RGB")


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = _common.parser(__doc__.split("\n")[0], epochs=4, batch_size=64, lr=1e-3,
                       data_help="folder with one subfolder per class, e.g. cats/ and dogs/ (default: a stand-in)")
    p.add_argument("--size", type=int, default=None,
                   help="image side in pixels (default: 128, or 32 for the stand-in)")
    args = p.parse_args(argv)
    _common.start(args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            path, size = _common.write_sample_folder(tmp, STAND_IN, tinted, seed=args.seed), args.size or 32
        else:
            path, size = args.data, args.size or 128
        (x, y), (x_test, y_test), classes = _common.load_folder(path, size, "rgb", args.seed,
                                                                cache=args.data is not None)
    x, y = _common.limit(x, y, args.limit)
    stats = channel_stats(x)
    model = zoo.catdog_cnn(size, channels=3, classes=len(classes))
    model.summary(input_shape=x.shape[1:])
    history = model.fit(x, y, loss=zoo.loss_for(model), optimizer=optim.Adam(lr=args.lr), epochs=args.epochs,
                        batch_size=args.batch_size, seed=args.seed, scale=stats,
                        transform=_common.augmentation(stats, size, padding=size // 8), verbose=args.verbose)
    result = model.evaluate(x_test, y_test, scale=stats)
    _common.report(history, result, len(x_test))
    return result


if __name__ == "__main__":
    main()
