"""Two CNNs for 28x28 gray images: the from-scratch tutorial's, and a stronger two-conv network.

    python examples/mnist_cnn.py                                    # 2-conv CNN, shipped Fashion-MNIST sample
    python examples/mnist_cnn.py --model tutorial                   # Conv3x3(8) -> MaxPool2 -> softmax
    python examples/mnist_cnn.py --data fashion --epochs 15 --augment flip    # full Fashion-MNIST
    python examples/mnist_cnn.py --model cnn-bn --data fashion --epochs 15 --augment flip   # with BatchNorm
    python examples/mnist_cnn.py --data mnist                       # MNIST digits, if installed (do not flip)

``--model tutorial`` is ``xpnn.zoo.tutorial_cnn``: eight valid 3x3 filters, 2x2 max-pooling and a
linear layer into a softmax (fused into the cross-entropy), trained with SGD and momentum.
``--model cnn`` is ``xpnn.zoo.fashion_cnn``: two 'same' 3x3 convolutions (32 and 64 filters), each
with ReLU and 2x2 max-pooling, Linear(3136 -> 128), ReLU, Dropout(0.3), Linear(128 -> 10), trained
with AdamW (weight decay 0.05), a cosine learning rate and batches of 64: with ``--augment flip`` this
is the recipe of ``benchmarks/fashion_accuracy.py``. ``--model cnn-bn`` is the same network with a
BatchNorm2D after each (then bias-free) convolution: the one that clears 92.5% on the full test
set. Inputs are standardized with the training set's mean and std. Random crops (``--augment crop``)
cost accuracy in 15 epochs on Fashion-MNIST.

``--data``: ``sample`` (the shipped 6,000/1,000 Fashion-MNIST sample), ``fashion`` or ``mnist`` (the
full sets, from local files; see ``xpnn.datasets``), or a folder holding the four IDX files.
"""
from __future__ import annotations

import _common
import xpnn
from xpnn import optim, zoo
from xpnn.data import channel_stats

def cosine_adamw(lr: float, epochs: int) -> optim.AdamW:
    """The CNNs' optimizer: AdamW (weight decay 0.05) with a cosine learning rate over ``epochs``."""
    return optim.AdamW(lr=optim.CosineDecay(lr, epochs), weight_decay=0.05)


#: per-model defaults: epochs, learning rate, and the optimizer for a given lr and epoch count
MODELS = {
    "tutorial": {"build": zoo.tutorial_cnn, "epochs": 5, "lr": 0.01,
                 "optimizer": lambda lr, epochs: optim.SGD(lr=lr, momentum=0.9)},
    "cnn": {"build": lambda: zoo.fashion_cnn(dropout=0.3), "epochs": 3, "lr": 1e-3, "optimizer": cosine_adamw},
    "cnn-bn": {"build": lambda: zoo.fashion_cnn(dropout=0.3, batch_norm=True), "epochs": 3, "lr": 1e-3,
               "optimizer": cosine_adamw},
}
AUGMENT = {"none": (0, False), "crop": (2, False), "flip": (0, True), "crop+flip": (2, True)}


def load(data: str) -> tuple:
    if data == "sample":
        return xpnn.datasets.fashion_mnist_sample()
    if data == "fashion":
        return xpnn.datasets.fashion_mnist()
    if data == "mnist":
        return xpnn.datasets.mnist()
    return xpnn.datasets.mnist(root=data)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = _common.parser(__doc__.split("\n")[0], epochs=None, batch_size=64, lr=None,
                       data_help="sample, fashion, mnist, or a folder with the four IDX files")
    p.set_defaults(data="sample")
    p.add_argument("--model", choices=sorted(MODELS), default="cnn")
    p.add_argument("--augment", choices=sorted(AUGMENT), default="none",
                   help="random crops of images padded by 2 pixels and/or left-right flips")
    args = p.parse_args(argv)
    recipe = MODELS[args.model]
    epochs, lr = args.epochs or recipe["epochs"], args.lr or recipe["lr"]
    _common.start(args)
    (x, y), (x_test, y_test) = load(args.data)
    x, y = _common.limit(x, y, args.limit)
    stats = channel_stats(x)
    model = recipe["build"]()
    model.summary(input_shape=x.shape[1:])
    padding, flip = AUGMENT[args.augment]
    history = model.fit(x, y, loss="cross_entropy", optimizer=recipe["optimizer"](lr, epochs), epochs=epochs,
                        batch_size=args.batch_size, seed=args.seed, scale=stats,
                        transform=_common.augmentation(stats, x.shape[-1], padding, flip), verbose=args.verbose)
    result = model.evaluate(x_test, y_test, scale=stats)
    _common.report(history, result, len(x_test))
    return result


if __name__ == "__main__":
    main()
