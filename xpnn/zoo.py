"""Ready-made networks for NCHW images, by name: what ``xpnn train --model NAME`` builds.

Every builder returns an untrained :class:`~xpnn.Sequential` ending in logits: one output per
class, or a single logit for two classes where the network is the tutorials' binary one, built
for the input it was made for (``model.input_shape``: ``(C, H, W)``, or ``(n_in,)`` for the MLPs), so
it exports to ONNX and prints its summary as it is. Pair
it with :func:`loss_for` (cross-entropy from logits). Weights are drawn from xpnn's seeded host
generator, so ``xpnn.seed(n)`` fixes them on every device.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from .layers import Conv2D, Dropout, Flatten, Layer, Linear, MaxPool2D, ReLU, Residual
from .layers.normalization import BatchNorm2D
from .layers.pool import GlobalAvgPool2D
from .losses import Loss, get_loss
from .model import Sequential, mlp

__all__ = ["fashion_cnn", "tutorial_cnn", "catdog_cnn", "catdog_bn_cnn", "resnet", "tutorial_mlp", "dense_mlp", "MODELS",
           "build", "loss_for"]


def _built(model: Sequential, input_shape: Sequence[int]) -> Sequential:
    """``model``, checked for and remembering samples of ``input_shape``."""
    model.build(input_shape)
    return model


def _check_size(name: str, image_size: int, factor: int) -> None:
    if image_size < factor or image_size % factor:
        raise ValueError(f"model {name!r} needs an image size that is a multiple of {factor}, got {image_size}")


def fashion_cnn(classes: int = 10, channels: int = 1, image_size: int = 28, dropout: float = 0.0,
                batch_norm: bool = False) -> Sequential:
    """Two 3x3 'same' convolutions (32, 64 filters), each ReLU + 2x2 max-pool, then Linear(->128), ReLU,
    Linear(->classes). For 28x28 Fashion-MNIST the flattened features are 64*7*7 = 3136.

    ``batch_norm=True`` puts a BatchNorm2D between each convolution (then without bias, which the
    normalization would cancel) and its ReLU; ``dropout`` goes before the last Linear layer."""
    _check_size("cnn-bn" if batch_norm else "cnn", image_size, 4)
    features = 64 * (image_size // 4) ** 2
    head: list[Layer] = [Dropout(dropout)] if dropout else []
    blocks: list[Layer] = []
    for c_in, c_out in ((channels, 32), (32, 64)):
        blocks.append(Conv2D(c_in, c_out, 3, padding="same", bias=not batch_norm))
        blocks += [BatchNorm2D(c_out)] if batch_norm else []
        blocks += [ReLU(), MaxPool2D(2)]
    return _built(Sequential([*blocks, Flatten(), Linear(features, 128), ReLU(), *head, Linear(128, classes)]),
                  (channels, image_size, image_size))


def tutorial_cnn(classes: int = 10, channels: int = 1, image_size: int = 28) -> Sequential:
    """The from-scratch CNN tutorial's network: Conv3x3(8 filters, valid) -> MaxPool2 -> Linear ->
    softmax (fused into the loss). For 28x28 inputs the Linear layer sees 13*13*8 = 1352 features."""
    side = (image_size - 2) // 2
    if side < 1:
        raise ValueError(f"model 'tutorial-cnn' needs images of at least 4x4, got {image_size}")
    return _built(Sequential([Conv2D(channels, 8, 3), MaxPool2D(2), Flatten(), Linear(8 * side * side, classes)]),
                  (channels, image_size, image_size))


def catdog_cnn(image_size: int = 128, channels: int = 3, classes: int = 2) -> Sequential:
    """The cat/dog CNN of the benchmarks and examples: three valid 3x3 convolutions (32, 64, 128
    filters), each ReLU + 2x2 max-pool, then Linear(->256), ReLU and one logit for two classes
    (else one per class). At 64x64 the flattened features are 128*6*6 = 4608; at 128x128, 25088."""
    side = image_size
    for _ in range(3):
        side = (side - 2) // 2
    if side < 1:
        raise ValueError(f"model 'catdog' needs images of at least 22x22, got {image_size}")
    layers: list[Layer] = []
    for c_in, c_out in zip((channels, 32, 64), (32, 64, 128)):
        layers += [Conv2D(c_in, c_out, 3), ReLU(), MaxPool2D(2)]
    out = 1 if classes == 2 else classes
    return _built(Sequential([*layers, Flatten(), Linear(128 * side * side, 256), ReLU(), Linear(256, out)]),
                  (channels, image_size, image_size))


def catdog_bn_cnn(image_size: int = 64, channels: int = 3, classes: int = 2) -> Sequential:
    """Four conv blocks (Conv3x3 same, BatchNorm, ReLU, MaxPool2; 32-64-128-128 filters), global
    average pooling, Dropout(0.3) and Linear(128->classes): a photo classifier whose size does not
    grow with the image (any multiple of 16)."""
    _check_size("catdog-bn", image_size, 16)
    layers: list[Layer] = []
    widths = (32, 64, 128, 128)
    for c_in, c_out in zip((channels, *widths[:-1]), widths):
        layers += [Conv2D(c_in, c_out, 3, padding="same", bias=False), BatchNorm2D(c_out), ReLU(), MaxPool2D(2)]
    return _built(Sequential([*layers, GlobalAvgPool2D(), Dropout(0.3), Linear(widths[-1], classes)]),
                  (channels, image_size, image_size))


def basic_block(c_in: int, c_out: int, stride: int = 1, checkpoint: bool = False) -> Residual:
    """ResNet's basic block: Conv3x3(stride)-BN-ReLU-Conv3x3-BN plus the shortcut, ReLU after the add.
    The shortcut is the identity, or a 1x1 Conv2D (same stride) + BN where the shape changes.
    ``checkpoint=True``: the block keeps only its input for backward and runs again inside it."""
    body = [Conv2D(c_in, c_out, 3, stride=stride, padding=1, bias=False), BatchNorm2D(c_out), ReLU(),
            Conv2D(c_out, c_out, 3, padding=1, bias=False), BatchNorm2D(c_out)]
    shortcut = None if stride == 1 and c_in == c_out else \
        [Conv2D(c_in, c_out, 1, stride=stride, bias=False), BatchNorm2D(c_out)]
    return Residual(body, shortcut, activation=ReLU(), checkpoint=checkpoint)


def resnet(input_shape: Sequence[int], classes: int, widths: Sequence[int] = (32, 64, 128, 256),
           blocks: Sequence[int] = (1, 1, 1, 1), dropout: float = 0.2, checkpoint: bool = False) -> Sequential:
    """A ResNet for ``(C, H, W)`` images: a stem conv, one stage per width of ``blocks[i]`` basic
    blocks (every stage after the first starts with a stride-2 block and a projection shortcut),
    global average pooling, dropout and Linear(->classes).

    The stem is Conv3x3-BN-ReLU up to 64 px; from 112 px it is Conv7x7/2-BN-ReLU plus a 2x2
    max-pool, as in ResNet-18, so a 224x224 photo reaches the first stage at 56x56. The
    defaults have 1.2 M parameters; ``blocks=(2, 2, 2, 2)`` with widths (64, 128, 256, 512) is
    ResNet-18's layout. ``checkpoint=True`` checkpoints every block (:func:`xpnn.layers.checkpointed`):
    training keeps each block's input only, for one more forward pass of each block per step."""
    c, h, w = (int(d) for d in input_shape)
    if len(widths) != len(blocks) or not widths:
        raise ValueError(f"resnet needs one block count per width, got widths {tuple(widths)} and blocks {tuple(blocks)}")
    if any(int(n) < 1 for n in blocks) or any(int(n) < 1 for n in widths):
        raise ValueError(f"resnet widths and block counts must be positive, got {tuple(widths)} and {tuple(blocks)}")
    if min(h, w) < 8:
        raise ValueError(f"model 'resnet' needs images of at least 8x8, got {h}x{w}")
    if min(h, w) >= 112:
        stem: list[Layer] = [Conv2D(c, widths[0], 7, stride=2, padding=3, bias=False), BatchNorm2D(widths[0]), ReLU(),
                             MaxPool2D(2)]
    else:
        stem = [Conv2D(c, widths[0], 3, padding="same", bias=False), BatchNorm2D(widths[0]), ReLU()]
    stages: list[Layer] = []
    c_in = widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks)):
        for index in range(int(count)):
            stride = 2 if stage > 0 and index == 0 else 1
            stages.append(basic_block(c_in, int(width), stride, checkpoint))
            c_in = int(width)
    head: list[Layer] = [GlobalAvgPool2D(), *([Dropout(dropout)] if dropout else []), Linear(c_in, classes)]
    return _built(Sequential([*stem, *stages, *head]), (c, h, w))


def _flattened(model: Sequential, n_in: int) -> Sequential:
    return _built(Sequential([Flatten(), *model.layers]), (n_in,))


def tutorial_mlp(n_in: int, classes: int = 2) -> Sequential:
    """The tutorials' L-layer network [n_in, 20, 7, 5, 1] (two classes, one logit) or
    [n_in, 20, 7, 5, classes], ReLU hidden layers, their scaled-normal ("lecun") init, on flattened images."""
    out = 1 if classes == 2 else classes
    return _flattened(mlp([n_in, 20, 7, 5, out], init="lecun"), n_in)


def dense_mlp(n_in: int, classes: int = 10, hidden: Sequence[int] = (256, 128), dropout: float = 0.2) -> Sequential:
    """A plain multilayer perceptron on flattened images: [n_in, 256, 128, classes] with ReLU and dropout."""
    return _flattened(mlp([n_in, *hidden, classes], dropout=dropout), n_in)


Builder = Callable[[tuple[int, int, int], int], Sequential]

#: name -> builder(input_shape (C, H, W), classes)
MODELS: dict[str, Builder] = {
    "cnn": lambda shape, classes: fashion_cnn(classes, shape[0], _square(shape, "cnn")),
    "cnn-bn": lambda shape, classes: fashion_cnn(classes, shape[0], _square(shape, "cnn-bn"), batch_norm=True),
    "mlp": lambda shape, classes: dense_mlp(math.prod(shape), classes),
    "catdog": lambda shape, classes: catdog_cnn(_square(shape, "catdog"), shape[0], classes),
    "catdog-bn": lambda shape, classes: catdog_bn_cnn(_square(shape, "catdog-bn"), shape[0], classes),
    "resnet": lambda shape, classes: resnet(shape, classes),
    "tutorial-cnn": lambda shape, classes: tutorial_cnn(classes, shape[0], _square(shape, "tutorial-cnn")),
    "tutorial-mlp": lambda shape, classes: tutorial_mlp(math.prod(shape), classes),
}


def _square(shape: tuple[int, int, int], name: str) -> int:
    if shape[1] != shape[2]:
        raise ValueError(f"model {name!r} is built for square images, got {shape[1]}x{shape[2]}")
    return shape[1]


def build(name: str, input_shape: Sequence[int], classes: int) -> Sequential:
    """The network ``name`` (a key of :data:`MODELS`) for ``(C, H, W)`` images and ``classes`` classes."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if classes < 2:
        raise ValueError(f"a classifier needs at least two classes, got {classes}")
    c, h, w = (int(d) for d in input_shape)
    model = MODELS[name]((c, h, w), classes)
    model.build((c, h, w))
    return model


def loss_for(model: Sequential) -> Loss:
    """Binary cross-entropy for a single output logit, softmax cross-entropy otherwise."""
    outputs = [layer.out_features for _, layer in model.walk() if isinstance(layer, Linear)][-1]
    return get_loss("bce") if outputs == 1 else get_loss("cross_entropy")
